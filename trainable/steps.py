"""One training step per phase (Algorithm 1): the SSL-only MAE step, the mix step and the SL step.

Each takes the model and a prepared batch and returns the loss to back-propagate with its detached
parts. They live apart from the epoch loop (`trainable.engine`) because the FLOP counter
(`trainable.cost`) runs the very same functions, and the engine reads the counter.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from trainable.config import MixConfig
from trainable.data import TrainingData
from trainable.losses import mae_loss, mixed_loss, sl_loss
from trainable.models import MixViT, select_tokens
from trainable.schedule import SL, SSL


class StepResult(NamedTuple):
    loss: torch.Tensor  # to back-propagate
    parts: dict[str, torch.Tensor]  # detached losses to report (loss_ssl, loss_sl)


def ssl_step(model: MixViT, x: torch.Tensor, mask_ratio: float, gen: torch.Generator) -> StepResult:
    """Vanilla MAE: the encoder sees only the visible (1 - mask_ratio) of the patches.

    x: (B, C, H, W) normalised images.
    """
    ids_keep, mask, ids_restore = model.random_masking(
        x.shape[0], model.cfg.num_patches, mask_ratio, gen, x.device)
    tokens = model.forward_encoder(x, ids_keep)
    pred = model.forward_decoder(tokens, ids_restore)
    loss = mae_loss(pred, model.patchify(x), mask)
    return StepResult(loss, {"loss_ssl": loss.detach()})


def sl_step(model: MixViT, x: torch.Tensor, labels: list[torch.Tensor]) -> StepResult:
    """Supervised step on all tokens. x: (B, C, H, W); labels: one (B_t,) tensor per task, in batch order."""
    tokens = model.forward_encoder(x)
    loss = sl_loss(model.forward_heads(tokens, [len(y) for y in labels]), labels)
    return StepResult(loss, {"loss_sl": loss.detach()})


def mix_step(model: MixViT, x: torch.Tensor, labels: list[torch.Tensor], alpha: float,
             mask_ratio: float, gen: torch.Generator) -> StepResult:
    """Merged mix step (Sec. 2.2.1, App. A.2): ONE encoder pass over all tokens.

    The heads read the full features; a random (1 - mask_ratio) of the encoder's output patch
    tokens go to the decoder, which reconstructs the masked patches. One loss, one backward.
    """
    tokens = model.forward_encoder(x)
    l_sl = sl_loss(model.forward_heads(tokens, [len(y) for y in labels]), labels)
    ids_keep, mask, ids_restore = model.random_masking(
        x.shape[0], model.cfg.num_patches, mask_ratio, gen, x.device)
    pred = model.forward_decoder(select_tokens(tokens, ids_keep), ids_restore)
    l_ssl = mae_loss(pred, model.patchify(x), mask)
    parts = {"loss_ssl": l_ssl.detach(), "loss_sl": l_sl.detach()}
    return StepResult(mixed_loss(l_ssl, l_sl, alpha), parts)


def separate_mix_step(model: MixViT, x: torch.Tensor, labels: list[torch.Tensor], alpha: float,
                      mask_ratio: float, gen: torch.Generator) -> StepResult:
    """Ablation of the merge: a true MAE pass and an SL pass on the same batch, same weighting."""
    l_ssl = ssl_step(model, x, mask_ratio, gen).loss
    l_sl = sl_step(model, x, labels).loss
    parts = {"loss_ssl": l_ssl.detach(), "loss_sl": l_sl.detach()}
    return StepResult(mixed_loss(l_ssl, l_sl, alpha), parts)


MIX_STEP_FUNCTIONS = {"merged": mix_step, "separate": separate_mix_step}  # by MixConfig.mix_step


def phase_step(phase: str, model: MixViT, data: TrainingData, cfg: MixConfig) -> Callable[[Any, torch.Generator],
                                                                                         StepResult]:
    """The step of a phase as a function of (index batch, generator): input preparation and step."""
    if phase == SSL:
        return lambda idx, gen: ssl_step(model, data.ssl_input(idx, gen), cfg.mask_ratio, gen)
    if phase == SL:
        return lambda idxs, gen: sl_step(model, *data.sl_input(idxs, gen))
    step = MIX_STEP_FUNCTIONS[cfg.mix_step]

    def mix(idxs: list[torch.Tensor], gen: torch.Generator) -> StepResult:
        x, ys = data.sl_input(idxs, gen)
        if not data.ssl_is_sl:
            x = data.mix_images(x, cfg.lam, gen)
        return step(model, x, ys, cfg.alpha, cfg.mask_ratio, gen)
    return mix


def batch_images(batch: torch.Tensor | list[torch.Tensor]) -> int:
    """Images in an index batch: one tensor (SSL) or one tensor per task (mix, SL)."""
    return len(batch) if isinstance(batch, torch.Tensor) else sum(len(b) for b in batch)
