"""Command-line flags shared by `trainable.train`, `tuning/search.py` and `tuning/report.py`.

Every flag's value is checked where argparse reads it (the `type=` functions below), so a bad
value stops the command at once with one line naming the flag and the accepted range, exit code 2
and no traceback.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
from typing import Any, Callable

from trainable.config import MIX_OPTIMS, MIX_STEPS, SSL_COSINES, SWITCHES, ConfigError, MixConfig, preset_for
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


# --- checked argparse types -------------------------------------------------------------------------

def number(kind: type = float, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite int or float within [low, high] (open ends where asked)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            whole = " (a whole number)" if kind is int else ""
            raise argparse.ArgumentTypeError(f"{_range_text(low, high, low_open, high_open)}{whole}, got {text}")
        return value
    return parse


def _range_text(low, high, low_open, high_open) -> str:
    if high is None:
        return "must be positive" if (low == 0 and low_open) else f"must be at least {low:g}"
    return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


UNIT = number(float, 0, 1)  # [0, 1]
FRACTION = number(float, 0, 1, low_open=True)  # (0, 1]
POSITIVE = number(float, 0, low_open=True)
NON_NEGATIVE = number(float, 0)
COUNT = number(int, 1)  # 1, 2, ...
INDEX = number(int, 0)  # 0, 1, ...


def folder_name(text: str) -> str:
    """A name usable as one folder name on every filesystem and object store."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}", text):
        raise argparse.ArgumentTypeError(
            f"must be one folder name: letters, digits and . _ + = - (not first), at most 200 characters; "
            f"got {text!r}")
    return text


def local_folder(text: str) -> str:
    """A local folder path: it may not exist yet, but must not be a file."""
    if not text or "\0" in text or os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"must be a folder path (it may not exist yet), got {text!r}")
    return text


def local_file(text: str) -> str:
    """A local file path: it may not exist yet, but must not be a folder."""
    if not text or "\0" in text or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a file path (it may not exist yet), got {text!r}")
    return text


STORAGE_SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "abfs", "abfss")  # what pyarrow's filesystems open


def storage_path(text: str) -> str:
    """A local folder or a URI of a filesystem pyarrow opens (s3://bucket/path, gs://...)."""
    if "://" not in text:
        return local_folder(text)
    scheme, rest = text.split("://", 1)
    if scheme not in STORAGE_SCHEMES or not rest.strip("/"):
        raise argparse.ArgumentTypeError(
            f"must be a local folder or a URI with one of the schemes {', '.join(STORAGE_SCHEMES)} and a path, "
            f"got {text!r}")
    return text


def storage_file(text: str) -> str:
    """A file's storage path: a local file path (which may exist: it is replaced) or a URI."""
    return storage_path(text) if "://" in text else local_file(text)


TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


def tracking_uri(text: str) -> str:
    """An MLflow tracking URI (http://host:port, sqlite:///path.db, a database URL) or a local folder."""
    if "://" not in text and not text.startswith("databricks"):
        return local_folder(text)
    scheme = re.split(r"[+:]", text, maxsplit=1)[0]
    if scheme not in TRACKING_SCHEMES or (scheme == "sqlite" and not text.startswith("sqlite:///")):
        raise argparse.ArgumentTypeError(
            f"must be an MLflow tracking URI (http(s)://HOST:PORT, sqlite:///FILE, a database URL) or a folder, "
            f"got {text!r}")
    return text


def ray_address(text: str) -> str:
    """What ray.init accepts: auto, local, HOST:PORT, ray://HOST:PORT or http(s)://HOST:PORT."""
    if not re.fullmatch(r"auto|local|((ray|https?)://)?[A-Za-z0-9._-]+:\d{1,5}", text):
        raise argparse.ArgumentTypeError(f"must be auto, local or HOST:PORT (ray://HOST:PORT), got {text!r}")
    return text


