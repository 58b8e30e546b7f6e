"""The engine's configuration: one frozen, flat, validated dataclass.

Flat on purpose: a search space maps its keys to these field names, MLflow logs them as
parameters, and a checkpoint stores them as a plain dict.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from trainable.datasets import DATASETS
from trainable.models import MODEL_CONFIGS
from trainable.schedule import PhasePlan, phase_plan

METHODS = ("sl", "ssl_sl", "mixtraining")
MIX_STEPS = ("merged", "separate")
MIX_OPTIMS = ("sl", "ssl")


@dataclass(frozen=True)
class MixConfig:
    method: str = "mixtraining"  # sl (e_ssl forced to 0), ssl_sl (rho forced to 0) or mixtraining
    datasets: tuple[str, ...] = ("digits",)  # SL datasets; several = multi-task, one head each
    ssl_dataset: str | None = None  # None: SSL on the SL images, so D_mix = D_sl (Sec. 2.2.2)
    data_dir: str = "data"
    download: bool = False  # let torchvision download where the network allows
    fraction: float = 1.0  # data limitation p: seeded stratified subset of the training pool
    val_frac: float = 0.1  # held out of the training split for model selection (never the test split)
    model: str = "auto"  # a name in MODEL_CONFIGS; auto: vit_tiny, vit_tiny_64 for TinyImageNet, tiny for bundled data
    e_ssl: int = 100  # SSL epochs, mix epochs included (Table 6: 50, 75, 100)
    e_sl: int = 100  # SL epochs, mix epochs included
    alpha: float = 0.5  # Eq. (3) loss ratio: alpha * l_ssl + (1 - alpha) * l_sl
    rho: float = 0.5  # Eq. (1) mix ratio
    lam: float = 0.5  # Eq. (2) image mixing weight, used only when the SSL dataset differs
    mask_ratio: float = 0.75  # MAE mask ratio (He et al.)
    mix_step: str = "merged"  # merged: one encoder pass (Sec. 2.2.1, App. A.2); separate: MAE pass + SL pass
    mix_optim: str = "sl"  # optimiser settings of the mix phase, see optim_settings()
    batch_size: int = 256  # Table 7
    # Optimiser settings; None takes Table 7 (or the TinyImageNet overrides of App. A.3).
    ssl_lr: float | None = None  # base LR, scaled by batch_size / 256 as in MAE
    sl_lr: float | None = None
    ssl_beta2: float | None = None
    sl_beta2: float | None = None
    ssl_weight_decay: float | None = None
    sl_weight_decay: float | None = None
    ssl_warmup: float = 0.2  # warmup as a fraction of the phase's epochs: Table 7's 20 of 100
    sl_warmup: float = 0.05  # Table 7's 5 of 100
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    # Speed switches (issue "Speed"); auto means on for CUDA, off on the CPU.
    amp: str = "auto"  # bf16 autocast: auto | on | off
    compile: str = "auto"  # torch.compile of the encoder: auto | on | off
    fused_adamw: str = "auto"  # fused AdamW kernel: auto | on | off
    sdpa: str = "on"  # PyTorch scaled-dot-product attention in every block (timm's fused_attn): on | off

    def __post_init__(self):
        if isinstance(self.datasets, (list, str)):
            object.__setattr__(self, "datasets", (self.datasets,) if isinstance(self.datasets, str)
                               else tuple(self.datasets))
        _check_choice("method", self.method, METHODS)
        if not self.datasets:
            raise ValueError("datasets: give at least one supervised dataset")
        for d in self.datasets:
            _check_choice("datasets", d, DATASETS)
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets: {self.datasets} names a dataset twice")
        if self.ssl_dataset is not None:
            _check_choice("ssl_dataset", self.ssl_dataset, DATASETS)
            if self.ssl_dataset in self.datasets and len(self.datasets) > 1:
                raise ValueError(f"ssl_dataset: {self.ssl_dataset!r} is one of the supervised datasets; leave it "
                                 f"out to run SSL on all of them, or name a dataset that is not supervised")
        _check_choice("model", self.model, ("auto", *MODEL_CONFIGS))
        _check_choice("mix_step", self.mix_step, MIX_STEPS)
        _check_choice("mix_optim", self.mix_optim, MIX_OPTIMS)
        _check_choice("amp", self.amp, ("auto", "on", "off"))
        _check_choice("compile", self.compile, ("auto", "on", "off"))
        _check_choice("fused_adamw", self.fused_adamw, ("auto", "on", "off"))
        _check_choice("sdpa", self.sdpa, ("on", "off"))
        for name in ("alpha", "rho", "lam"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("fraction", self.fraction, 0.0, 1.0, low_open=True)
        _check_range("val_frac", self.val_frac, 0.0, 1.0, high_open=True)
        _check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("ssl_warmup", self.ssl_warmup, 0.0, 1.0)
        _check_range("sl_warmup", self.sl_warmup, 0.0, 1.0)
        for name in ("e_ssl", "e_sl", "seed"):
            _check_int(name, getattr(self, name), 0)
        _check_int("batch_size", self.batch_size, 1)
        if self.e_sl == 0:
            raise ValueError("e_sl: must be at least 1 (the classifier must train), got 0")
        for name in ("ssl_lr", "sl_lr", "ssl_weight_decay", "sl_weight_decay"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name}: must be a non-negative number or None, got {v!r}")
        for name in ("ssl_beta2", "sl_beta2"):
            v = getattr(self, name)
            if v is not None:
                _check_range(name, v, 0.0, 1.0, high_open=True)

    def replace(self, **changes) -> "MixConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MixConfig":
        unknown = set(d) - set(field_names())
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; known: {field_names()}")
        return cls(**d)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(MixConfig))


def plan(cfg: MixConfig) -> PhasePlan:
    """The phase plan of a config: the baselines are the same plan with e_ssl = 0 or rho = 0."""
    if cfg.method == "sl":
        return phase_plan(0, cfg.e_sl, 0.0)
    if cfg.method == "ssl_sl":
        return phase_plan(cfg.e_ssl, cfg.e_sl, 0.0)
    return phase_plan(cfg.e_ssl, cfg.e_sl, cfg.rho)


def model_name(cfg: MixConfig) -> str:
    if cfg.model != "auto":
        return cfg.model
    if "tinyimagenet" in cfg.datasets:
        return "vit_tiny_64"  # App. A.3: 64x64, patch 4
    if set(cfg.datasets) <= {"digits", "mnist"}:
        return "tiny"  # bundled data is for CPU demos
    return "vit_tiny"  # App. A.3: 32x32, patch 2


# The paper's batch of 256 gives the bundled sets (1,295 digits; 3,600 MNIST images after validation) 6 to 15
# steps an epoch, too few for a ViT to learn in a CPU demo: smaller batches, larger base LRs.
BUNDLED_PRESET = {"batch_size": 32, "ssl_lr": 2.4e-3, "sl_lr": 1.6e-2}


def preset_for(datasets: tuple[str, ...], ssl_dataset: str | None = None) -> dict[str, Any]:
    """Defaults that replace Table 7's for runs on bundled data only; {} otherwise."""
    used = set(datasets) | ({ssl_dataset} if ssl_dataset else set())
    return dict(BUNDLED_PRESET) if used <= {"digits", "mnist"} else {}


