"""Speedups that do not depend on how many trials share the machine.

    python benchmarks/contention.py --epoch-scale 0.1 --seeds 2

Runs the same small search (`--space table1`: SL, SSL+SL and MixTraining on every seed) twice in
one Ray instance on the 2 cores, one trial at a time and four at a time, and compares
MixTraining's speedup over SSL+SL three ways: in compute (FLOPs, deterministic), in time from
the per-kind epoch costs each search measures alone at its start (`trainable.cost.calibrate`),
and in the wall-clock training time of the trials, which depends on who else was running.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from tuning.summary import comparison_table

from common import run_search, run_searches, search_parser, write_result  # benchmarks/common.py (this folder is on sys.path when run as a script)


def speedups(concurrent: int, args, storage: str) -> dict[str, float]:
    argv = ["--space", "table1", "--dataset", args.dataset, "--model", args.model, "--seeds", str(args.seeds),
            "--epoch-scale", str(args.epoch_scale), "--cpus-per-trial", str(2 / 4), "--max-concurrent",
            str(concurrent), "--storage-path", storage, "--name", f"concurrent-{concurrent}", "--no-mlflow",
            "--verbose", "0", "--checkpoint-every", "100"]
    df, _ = run_search(argv)
    t = comparison_table(df).set_index("method")  # over the seeds every method completed
    mix, base = t.loc["mixtraining"], t.loc["ssl_sl"]
    return {"speedup_compute_tflop": mix["speedup_compute_tflop"],
            "speedup_calibrated_time_s": mix["speedup_calibrated_time_s"],
            "speedup_train_time_s": base["train_time_s"] / mix["train_time_s"]}


def main(argv=None) -> int:
    p = search_parser(__doc__, 0.1, "of the paper's 100 epochs (default 0.1: 10)")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    results = run_searches(lambda k, storage: speedups(k, args, storage), {f"{k}_at_once": k for k in (1, 4)})
    one, four = results["1_at_once"], results["4_at_once"]
    ratios = {k: four[k] / one[k] for k in one}
    results.update(machine=f"{platform.machine()} torch {torch.__version__} cpu, 2 cores", config=vars(args),
                   four_over_one=ratios)
    print(f"{'MixTraining over SSL+SL':<28}{'1 at once':>12}{'4 at once':>12}{'ratio':>10}")
    for k, label in (("speedup_compute_tflop", "compute (FLOPs)"),
                     ("speedup_calibrated_time_s", "time (calibrated, 1 slot)"),
                     ("speedup_train_time_s", "wall-clock (shared)")):
        print(f"{label:<28}{one[k]:>11.3f}x{four[k]:>11.3f}x{ratios[k]:>10.3f}")
    return write_result(args.out, results)


if __name__ == "__main__":
    sys.exit(main())
