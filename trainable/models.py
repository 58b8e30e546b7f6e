"""ViT encoder (timm) with an MAE reconstruction decoder and one classification head per task.

The encoder is timm's `VisionTransformer`; the MAE decoder is written here because timm has
none (layout after facebookresearch/mae `models_mae.py`). Every head reads the one encoder's
tokens: nothing copies the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer


@dataclass(frozen=True)
class ModelConfig:
    img_size: int  # input side; images of other sizes are resized to it at load time
    patch_size: int
    embed_dim: int
    depth: int  # encoder blocks
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


MODEL_CONFIGS = {
    # App. A.3: ViT-T (embed 192, depth 12, 3 heads), MAE decoder of depth 2 with 3 heads.
    "vit_tiny": ModelConfig(32, 2, 192, 12, 3, 192, 2, 3),  # CIFAR-10/100, SVHN
    "vit_tiny_64": ModelConfig(64, 4, 192, 12, 3, 192, 2, 3),  # TinyImageNet
    # CPU demos on the bundled data: 16 patches of a 16x16 image.
    "tiny": ModelConfig(16, 4, 64, 4, 4, 64, 2, 4),
    # Unit tests: the smallest model that still has every stage.
    "test": ModelConfig(16, 4, 32, 2, 2, 32, 1, 2),
}


class MixViT(nn.Module):
    """One ViT encoder, an MAE decoder and a linear head per supervised task."""

    def __init__(self, cfg: ModelConfig, num_classes: Sequence[int], in_chans: int = 3):
        super().__init__()
        self.cfg = cfg
        self.in_chans = in_chans
        self.encoder = VisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=in_chans, num_classes=0,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio, global_pool="token", class_token=True)
        n, d, dd = cfg.num_patches, cfg.embed_dim, cfg.decoder_dim
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + n, dd))
        self.decoder_blocks = nn.Sequential(*[
            Block(dd, cfg.decoder_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, cfg.patch_size ** 2 * in_chans)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.decoder_pos_embed, std=0.02)
        self.heads = nn.ModuleList()
        self.reset_heads(num_classes)

    def reset_heads(self, num_classes: Sequence[int]) -> None:
        """(Re)create the classification heads; kept apart so that building them draws from its own seed."""
        self.heads = nn.ModuleList(nn.Linear(self.cfg.embed_dim, c) for c in num_classes)
        for h in self.heads:
            trunc_normal_(h.weight, std=0.02)
            nn.init.zeros_(h.bias)

    def decoder_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith(("decoder_", "mask_token"))]

    # --- stages -----------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W) -> (B, N, p*p*C)"""
        p, c = self.cfg.patch_size, self.in_chans
        b, _, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, p*p*C) -> (B, C, H, W)"""
        p, c = self.cfg.patch_size, self.in_chans
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    @staticmethod
    def random_masking(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of noise (MAE).

        Returns ids_keep: (B, K) kept patch indices, mask: (B, N) with 1 = masked,
        ids_restore: (B, N) to unshuffle [kept, masked] back to patch order.
        """
        keep = int(num_patches * (1 - mask_ratio))
        noise = torch.rand(batch, num_patches, generator=generator, device=device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        mask = torch.ones(batch, num_patches, device=device)
        mask[:, :keep] = 0
        return ids_keep, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """imgs: (B, C, H, W), ids_keep: (B, K) or None for all patches -> tokens (B, 1 + K, D), class token first."""
        vit = self.encoder
        x = vit.patch_embed(imgs) + vit.pos_embed[:, 1:]
        if ids_keep is not None:
            x = _gather_tokens(x, ids_keep)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = vit.norm_pre(torch.cat([cls, x], dim=1))
        return vit.norm(vit.blocks(x))

    def forward_decoder(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """tokens: (B, 1 + K, D) visible encoder tokens, ids_restore: (B, N) -> pred (B, N, p*p*C)."""
        x = self.decoder_embed(tokens)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        x_ = _gather_tokens(torch.cat([x[:, 1:], masked], dim=1), ids_restore)
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward_heads(self, tokens: torch.Tensor, sizes: Sequence[int] | None = None) -> list[torch.Tensor]:
        """tokens: (B, 1 + N, D) -> one logits tensor per task, from the class token.

        sizes: rows of each task in a multi-task batch (task t's head sees only its rows);
        None gives every head the whole batch: (B, classes_t) each.
        """
        cls = tokens[:, 0]
        parts = cls.split(list(sizes)) if sizes is not None else [cls] * len(self.heads)
        return [h(x) for h, x in zip(self.heads, parts)]


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D), ids: (B, K) -> (B, K, D)"""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def select_tokens(tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """tokens: (B, 1 + N, D) full encoder output -> (B, 1 + K, D): the class token and the kept patches.

    The merged mix step (App. A.2) sends these to the decoder instead of a second, masked pass.
    """
    return torch.cat([tokens[:, :1], _gather_tokens(tokens[:, 1:], ids_keep)], dim=1)


class Classifier(nn.Module):
    """A trained MixViT as a plain image classifier, for export: images (B, 3, S, S) in [0, 1] -> logits
    (B, classes) of one task's head (the first by default). The MAE decoder comes along unused."""

    def __init__(self, vit: MixViT, task: int = 0):
        super().__init__()
        self.vit, self.task = vit, task
        self.image_size = vit.cfg.img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_encoder(images * 2 - 1)  # the engine's normalisation: [0, 1] -> [-1, 1]
        return self.vit.heads[self.task](tokens[:, 0])
