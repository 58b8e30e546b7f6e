"""What each GPU switch buys: epoch throughput of SSL, SL and merged-mix epochs per switch, and
the total throughput of several trials sharing one GPU (what fractional GPUs give a search).

    python benchmarks/gpu_switches.py --reps 2 --concurrent 1 4 --out benchmarks/results/gpu_switches.json
    python benchmarks/gpu_switches.py --device cpu --model test --repeat 1 --reps 3 --concurrent   # CPU check

Variants: `baseline` has every switch off (fp32 with TF32 matmuls on CUDA, eager, foreach AdamW,
explicit softmax attention);
`sdpa`, `fused_adamw`, `bf16` and `compile` each turn one switch on over it; `all` is the default
with CUDA (every switch on). Each variant trains the paper's model on the bundled digits
(resized to the model's input, the training pool repeated `--repeat` times so that an epoch is long
enough to time); one warm-up epoch per phase (compilation, allocator), then the median of `--reps`
epochs. Only the bundled data and torch/timm are needed, so it runs on a bare GPU machine.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.multiprocessing as mp

from trainable.config import MixConfig, resolve
from trainable.data import Split
from trainable.engine import Engine, load_training_data

OFF = dict(amp="off", compile="off", fused_adamw="off", sdpa="off")
VARIANTS = {
    "baseline": OFF,
    "sdpa": {**OFF, "sdpa": "on"},
    "fused_adamw": {**OFF, "fused_adamw": "on"},
    "bf16": {**OFF, "amp": "on"},
    "compile": {**OFF, "compile": "on"},
    "all": dict(amp="on", compile="on", fused_adamw="on", sdpa="on"),
}
BARRIER_TIMEOUT_S = 300  # warm-up (compilation) of the slowest process sharing the device
PHASES = {  # phase -> config whose first epochs are all of that phase
    "ssl": dict(method="ssl_sl"),
    "sl": dict(method="sl"),
    "mix": dict(method="mixtraining", rho=1.0),
}


def repeated_data(cfg: MixConfig, device: torch.device, repeat: int):
    """The config's training data with its training pool repeated `repeat` times (epoch length only)."""
    data = load_training_data(resolve(cfg.replace(device=str(device))))
    t = data.tasks[0]
    t.train = Split(t.train.images.repeat(repeat, 1, 1, 1), t.train.labels.repeat(repeat))
    data.ssl_images = t.train.images
    return data


def phase_throughput(base: MixConfig, data, phase: str, reps: int) -> dict:
    """images/s (median of `reps` epochs after a warm-up one), peak memory and first loss of one phase."""
    cfg = base.replace(**PHASES[phase], e_ssl=reps + 1, e_sl=reps + 1)
    if phase == "ssl":
        cfg = cfg.replace(e_sl=1)
    gc.collect()  # the previous engine (and its compiled graphs) must not count towards this one's memory
    if torch.device(cfg.device).type == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(cfg.device)
    eng = Engine(cfg, data=data)
    warm = eng.run_epoch()
    epochs = [eng.run_epoch() for _ in range(reps)]
    assert all(m["phase"] == phase for m in [warm, *epochs]), phase
    loss = warm.get("loss_sl", warm.get("loss_ssl"))
    out = {"images_per_s": statistics.median(m["images_per_s"] for m in epochs),
           "warmup_epoch_s": warm["epoch_time_s"], "first_epoch_loss": loss}
    if eng.device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(eng.device) / 2**30
    return out


def _worker(rank: int, base: MixConfig, repeat: int, reps: int, threads: int, barrier, results) -> None:
    torch.set_num_threads(threads)  # k processes split the cores, as trials do (--cpus-per-trial)
    # No validation split: the timed window then holds training alone, the images it counts.
    cfg = base.replace(method="sl", e_sl=reps + 1, val_frac=0.0)
    eng = Engine(cfg, data=repeated_data(cfg, torch.device(cfg.device), repeat))
    eng.run_epoch()  # warm-up, then all processes start timing together
    barrier.wait(timeout=BARRIER_TIMEOUT_S)
    t0, images = time.perf_counter(), 0
    for _ in range(reps):
        m = eng.run_epoch()
        images += m["images_per_s"] * m["epoch_time_s"]
    results[rank] = (images, time.perf_counter() - t0)


def shared_device_throughput(base: MixConfig, k: int, repeat: int, reps: int) -> float:
    """Total SL images/s of k trial processes training at once on one device."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier, results = manager.Barrier(k), manager.dict()
        threads = max(1, torch.get_num_threads() // k)
        procs = [ctx.Process(target=_worker, args=(r, base, repeat, reps, threads, barrier, results))
                 for r in range(k)]
        for p in procs:
            p.start()
        for p in procs:  # a process that died before the barrier breaks it for the others
            p.join(timeout=BARRIER_TIMEOUT_S + 60 * reps)
        for p in procs:
            if p.is_alive():
                p.terminate()
        if len(results) != k:
            raise RuntimeError(f"{k - len(results)} of {k} trial processes failed (exit codes "
                               f"{[p.exitcode for p in procs]})")
        return sum(i for i, _ in results.values()) / max(t for _, t in results.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="vit_tiny", help="default: the paper's ViT-T, 32x32 in patches of 2")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=8, help="repeat the training pool this many times per epoch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    p.add_argument("--concurrent", type=int, nargs="*", default=[1, 2, 4],
                   help="trial processes sharing the device, SL epochs (none: skip)")
    p.add_argument("--concurrent-variant", default="all", choices=list(VARIANTS),
                   help="the switches of the processes sharing the device (default: all, as on CUDA)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if "baseline" not in args.variants:  # every ratio is over it
        args.variants.insert(0, "baseline")
    device = torch.device(args.device)
    base = MixConfig(datasets=(args.dataset,), model=args.model, batch_size=args.batch_size, device=args.device)
    data = repeated_data(base, device, args.repeat)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {"machine": f"{name}, torch {torch.__version__}", "config": vars(args),
              "train_images_per_epoch": len(data.tasks[0].train.labels), "variants": {}}
    print(f"{result['machine']}: {args.model}, batch {args.batch_size}, "
          f"{result['train_images_per_epoch']} images per epoch", flush=True)
    print(f"{'variant':<12}" + "".join(f"{ph + ' img/s':>14}{'x base':>8}" for ph in args.phases)
          + f"{'peak GiB':>10}", flush=True)
    for v in args.variants:
        rows = {ph: phase_throughput(base.replace(**VARIANTS[v]), data, ph, args.reps) for ph in args.phases}
        result["variants"][v] = rows
        ref = result["variants"].get("baseline", rows)
        line = f"{v:<12}"
        for ph, r in rows.items():
            r["speedup_over_baseline"] = r["images_per_s"] / ref[ph]["images_per_s"]
            line += f"{r['images_per_s']:>14.0f}{r['speedup_over_baseline']:>8.2f}"
        peak = max(r.get("peak_mem_gib", float("nan")) for r in rows.values())
        print(line + f"{peak:>10.2f}", flush=True)
    if args.concurrent:
        shared = {k: shared_device_throughput(base.replace(**VARIANTS[args.concurrent_variant]), k, args.repeat,
                                              args.reps)
                  for k in args.concurrent}
        result["shared_device_sl_images_per_s"] = shared
        for k, ips in shared.items():
            print(f"{k} trial(s) sharing the {args.device} device: {ips:.0f} SL img/s in total, "
                  f"{ips / shared[args.concurrent[0]]:.2f}x {args.concurrent[0]} trial(s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
