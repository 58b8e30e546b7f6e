"""Speedups that do not depend on how many trials share the machine.

    python benchmarks/contention.py --epoch-scale 0.1 --seeds 2

Runs the same small search (`--space table1`: SL, SSL+SL and MixTraining on every seed) twice in
one Ray instance on the 2 cores, one trial at a time and four at a time, and compares
MixTraining's speedup over SSL+SL three ways: in compute (FLOPs, deterministic), in time from
the per-kind epoch costs each search measures alone at its start (`trainable.cost.calibrate`),
and in the wall-clock training time of the trials, which depends on who else was running.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
import torch

from tuning import search


def speedups(concurrent: int, args, storage: str) -> dict[str, float]:
    argv = ["--space", "table1", "--dataset", args.dataset, "--model", args.model, "--seeds", str(args.seeds),
            "--epoch-scale", str(args.epoch_scale), "--cpus-per-trial", str(2 / 4), "--max-concurrent",
            str(concurrent), "--storage-path", storage, "--name", f"concurrent-{concurrent}", "--no-mlflow",
            "--verbose", "0", "--checkpoint-every", "100"]
    parser = search.build_parser()
    a = parser.parse_args(argv)
    search.validate(a, parser)
    df = search.run(a).df
    mean = df[df["completed"]].groupby("method")[["compute_tflop", "calibrated_time_s", "train_time_s"]].mean()
    return {f"speedup_{k}": mean.loc["ssl_sl", k] / mean.loc["mixtraining", k] for k in mean.columns}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="tiny")
    p.add_argument("--epoch-scale", type=float, default=0.1, help="of the paper's 100 epochs (default 0.1: 10)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        results = {f"{k}_at_once": speedups(k, args, storage) for k in (1, 4)}
    ray.shutdown()
    one, four = results["1_at_once"], results["4_at_once"]
    ratios = {k: four[k] / one[k] for k in one}
    results.update(machine=f"{platform.machine()} torch {torch.__version__} cpu, 2 cores", config=vars(args),
                   four_over_one=ratios)
    print(f"{'MixTraining over SSL+SL':<28}{'1 at once':>12}{'4 at once':>12}{'ratio':>10}")
    for k, label in (("speedup_compute_tflop", "compute (FLOPs)"),
                     ("speedup_calibrated_time_s", "time (calibrated, 1 slot)"),
                     ("speedup_train_time_s", "wall-clock (shared)")):
        print(f"{label:<28}{one[k]:>11.3f}x{four[k]:>11.3f}x{ratios[k]:>10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