def mlflow_experiment(text: str) -> str:
    if not text.strip() or len(text) > 500:
        raise argparse.ArgumentTypeError(f"must be a non-empty name of at most 500 characters, got {text!r}")
    return text


def device_name(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_common_args(p: argparse.ArgumentParser, default_dataset: str = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", nargs="+", default=[default_dataset], choices=DATASETS, metavar="NAME",
                   help=f"supervised dataset(s), several for multi-task; one of {', '.join(DATASETS)} "
                        f"({', '.join(BUNDLED)} ship with pip packages and work offline; default: %(default)s)")
    g.add_argument("--ssl-dataset", choices=DATASETS, metavar="NAME",
                   help="SSL dataset when it differs from the supervised one (images mixed with --lam)")
    g.add_argument("--data-dir", default="data", type=local_folder, help="where dataset files live (default: ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    g.add_argument("--val-frac", type=number(float, 0, 1, high_open=True), default=MixConfig.val_frac,
                   help="held out of each training split for model selection (default %(default)g); 0 trains on "
                        "all of it, as the paper does, where nothing is selected")
    g = p.add_argument_group("model and optimiser")
    g.add_argument("--model", default="auto", choices=("auto", *MODEL_CONFIGS),
                   help="auto: vit_tiny (32x32, patch 2), vit_tiny_64 for TinyImageNet, tiny for bundled data")
    g.add_argument("--batch-size", type=COUNT, help="default 256 (Table 7); 32 on bundled data")
    g.add_argument("--ssl-lr", type=POSITIVE, help="SSL base LR, scaled by batch/256 (default 1.5e-4, Table 7)")
    g.add_argument("--sl-lr", type=POSITIVE, help="SL base LR, scaled by batch/256 (default 1e-3, Table 7)")
    g.add_argument("--mix-step", default="merged", choices=MIX_STEPS,
                   help="merged: one encoder pass (the paper); separate: MAE pass + SL pass (ablation)")
    g.add_argument("--mix-optim", default="sl", choices=MIX_OPTIMS,
                   help="optimiser settings of the mix phase (default sl: the SL warmup starts there)")
    g.add_argument("--ssl-cosine", default="e_ssl", choices=SSL_COSINES,
                   help="e_ssl: the SSL cosine spans all e_ssl epochs, so MixTraining's SSL-only phase stops partway "
                        "down it (default); ssl_only: it anneals to zero when the SSL-only phase ends (then that "
                        "phase depends on rho and fewer SSL prefixes are shared)")
    g.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N")
    g = p.add_argument_group("speed switches (auto: on with CUDA, off on the CPU)")
    g.add_argument("--amp", default="auto", choices=SWITCHES, help="bf16 autocast")
    g.add_argument("--compile", default="auto", choices=SWITCHES, help="torch.compile of the encoder")
    g.add_argument("--fused-adamw", default="auto", choices=SWITCHES, help="fused AdamW kernel")
    g.add_argument("--deterministic", action="store_true",
                   help="PyTorch's deterministic algorithms on CUDA, for exact resume and SSL-prefix sharing there "
                        "(results on the CPU are bit-exact without it)")
    g.add_argument("--sdpa", default="on", choices=("on", "off"),
                   help="PyTorch's scaled-dot-product attention in every block; off: explicit softmax")


def common_config(args: argparse.Namespace) -> dict[str, Any]:
    """MixConfig fields from the shared flags, with the bundled-data preset where a flag was not given."""
    kw: dict[str, Any] = dict(
        datasets=tuple(args.dataset), ssl_dataset=args.ssl_dataset, data_dir=args.data_dir,
        download=args.download, val_frac=args.val_frac, model=args.model, mix_step=args.mix_step,
        mix_optim=args.mix_optim, ssl_cosine=args.ssl_cosine, device=args.device, amp=args.amp, compile=args.compile,
        fused_adamw=args.fused_adamw, sdpa=args.sdpa, deterministic=args.deterministic)
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
