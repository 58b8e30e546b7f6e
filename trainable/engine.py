"""The MixTraining engine: one generic epoch loop over the step functions of `trainable.steps`.

`Engine(cfg).run_epoch()` trains one epoch of the phase plan (Algorithm 1) and returns a flat
metrics dict; `state_dict()` / `load_state_dict()` resume exactly. The Ray Trainable and the
`trainable.train` command both drive this class.
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from typing import Any, Callable, Mapping

import torch
from timm.optim import param_groups_weight_decay

from trainable import datasets
from trainable.config import MixConfig, Resolved, resolve, trajectory_fields
from trainable.cost import step_flops
from trainable.data import TrainingData, build_training_data, generator, normalize, stream_seed
from trainable.models import Classifier, MixViT
from trainable.schedule import MIX, SL, SSL, lr_at
from trainable.steps import batch_images, phase_step

log = logging.getLogger(__name__)

# Besides biases and norms (1-D): learned position embeddings and tokens, as timm's ViT.no_weight_decay().
NO_WEIGHT_DECAY = ("encoder.pos_embed", "encoder.cls_token", "decoder_pos_embed", "mask_token")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training cannot continue meaningfully."""


# --- the engine ---------------------------------------------------------------------------------

def classifier_from_state(state: dict[str, Any], task: int = 0) -> Classifier:
    """The classifier a checkpoint (`Engine.state_dict()`) holds, on the CPU."""
    run = resolve(MixConfig.from_dict({**state["config"], "device": "cpu"}))
    heads = sorted(k for k in state["model"] if k.startswith("heads.") and k.endswith(".weight"))
    vit = MixViT(run.model_cfg, [state["model"][k].shape[0] for k in heads])
    vit.load_state_dict(state["model"])
    return Classifier(vit, task)


def load_training_data(run: Resolved, loaded: Mapping[str, datasets.ImageSet] | None = None) -> TrainingData:
    """The run's training data on its device: its datasets taken from `loaded` (by name) where
    given, else read from disk (or the bundled ones), then split and subset for this config."""
    cfg = run.cfg

    def get(name: str) -> datasets.ImageSet:
        if loaded and name in loaded:
            return loaded[name]
        return datasets.load_dataset(name, cfg.data_dir, cfg.download)

    sets = [get(d) for d in cfg.datasets]
    ssl_set = None
    if cfg.ssl_dataset is not None and cfg.ssl_dataset not in cfg.datasets:
        ssl_set = get(cfg.ssl_dataset)
    return build_training_data(sets, ssl_set, cfg.fraction, cfg.val_frac, cfg.seed, run.model_cfg.img_size,
                               run.device)


def _set_cuda_numerics(deterministic: bool) -> None:
    """Process-wide CUDA settings, set for every engine (a reused Ray actor runs trials of both kinds)."""
    torch.set_float32_matmul_precision("high")  # TF32 for what stays fp32 (everything, with amp off), as nanoGPT
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for reproducible results
    # Kernels without a deterministic version then raise an error naming themselves (e.g. try --sdpa off).
    torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        torch.backends.cudnn.benchmark = False


