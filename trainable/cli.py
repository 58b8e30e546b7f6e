"""Command-line flags shared by `trainable.train` and `tuning/search.py`: data, model, optimiser."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from trainable.config import MIX_OPTIMS, MIX_STEPS, SWITCHES, ConfigError, preset_for
from trainable.datasets import BUNDLED, DATASETS
from trainable.models import MODEL_CONFIGS

log = logging.getLogger(__name__)


# Config fields whose command-line flag is not simply --field-name.
_FLAGS = {"datasets": "--dataset", "e_ssl": "--e-ssl (or --epochs)", "e_sl": "--e-sl (or --epochs)"}


def flag_for(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def config_error_message(error: ConfigError) -> str:
    """A config error as the command line says it: the flag behind the field, then the reason."""
    return f"{flag_for(error.field)}: {error.reason}"


def add_common_args(p: argparse.ArgumentParser, default_dataset: str = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", nargs="+", default=[default_dataset], choices=DATASETS, metavar="NAME",
                   help=f"supervised dataset(s), several for multi-task; one of {', '.join(DATASETS)} "
                        f"({', '.join(BUNDLED)} ship with pip packages and work offline; default: %(default)s)")
    g.add_argument("--ssl-dataset", choices=DATASETS, metavar="NAME",
                   help="SSL dataset when it differs from the supervised one (images mixed with --lam)")
    g.add_argument("--data-dir", default="data", help="where dataset files live (default: ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    g = p.add_argument_group("model and optimiser")
    g.add_argument("--model", default="auto", choices=("auto", *MODEL_CONFIGS),
                   help="auto: vit_tiny (32x32, patch 2), vit_tiny_64 for TinyImageNet, tiny for bundled data")
    g.add_argument("--batch-size", type=int, help="default 256 (Table 7); 32 on bundled data")
    g.add_argument("--ssl-lr", type=float, help="SSL base LR, scaled by batch/256 (default 1.5e-4, Table 7)")
    g.add_argument("--sl-lr", type=float, help="SL base LR, scaled by batch/256 (default 1e-3, Table 7)")
    g.add_argument("--mix-step", default="merged", choices=MIX_STEPS,
                   help="merged: one encoder pass (the paper); separate: MAE pass + SL pass (ablation)")
    g.add_argument("--mix-optim", default="sl", choices=MIX_OPTIMS,
                   help="optimiser settings of the mix phase (default sl: the SL warmup starts there)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g = p.add_argument_group("speed switches (auto: on with CUDA, off on the CPU)")
    g.add_argument("--amp", default="auto", choices=SWITCHES, help="bf16 autocast")
    g.add_argument("--compile", default="auto", choices=SWITCHES, help="torch.compile of the encoder")
    g.add_argument("--fused-adamw", default="auto", choices=SWITCHES, help="fused AdamW kernel")
    g.add_argument("--sdpa", default="on", choices=("on", "off"),
                   help="PyTorch's scaled-dot-product attention in every block; off: explicit softmax")


def common_config(args: argparse.Namespace) -> dict[str, Any]:
    """MixConfig fields from the shared flags, with the bundled-data preset where a flag was not given."""
    kw: dict[str, Any] = dict(
        datasets=tuple(args.dataset), ssl_dataset=args.ssl_dataset, data_dir=args.data_dir,
        download=args.download, model=args.model, mix_step=args.mix_step,
        mix_optim=args.mix_optim, device=args.device, amp=args.amp, compile=args.compile,
        fused_adamw=args.fused_adamw, sdpa=args.sdpa)
    preset = preset_for(kw["datasets"], args.ssl_dataset)
    for name in ("batch_size", "ssl_lr", "sl_lr"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
        elif name in preset:
            kw[name] = preset[name]
    if preset:
        log.info("bundled data: CPU preset %s (flags override it)",
                 ", ".join(f"{k}={kw[k]}" for k in preset))
    return kw
