"""What the benchmark scripts share: running the search in this process, and writing a result."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def search_parser(doc: str, epoch_scale: float, epoch_help: str):
    """The flags the search benchmarks share: data, model, epoch scale, --out."""
    import argparse
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="tiny")
    p.add_argument("--epoch-scale", type=float, default=epoch_scale, help=epoch_help)
    p.add_argument("--out", help="also write the figures as JSON here")
    return p


def run_search(argv: list[str]):
    """tuning/search.py with these flags, in this process (on its Ray instance): (trial rows, wall seconds)."""
    from tuning import driver, search
    parser = search.build_parser()
    args = parser.parse_args(argv)
    search.validate(args, parser)
    t0 = time.perf_counter()
    df = driver.run(args).df
    return df, time.perf_counter() - t0


def run_searches(run, variants: dict) -> dict:
    """`run(variant, storage)` for each named variant, in one local Ray instance on the 2 cores and one
    temporary storage folder: {name: what run returned}."""
    import tempfile

    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            return {name: run(variant, storage) for name, variant in variants.items()}
    finally:
        ray.shutdown()


def write_result(out: str | None, result: dict) -> int:
    """The result as JSON at `out` (when given); the exit code."""
    if out:
        Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0
