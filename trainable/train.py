"""Train one configuration without Ray.

    python -m trainable.train --method mixtraining --dataset digits --epochs 10 --alpha 0.5 --rho 0.5 --seed 0

Prints one line per epoch and ends with `test_acc=... train_time_s=...`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from trainable.cli import (COUNT, FRACTION, INDEX, UNIT, add_common_args, common_config, config_error_message,
                           local_file)
from trainable.config import METHODS, ConfigError, MixConfig, resolve
from trainable.datasets import MissingDataError
from trainable.engine import Engine, NonFiniteLossError

log = logging.getLogger("trainable.train")

def format_epoch(m: dict, total: int) -> str:
    parts = [f"epoch {m['epoch']:>3}/{total} [{m['phase']:>3}]"]
    parts += [f"{k}={m[k]:.4f}" for k in ("loss_ssl", "loss_sl", "val_acc") if k in m]
    parts += [f"lr={m['lr']:.2e}", f"{m['epoch_time_s']:.1f}s", f"{m['images_per_s']:.0f} img/s"]
    return "  ".join(parts)


class CheckpointError(ValueError):
    """--checkpoint names a file that cannot be written or read; the message says what to do."""


def _tmp_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".tmp")


def save_atomic(state: dict, path: Path) -> None:
    tmp = _tmp_path(path)
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint


def check_writable(path: Path) -> None:
    """Checked before anything trains: otherwise the first epoch's work is lost when it is first saved."""
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"--checkpoint {path}: {folder} {what}; create the folder (mkdir -p {folder}) "
                              f"or give a path in an existing one")
    try:  # the save's own temporary file, written and removed: what a save will do, whoever runs this
        with open(_tmp_path(path), "wb"):
            pass
        os.remove(_tmp_path(path))
    except OSError as e:
        raise CheckpointError(f"--checkpoint {path}: cannot write in {folder} ({e.strerror}); "
                              f"give a path in a folder you can write to") from e


def read_checkpoint(path: Path) -> dict:
    """The state a checkpoint holds; CheckpointError when the file is not a whole checkpoint of this command."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch.load fails in many ways on a bad file (zip, pickle, EOF): all mean unusable
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"--checkpoint {path}: cannot be read ({reason}); it is corrupt or not a "
                              f"checkpoint of this command: delete it to start afresh, or give another path") from e
    if not isinstance(state, dict) or not {"config", "model", "epoch"} <= set(state):
        raise CheckpointError(f"--checkpoint {path}: not a checkpoint of this command (no config, model and epoch); "
                              f"delete it to start afresh, or give another path")
    return state


def checkpoint_path(text: str) -> Path:
    return Path(local_file(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainable.train", description=__doc__,
                                usage="%(prog)s [options]   (--help lists them)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="mixtraining", choices=METHODS,
                   help="sl: SL only (e_ssl = 0); ssl_sl: SSL then SL (rho = 0); mixtraining (default)")
    p.add_argument("--epochs", type=COUNT, default=100, help="e_ssl = e_sl = EPOCHS (default 100, Table 6)")
    p.add_argument("--e-ssl", type=INDEX, help="SSL epochs, overrides --epochs")
    p.add_argument("--e-sl", type=COUNT, help="SL epochs, overrides --epochs")
    p.add_argument("--alpha", type=UNIT, default=0.5, help="loss ratio of Eq. (3) (default 0.5)")
    p.add_argument("--rho", type=UNIT, default=0.5, help="mix ratio of Eq. (1) (default 0.5)")
    p.add_argument("--lam", type=UNIT, default=0.5, help="image mixing weight of Eq. (2), with --ssl-dataset")
    p.add_argument("--seed", type=INDEX, default=0)
    p.add_argument("--fraction", type=FRACTION, default=1.0,
                   help="data limitation p in (0, 1]: seeded stratified subset of the training split")
    p.add_argument("--threads", type=COUNT, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint", type=checkpoint_path,
                   help="save the full state here after every epoch and resume from it when it exists")
    add_common_args(p)
    return p


def config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MixConfig:
    try:
        return MixConfig(method=args.method, e_ssl=args.e_ssl if args.e_ssl is not None else args.epochs,
                         e_sl=args.e_sl if args.e_sl is not None else args.epochs, alpha=args.alpha,
                         rho=args.rho, lam=args.lam, seed=args.seed, fraction=args.fraction, **common_config(args))
    except ConfigError as e:
        parser.error(config_error_message(e))


def checked_checkpoint(checkpoint: Path | None) -> dict | None:
    """Before the data loads or anything trains: the checkpoint's folder takes files, and the checkpoint, when
    there is one, loads. Its state (None when there is none yet); CheckpointError naming the flag otherwise."""
    if checkpoint is None:
        return None
    check_writable(checkpoint)
    return read_checkpoint(checkpoint) if checkpoint.exists() else None


def resume(engine: Engine, state: dict, checkpoint: Path) -> None:
    """Continue from a checkpoint's `state`; ValueError when it holds another config's run."""
    engine.load_state_dict(state)
    log.info("resumed from %s after epoch %d", checkpoint, engine.epoch)


def train_to_end(engine: Engine, checkpoint: Path | None) -> int:
    """Train the remaining epochs, saving after each; print the test accuracy. The exit code."""
    cfg, p = engine.cfg, engine.plan
    log.info("%s on %s: %d SSL-only, %d mix, %d SL-only epochs; model %s on %s",
             cfg.method, "+".join(cfg.datasets), p.ssl, p.mix, p.sl, engine.model_cfg, engine.device)
    try:
        while not engine.done:
            log.info(format_epoch(engine.run_epoch(), p.total))
            if checkpoint:
                save_atomic(engine.state_dict(), checkpoint)
    except KeyboardInterrupt:
        hint = "rerun with the same --checkpoint to continue" if checkpoint else \
            "pass --checkpoint PATH to be able to continue"
        print(f"\ninterrupted after epoch {engine.epoch}; {hint}", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    test = engine.evaluate("test")
    per_task = " ".join(f"test_{k}={v:.3f}" for k, v in test.items() if "/" in k and len(cfg.datasets) > 1)
    print(f"test_acc={test['acc']:.3f} train_time_s={engine.train_time_s:.1f}" + (f" {per_task}" if per_task else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from(args, parser)
    try:
        state = checked_checkpoint(args.checkpoint)
        engine = Engine(resolve(cfg))
        if state is not None:
            resume(engine, state, args.checkpoint)
    except (MissingDataError, ValueError) as e:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return train_to_end(engine, args.checkpoint)


if __name__ == "__main__":
    sys.exit(main())
