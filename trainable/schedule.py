"""The MixTraining schedule as pure functions: e_mix, the phase plan, and the learning rate.

Algorithm 1 of the paper: an SSL-only phase of (e_ssl - e_mix) epochs, a mix phase of e_mix
epochs, and an SL-only phase of (e_sl - e_mix) epochs. The SL baseline is e_ssl = 0 and the
SSL+SL baseline is rho = 0: all three methods are one plan.
"""
from __future__ import annotations

import math
from typing import NamedTuple

SSL, MIX, SL = "ssl", "mix", "sl"
PHASES = (SSL, MIX, SL)


def e_mix(e_ssl: int, e_sl: int, rho: float) -> int:
    # Eq. (1): e_mix = floor(rho * min(e_ssl, e_sl)); the epsilon keeps 0.29 * 100 from becoming 28.
    return math.floor(rho * min(e_ssl, e_sl) + 1e-9)


class PhasePlan(NamedTuple):
    ssl: int  # SSL-only epochs
    mix: int  # mixtraining epochs
    sl: int  # SL-only epochs

    @property
    def total(self) -> int:
        return self.ssl + self.mix + self.sl

    def phase_at(self, epoch: int) -> str:
        """Phase of the 0-based `epoch`."""
        if not 0 <= epoch < self.total:
            raise IndexError(f"epoch {epoch} is outside the plan's {self.total} epochs")
        if epoch < self.ssl:
            return SSL
        return MIX if epoch < self.ssl + self.mix else SL

    def sl_epochs_before(self, epoch: int) -> int:
        """Epochs in which the classifier trained before the 0-based `epoch` (mix and SL-only)."""
        return max(0, min(epoch, self.total) - self.ssl)


def phase_plan(e_ssl: int, e_sl: int, rho: float) -> PhasePlan:
    m = e_mix(e_ssl, e_sl, rho)
    return PhasePlan(ssl=e_ssl - m, mix=m, sl=e_sl - m)


def lr_at(epoch: float, base_lr: float, warmup_epochs: float, total_epochs: float,
          min_lr: float = 0.0) -> float:
    """Learning rate at a fractional epoch of a warmup + cosine schedule (as in MAE's lr_sched)."""
    # 1) linear warmup
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    # 2) half-cycle cosine from base_lr down to min_lr at total_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
