"""The engine's configuration: one frozen, flat, validated dataclass.

Flat on purpose: a search space maps its keys to these field names, MLflow logs them as
parameters, and a checkpoint stores them as a plain dict.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch

from trainable.datasets import DATASETS
from trainable.models import MODEL_CONFIGS, ModelConfig
from trainable.schedule import PhasePlan, phase_plan

METHODS = ("sl", "ssl_sl", "mixtraining")
SWITCHES = ("auto", "on", "off")
MIX_STEPS = ("merged", "separate")
MIX_OPTIMS = ("sl", "ssl")
SSL_COSINES = ("e_ssl", "ssl_only")


# What a field means for the rest of the system is declared on the field (`roles`); the sets the
# code needs are derived from that (`fields_with`), so a new field cannot silently miss one.
RUNTIME = "runtime"  # where and how the run happens: never changes what is computed (resume may change it)
DATA = "data"  # selects the training data: its split, subset and on-device copy (the data cache key)
SSL = "ssl"  # the SSL-only phase depends on it, so trials sharing it share SSL prefixes
TRAIN = "train"  # changes only what is trained after the SSL-only phase (mix and SL phases)
ROLES = (RUNTIME, DATA, SSL, TRAIN)


def _field(default: Any, *roles: str) -> Any:
    return dataclasses.field(default=default, metadata={"roles": frozenset(roles)})


@dataclass(frozen=True)
class MixConfig:
    # method enters the SSL-only phase only through the plan's SSL epochs (0 for sl), which the prefix
    # key takes from the resolved plan: trials of ssl_sl and mixtraining share their SSL prefixes.
    method: str = _field("mixtraining", TRAIN)  # sl (e_ssl forced to 0), ssl_sl (rho forced to 0) or mixtraining
    datasets: tuple[str, ...] = _field(("digits",), DATA, SSL)  # SL datasets; several = multi-task, one head each
    ssl_dataset: str | None = _field(None, DATA, SSL)  # None: SSL on the SL images, so D_mix = D_sl (Sec. 2.2.2)
    data_dir: str = _field("data", RUNTIME, DATA)  # where dataset files live
    download: bool = _field(False, RUNTIME)  # let torchvision download where the network allows
    fraction: float = _field(1.0, DATA, SSL)  # data limitation p: seeded stratified subset of the training pool
    val_frac: float = _field(0.1, DATA, SSL)  # held out of the training split for model selection (never the test split)
    # a name in MODEL_CONFIGS; auto: vit_tiny, vit_tiny_64 for TinyImageNet, tiny for bundled data (its input size
    # decides the images' size, hence DATA)
    model: str = _field("auto", DATA, SSL)
    e_ssl: int = _field(100, SSL)  # SSL epochs, mix epochs included (Table 6: 50, 75, 100)
    e_sl: int = _field(100, TRAIN)  # SL epochs, mix epochs included
    alpha: float = _field(0.5, TRAIN)  # Eq. (3) loss ratio: alpha * l_ssl + (1 - alpha) * l_sl
    rho: float = _field(0.5, TRAIN)  # Eq. (1) mix ratio
    lam: float = _field(0.5, TRAIN)  # Eq. (2) image mixing weight, used only when the SSL dataset differs
    mask_ratio: float = _field(0.75, SSL)  # MAE mask ratio (He et al.)
    mix_step: str = _field("merged", TRAIN)  # merged: one encoder pass (Sec. 2.2.1, App. A.2); separate: MAE + SL pass
    mix_optim: str = _field("sl", TRAIN)  # optimiser settings of the mix phase, see optim_settings()
    ssl_cosine: str = _field("e_ssl", SSL)  # where the SSL cosine ends: after e_ssl epochs or the SSL-only phase
    batch_size: int = _field(256, SSL)  # Table 7
    # Optimiser settings; None takes Table 7 (or the TinyImageNet overrides of App. A.3).
    ssl_lr: float | None = _field(None, SSL)  # base LR, scaled by batch_size / 256 as in MAE
    sl_lr: float | None = _field(None, TRAIN)
    ssl_beta2: float | None = _field(None, SSL)
    sl_beta2: float | None = _field(None, TRAIN)
    ssl_weight_decay: float | None = _field(None, SSL)
    sl_weight_decay: float | None = _field(None, TRAIN)
    ssl_warmup: float = _field(0.2, SSL)  # warmup as a fraction of the phase's epochs: Table 7's 20 of 100
    sl_warmup: float = _field(0.05, TRAIN)  # Table 7's 5 of 100
    seed: int = _field(0, DATA, SSL)  # data subset, initialisation, order, augmentation and masks
    device: str = _field("auto", RUNTIME, DATA)  # auto: cuda when available; the data lives there
    # Speed switches (issue "Speed"); auto means on for CUDA, off on the CPU. They change kernels, so
    # results may differ in the last bits: trials share prefixes only with the same switches.
    amp: str = _field("auto", SSL)  # bf16 autocast: auto | on | off
    compile: str = _field("auto", SSL)  # torch.compile of the encoder: auto | on | off
    fused_adamw: str = _field("auto", SSL)  # fused AdamW kernel: auto | on | off
    sdpa: str = _field("on", SSL)  # PyTorch scaled-dot-product attention in every block (timm's fused_attn): on | off
    # PyTorch's deterministic algorithms on CUDA (exact resume and prefix sharing there); the CPU is exact anyway.
    deterministic: bool = _field(False, SSL)

    def __post_init__(self):
        if isinstance(self.datasets, (list, str)):
            object.__setattr__(self, "datasets", (self.datasets,) if isinstance(self.datasets, str)
                               else tuple(self.datasets))
        _check_choice("method", self.method, METHODS)
        if not self.datasets:
            raise ConfigError("datasets", "give at least one supervised dataset")
        for d in self.datasets:
            _check_choice("datasets", d, DATASETS)
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError("datasets", f"{self.datasets} names a dataset twice")
        if self.ssl_dataset is not None:
            _check_choice("ssl_dataset", self.ssl_dataset, DATASETS)
            if self.ssl_dataset in self.datasets and len(self.datasets) > 1:
                raise ConfigError("ssl_dataset", f"{self.ssl_dataset!r} is one of the supervised datasets; leave "
                                  f"it out to run SSL on all of them, or name a dataset that is not supervised")
        _check_choice("model", self.model, ("auto", *MODEL_CONFIGS))
        _check_choice("mix_step", self.mix_step, MIX_STEPS)
        _check_choice("mix_optim", self.mix_optim, MIX_OPTIMS)
        _check_choice("ssl_cosine", self.ssl_cosine, SSL_COSINES)
        if self.ssl_cosine == "ssl_only" and self.mix_optim == "ssl":
            raise ConfigError("ssl_cosine", "'ssl_only' ends the SSL schedule before the mix phase, which "
                              "mix_optim='ssl' trains with it; use mix_optim='sl' or ssl_cosine='e_ssl'")
        for name in ("amp", "compile", "fused_adamw"):
            _check_choice(name, getattr(self, name), SWITCHES)
        _check_choice("sdpa", self.sdpa, ("on", "off"))
        _check_choice("deterministic", self.deterministic, (False, True))
        self._check_numbers()

    def _check_numbers(self) -> None:
        for name in ("alpha", "rho", "lam", "ssl_warmup", "sl_warmup"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("fraction", self.fraction, 0.0, 1.0, low_open=True)
        _check_range("val_frac", self.val_frac, 0.0, 1.0, high_open=True)
        _check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        for name in ("e_ssl", "e_sl", "seed"):
            _check_int(name, getattr(self, name), 0)
        _check_int("batch_size", self.batch_size, 1)
        if self.e_sl == 0:
            raise ConfigError("e_sl", "must be at least 1 (the classifier must train), got 0")
        for name in ("ssl_lr", "sl_lr", "ssl_weight_decay", "sl_weight_decay"):
            v = getattr(self, name)
            if v is not None and not (_is_number(v) and math.isfinite(v) and v >= 0):
                raise ConfigError(name, f"must be a finite non-negative number or None, got {v!r}")
        for name in ("ssl_beta2", "sl_beta2"):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), 0.0, 1.0, high_open=True)

    def replace(self, **changes) -> "MixConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MixConfig":
        unknown = set(d) - set(field_names())
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; known: {field_names()}")
        return cls(**d)

    @classmethod
    def from_strings(cls, d: Mapping[str, Any]) -> "MixConfig":
        """A config from values that may be strings, as MLflow stores parameters ("digits,mnist", "None")."""
        return cls.from_dict({k: _parse(cls.__dataclass_fields__[k].type, v) if isinstance(v, str) else v
                              for k, v in d.items()})

    @classmethod
    def from_trial(cls, config: Mapping[str, Any]) -> "MixConfig":
        """A trial's config: config fields plus bookkeeping keys that start with '_' (ignored here)."""
        return cls.from_dict({k: v for k, v in config.items() if not k.startswith("_")})