class Engine:
    """Trains one configuration, one epoch per `run_epoch()` call.

    run: the config, or the config already resolved (`trainable.config.resolve`).
    """

    def __init__(self, run: MixConfig | Resolved, data: TrainingData | None = None,
                 step_seconds: Mapping[str, float] | None = None):
        self.run = run if isinstance(run, Resolved) else resolve(run)
        self.step_seconds = dict(step_seconds) if step_seconds else None  # seconds per image by kind, alone
        self.data = data if data is not None else load_training_data(self.run)
        if self.device.type == "cuda":
            _set_cuda_numerics(self.cfg.deterministic)
        self.model = self._build_model()
        self._encoder_fwd = self.model.forward_encoder
        if self.run.compile:
            # Compiling the bound method keeps state_dict keys unchanged; full batches keep shapes static.
            self.model.forward_encoder = torch.compile(self.model.forward_encoder)
        self.epoch = 0  # epochs completed
        self.opt_kind: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_time_s = 0.0
        self.images = {SSL: 0, MIX: 0, SL: 0}  # images trained on, by step kind
        self.prefix_epochs = 0  # SSL-only epochs taken from a shared prefix instead of trained
        self.prefix_time_s = 0.0  # their training time, as measured when they were computed

    def _build_model(self) -> MixViT:
        classes = [t.num_classes for t in self.data.tasks]
        # Encoder/decoder init draws from its own seed and the heads from another, so the
        # SSL-only phase does not depend on the SL task (its number of classes).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.cfg.seed, "init", 0))
            model = MixViT(self.run.model_cfg, classes)
            torch.manual_seed(stream_seed(self.cfg.seed, "heads", 0))
            model.reset_heads(classes)
        for m in model.modules():  # timm's Attention picks SDPA or the explicit softmax per module
            if hasattr(m, "fused_attn"):
                m.fused_attn = self.run.sdpa
        return model.to(self.device)

    # --- what the run resolved once ---
    @property
    def cfg(self) -> MixConfig:
        return self.run.cfg

    @property
    def plan(self):
        return self.run.plan

    @property
    def device(self) -> torch.device:
        return self.run.device

    @property
    def model_cfg(self):
        return self.run.model_cfg

    @property
    def done(self) -> bool:
        return self.epoch >= self.plan.total

    # --- optimiser and learning rate ---
    def _opt_kind(self, phase: str) -> str:
        return {SSL: "ssl", SL: "sl", MIX: self.cfg.mix_optim}[phase]

    def _ensure_optimizer(self, kind: str) -> None:
        """A fresh AdamW when the settings change (SSL -> SL); its state carries over otherwise.

        The optimiser holds every parameter; AdamW skips those without a gradient, so the heads
        stay untouched in the SSL-only phase and the decoder in the SL-only phase.
        """
        if kind == self.opt_kind:
            return
        s = self.run.optim(kind)
        groups = param_groups_weight_decay(self.model, s.weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
        self.optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=self.run.fused_adamw)
        self.opt_kind = kind

    def lr_schedule(self, kind: str) -> Callable[[float], float]:
        """epoch (0-based, fractional) -> LR of the SSL or SL schedule."""
        s = self.run.optim(kind)
        # The SSL schedule starts at epoch 0; the SL schedule at the start of the mix phase.
        start = 0 if kind == "ssl" else self.plan.ssl
        return lambda epoch: lr_at(epoch - start, s.lr, s.warmup_epochs, s.total_epochs)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.run.amp else nullcontext()

    # --- the epoch loop ---
    def run_epoch(self) -> dict[str, Any]:
        if self.done:
            raise RuntimeError(f"all {self.plan.total} epochs of the plan are done")
        e = self.epoch
        phase = self.plan.phase_at(e)
        kind = self._opt_kind(phase)
        self._ensure_optimizer(kind)
        gen_order = generator(stream_seed(self.cfg.seed, phase, e))
        gen_aug = generator(stream_seed(self.cfg.seed, phase + "/aug", e), self.device)
        batches = self._batches(phase, gen_order)
        lr_of = self.lr_schedule(kind)
        self._sync()
        t0 = time.perf_counter()
        sums, images, lr = self._train(phase, batches, gen_aug, lambda i: lr_of(e + i / len(batches)))
        self._sync()
        wall = time.perf_counter() - t0
        means = {k: (v / len(batches)).item() for k, v in sums.items()}
        self._check_finite(means, phase, lr)
        return self._finish_epoch(phase, means, lr, wall, images)

    def _batches(self, phase: str, gen: torch.Generator) -> list:
        if phase == SSL:
            return self.data.ssl_batches(self.cfg.batch_size, gen)
        return self.data.sl_batches(self.cfg.batch_size, gen)

    def _train(self, phase: str, batches: list, gen: torch.Generator,
               lr_at_step: Callable[[int], float] | None) -> tuple[dict[str, torch.Tensor], int, float | None]:
        """One optimiser step per batch (LR from `lr_at_step`, else as it is); the summed losses, the images
        and the last LR."""
        step = phase_step(phase, self.model, self.data, self.cfg)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        images, lr = 0, None
        for i, batch in enumerate(batches):
            if lr_at_step is not None:
                lr = lr_at_step(i)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
            with self._autocast():
                out = step(batch, gen)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0) + v.float()
            images += batch_images(batch)
        return sums, images, lr

    def train_steps(self, phase: str, steps: int, seed: int = 0) -> tuple[int, float]:
        """`steps` optimiser steps of a phase outside the plan, at the optimiser's current LR, for measuring
        what a step costs (`trainable.cost.calibrate`): the images trained on and the seconds the steps took
        (the optimiser and the batches are made before the clock starts). Leaves the plan's state alone
        only in the sense that matters there: use a throwaway engine."""
        self._ensure_optimizer(self._opt_kind(phase))
        batches = self._batches(phase, generator(seed))
        batches = (batches * math.ceil(steps / len(batches)))[:steps]
        gen = generator(seed, self.device)
        self._sync()
        t0 = time.perf_counter()
        images = self._train(phase, batches, gen, None)[1]
        self._sync()
        return images, time.perf_counter() - t0

    def _check_finite(self, losses: dict[str, float], phase: str, lr: float) -> None:
        if not all(math.isfinite(v) for v in losses.values()):
            raise NonFiniteLossError(
                f"non-finite loss in epoch {self.epoch + 1} ({phase} phase): "
                + ", ".join(f"{k}={v}" for k, v in losses.items())
                + f". The learning rate was {lr:.3g}; lower it (ssl_lr / sl_lr) or check the data.")

    def _finish_epoch(self, phase: str, losses: dict[str, float], lr: float, wall: float,
                      images: int) -> dict[str, Any]:
        self.epoch += 1
        self.train_time_s += wall
        self.images[phase] += images
        metrics: dict[str, Any] = {
            "epoch": self.epoch, "phase": phase, **losses, "lr": lr,
            "epoch_time_s": wall, "train_time_s": self.train_time_s, "images_per_s": images / wall,
            **self.costs(), "sl_epochs": self.plan.sl_epochs_before(self.epoch), "done": self.done,
        }
        if phase != SSL:  # validation accuracy means something only once the classifier trained
            metrics.update({f"val_{k}": v for k, v in self.evaluate("val").items()})
        return metrics

    def costs(self) -> dict[str, float]:
        """What the epochs so far cost, independent of anything else on the machine: FLOPs (counted per
        image and step kind, `trainable.cost`), images per kind, and, with the search's calibration, the
        time they take on one slot alone."""
        classes = tuple(t.num_classes for t in self.data.tasks)
        flops = sum(n * step_flops(self.model_cfg, classes, kind, self.cfg.mix_step, self.cfg.mask_ratio)
                    for kind, n in self.images.items() if n)
        out = {"compute_tflop": flops / 1e12, **{f"images_{k}": n for k, n in self.images.items()}}
        if self.step_seconds:
            out["calibrated_time_s"] = sum(n * self.step_seconds[k] for k, n in self.images.items())
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- evaluation ---
    @torch.no_grad()
    def evaluate(self, split: str = "val", batch_size: int = 1024) -> dict[str, float]:
        """Accuracy per task (`acc/<name>`) and their mean (`acc`) on 'val' or 'test'."""
        if split not in ("val", "test"):
            raise ValueError(f"split: expected 'val' or 'test', got {split!r}")
        self.model.eval()
        out = {}
        for t, head in zip(self.data.tasks, self.model.heads):
            s = getattr(t, split)
            if len(s.labels) == 0:
                continue
            correct = torch.zeros((), device=self.device)
            for i in range(0, len(s.labels), batch_size):
                with self._autocast():
                    tokens = self._encoder_fwd(normalize(s.images[i:i + batch_size]))
                    correct += (head(tokens[:, 0]).argmax(-1) == s.labels[i:i + batch_size]).sum()
            out[f"acc/{t.name}"] = correct.item() / len(s.labels)
        if out:
            out["acc"] = sum(out.values()) / len(out)
        return out

    @torch.no_grad()
    def reconstruct(self, n: int = 8, split: str = "test"):
        """Fig. 4: (original, masked, reconstructed) images in [0, 1], each (n, C, H, W).

        The reconstruction shows the visible patches as given and the decoder's prediction for
        the masked ones, on the first n images of the first task's `split`, with a fixed mask.
        """
        self.model.eval()
        x = normalize(getattr(self.data.tasks[0], split).images[:n])
        gen = generator(stream_seed(self.cfg.seed, "reconstruct", 0), self.device)
        ids_keep, mask, ids_restore = self.model.random_masking(
            x.shape[0], self.model_cfg.num_patches, self.cfg.mask_ratio, gen, self.device)
        pred = self.model.forward_decoder(self._encoder_fwd(x, ids_keep), ids_restore).float()
        m = mask.unsqueeze(-1)
        patches = self.model.patchify(x)
        masked = self.model.unpatchify(patches * (1 - m))
        recon = self.model.unpatchify(patches * (1 - m) + pred * m)
        to01 = lambda t: ((t + 1) / 2).clamp(0, 1).cpu()  # noqa: E731
        return to01(x), to01(masked), to01(recon)

    # --- state ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "opt_kind": self.opt_kind,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "train_time_s": self.train_time_s,
            "images": dict(self.images),
            "prefix_epochs": self.prefix_epochs,
            "prefix_time_s": self.prefix_time_s,
        }

    def load_ssl_prefix(self, state: dict[str, Any]) -> None:
        """Start from another trial's SSL-only prefix (`state_dict()` after its SSL-only epoch k).

        Valid because the SSL-only phase depends on the SSL settings, data, model and seed alone;
        the caller matches those (trainable.prefix_store.prefix_key). Timers and compute carry
        over, so the trial reports the cost of its whole schedule as if it had trained it.
        """
        if self.epoch != 0:
            raise RuntimeError("an SSL prefix can only start a fresh engine")
        if not 0 < state["epoch"] <= self.plan.ssl or state["opt_kind"] != "ssl":
            raise ValueError(f"a prefix of {state['epoch']} SSL epochs does not fit a plan with {self.plan.ssl}")
        self.load_state_dict(state, check_config=False)
        self.prefix_epochs, self.prefix_time_s = state["epoch"], state["train_time_s"]

    def load_state_dict(self, state: dict[str, Any], check_config: bool = True,
                        mutable: tuple[str, ...] = ()) -> None:
        """mutable: config fields the checkpoint may differ in (PBT perturbs alpha and lam)."""
        mine, theirs = self.cfg.to_dict(), dict(state["config"])
        diff = sorted(k for k in trajectory_fields() if k not in mutable and mine[k] != theirs.get(k))
        if diff and check_config:
            raise ValueError(f"checkpoint was trained with a different config: fields {diff} differ")
        self.model.load_state_dict(state["model"])
        self.opt_kind, self.optimizer = None, None
        if state["opt_kind"] is not None:
            self._ensure_optimizer(state["opt_kind"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.train_time_s = state["train_time_s"]
        self.images = {SSL: 0, MIX: 0, SL: 0, **state.get("images", {})}
        self.prefix_epochs = state.get("prefix_epochs", 0)
        self.prefix_time_s = state.get("prefix_time_s", 0.0)
