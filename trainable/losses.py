"""Losses as small pure functions."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE on the masked patches only (He et al.).

    pred, target: (B, N, p*p*C); mask: (B, N) with 1 = masked.
    """
    assert pred.shape == target.shape, f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
    assert mask.shape == pred.shape[:2], f"mask {tuple(mask.shape)} must be (B, N) = {tuple(pred.shape[:2])}"
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def sl_loss(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy averaged over tasks (Sec. 2.2.3: one head per task, losses averaged)."""
    assert len(logits) == len(labels), f"{len(logits)} heads but {len(labels)} label sets"
    return torch.stack([F.cross_entropy(z.float(), y) for z, y in zip(logits, labels)]).mean()


def mixed_loss(l_ssl: torch.Tensor, l_sl: torch.Tensor, alpha: float) -> torch.Tensor:
    # Eq. (3): alpha * l_ssl + (1 - alpha) * l_sl
    return alpha * l_ssl + (1.0 - alpha) * l_sl