def _parse(kind: str, text: str) -> Any:
    """A field's value from its string form; `kind` is the field's annotation as written."""
    if "None" in kind and text == "None":
        return None
    if kind.startswith("tuple"):
        return tuple(text.split(","))
    if kind == "bool":
        return text in ("True", "true", "1")
    for name, convert in (("int", int), ("float", float)):
        if kind.startswith(name):
            return convert(text)
    return text


class ConfigError(ValueError):
    """An invalid config value; `field` names the MixConfig field, so a CLI can name its flag."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason

    def __reduce__(self):  # travels between Ray processes
        return ConfigError, (self.field, self.reason)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(MixConfig))


def field_roles(cls: type = MixConfig) -> dict[str, frozenset[str]]:
    """Each field's roles; raises when a field has none, an unknown one, or data without SSL.

    A field that selects the data (and is not a runtime detail) also shapes the SSL-only phase,
    so it must carry both roles, or trials on different data would share SSL prefixes.
    """
    roles = {f.name: f.metadata.get("roles", frozenset()) for f in dataclasses.fields(cls)}
    for name, r in roles.items():
        if not r or not r <= set(ROLES):
            raise TypeError(f"config field {name!r} has roles {sorted(r)}; declare them with _field(default, "
                            f"*roles), roles from {ROLES}")
        if DATA in r and RUNTIME not in r and SSL not in r:
            raise TypeError(f"config field {name!r} selects the data, so the SSL-only phase depends on it: "
                            f"give it the role SSL too")
    return roles


_ROLES = field_roles()


def fields_with(role: str) -> tuple[str, ...]:
    """The fields carrying `role`, in declaration order."""
    return tuple(name for name, r in _ROLES.items() if role in r)


def trajectory_fields() -> tuple[str, ...]:
    """The fields that change what is trained: a checkpoint resumes only under equal values."""
    return tuple(name for name, r in _ROLES.items() if RUNTIME not in r)


def method_plan(method: str, e_ssl: int, e_sl: int, rho: float) -> PhasePlan:
    """The phase plan of a method: the baselines are the same plan with e_ssl = 0 (SL) or rho = 0 (SSL+SL)."""
    if method == "sl":
        return phase_plan(0, e_sl, 0.0)
    if method == "ssl_sl":
        return phase_plan(e_ssl, e_sl, 0.0)
    return phase_plan(e_ssl, e_sl, rho)


def plan(cfg: MixConfig) -> PhasePlan:
    return method_plan(cfg.method, cfg.e_ssl, cfg.e_sl, cfg.rho)


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


def optim_settings(cfg: MixConfig, kind: str, phases: PhasePlan | None = None) -> OptimSettings:
    """AdamW settings of the SSL or SL optimiser (Table 7; App. A.3 for TinyImageNet).

    The SSL schedule spans e_ssl epochs and the SL schedule e_sl epochs; the mix phase is the
    overlap of the two. Its settings are a choice the paper leaves open (`mix_optim`):
    - "sl" (default): the mix phase is the first e_mix epochs of the SL schedule, so the new
      classifier head gets the SL warmup, and the SSL+SL baseline (rho = 0) is the special
      case with no overlap. The SSL-only phase then depends on SSL settings alone.
    - "ssl": the mix phase continues the SSL optimiser and schedule (its last e_mix epochs),
      and the SL schedule starts at SL epoch e_mix.
    Where the SSL cosine ends is a second choice (`ssl_cosine`): "e_ssl" (default) spans all e_ssl
    epochs, so with mix_optim "sl" the SSL-only phase stops partway down it (at rho = 0.5 at 0.69x the
    base LR) while SSL+SL anneals to zero; "ssl_only" anneals to zero at the end of the SSL-only
    phase, which then depends on rho (prefixes are shared only between equal SSL-only lengths).
    phases: the config's plan (`plan(cfg)`) when the caller has it already.
    """
    if kind not in ("ssl", "sl"):
        raise ValueError(f"kind: expected 'ssl' or 'sl', got {kind!r}")
    # Each optimiser follows the data it trains on: SSL the SSL images, SL the supervised datasets.
    trained_on = cfg.datasets if kind == "sl" or cfg.ssl_dataset is None else (cfg.ssl_dataset,)
    tin = "tinyimagenet" in trained_on
    given = [getattr(cfg, f"{kind}_{name}") for name in ("lr", "beta2", "weight_decay")]
    lr, beta2, wd = (v if v is not None else d for v, d in zip(given, _OPTIM_DEFAULTS[kind, tin]))
    p = phases if phases is not None else plan(cfg)
    if kind == "ssl":
        epochs = p.ssl + (p.mix if cfg.ssl_cosine == "e_ssl" else 0)
    else:
        epochs = p.mix + p.sl
    warmup = cfg.ssl_warmup if kind == "ssl" else cfg.sl_warmup
    # MAE's rule: lr = base_lr * batch_size / 256
    return OptimSettings(lr * cfg.batch_size / 256, (0.9, beta2), wd, warmup * epochs, epochs)


def resolve_optim(cfg: MixConfig) -> tuple[float, float]:
    """The absolute learning rates (SSL, SL) the config trains with."""
    return optim_settings(cfg, "ssl").lr, optim_settings(cfg, "sl").lr


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


@dataclass(frozen=True)
class Resolved:
    """A config with every derived value made once, here: what the engine, the data cache, the
    prefix store and the Trainable read instead of going back to the raw config."""
    cfg: MixConfig
    plan: PhasePlan
    model: str  # the model's name ("auto" resolved)
    model_cfg: ModelConfig
    device: torch.device
    ssl_optim: OptimSettings
    sl_optim: OptimSettings
    amp: bool  # the speed switches for this device
    compile: bool
    fused_adamw: bool
    sdpa: bool

    def optim(self, kind: str) -> OptimSettings:
        return self.ssl_optim if kind == "ssl" else self.sl_optim

    def values(self, role: str) -> dict[str, Any]:
        """The fields with `role`, resolved: the model's name, the device, an absolute data folder,
        and the SSL epochs the plan actually trains (0 for SL)."""
        resolved = {"model": self.model, "device": str(self.device), "data_dir": os.path.abspath(self.cfg.data_dir),
                    "e_ssl": self.plan.ssl + self.plan.mix}
        return {name: resolved.get(name, getattr(self.cfg, name)) for name in fields_with(role)}


def resolve(cfg: MixConfig) -> Resolved:
    """Every value derived from `cfg`, each computed once (the plan feeds both optimisers' schedules)."""
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    on = lambda switch: switch == "on" or (switch == "auto" and cuda)  # noqa: E731
    name, phases = model_name(cfg), plan(cfg)
    return Resolved(cfg, phases, name, MODEL_CONFIGS[name], device, optim_settings(cfg, "ssl", phases),
                    optim_settings(cfg, "sl", phases), on(cfg.amp), on(cfg.compile), on(cfg.fused_adamw),
                    cfg.sdpa == "on")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(map(str, choices))}")


def _check_range(name: str, value, low: float, high: float, low_open=False, high_open=False) -> None:
    ok = _is_number(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(name, f"must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