# (base LR, beta2, weight decay) by (kind, TinyImageNet): Table 7, and App. A.3's TinyImageNet values.
_OPTIM_DEFAULTS = {
    ("ssl", False): (1.5e-4, 0.95, 0.05), ("ssl", True): (1e-3, 0.95, 0.15),
    ("sl", False): (1e-3, 0.95, 0.05), ("sl", True): (2e-3, 0.999, 0.05),
}


class OptimSettings(NamedTuple):
    lr: float  # absolute LR (base LR scaled by batch size)
    betas: tuple[float, float]
    weight_decay: float
    warmup_epochs: float
    total_epochs: int


def optim_settings(cfg: MixConfig, kind: str) -> OptimSettings:
    """AdamW settings of the SSL or SL optimiser (Table 7; App. A.3 for TinyImageNet).

    The SSL schedule spans e_ssl epochs and the SL schedule e_sl epochs; the mix phase is the
    overlap of the two. Its settings are a choice the paper leaves open (`mix_optim`):
    - "sl" (default): the mix phase is the first e_mix epochs of the SL schedule, so the new
      classifier head gets the SL warmup, and the SSL+SL baseline (rho = 0) is the special
      case with no overlap. The SSL-only phase then depends on SSL settings alone.
    - "ssl": the mix phase continues the SSL optimiser and schedule (its last e_mix epochs),
      and the SL schedule starts at SL epoch e_mix.
    """
    if kind not in ("ssl", "sl"):
        raise ValueError(f"kind: expected 'ssl' or 'sl', got {kind!r}")
    tin = "tinyimagenet" in cfg.datasets or cfg.ssl_dataset == "tinyimagenet"
    given = [getattr(cfg, f"{kind}_{name}") for name in ("lr", "beta2", "weight_decay")]
    lr, beta2, wd = (v if v is not None else d for v, d in zip(given, _OPTIM_DEFAULTS[kind, tin]))
    p = plan(cfg)
    epochs = p.ssl + p.mix if kind == "ssl" else p.mix + p.sl
    warmup = cfg.ssl_warmup if kind == "ssl" else cfg.sl_warmup
    # MAE's rule: lr = base_lr * batch_size / 256
    return OptimSettings(lr * cfg.batch_size / 256, (0.9, beta2), wd, warmup * epochs, epochs)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")


def _check_range(name: str, value, low: float, high: float, low_open=False, high_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}: must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
