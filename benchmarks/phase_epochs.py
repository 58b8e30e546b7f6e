"""Time one epoch of each step kind: SSL (MAE), SL, merged mix and separate mix.

    python benchmarks/phase_epochs.py --dataset digits --model tiny --reps 5

The kinds are interleaved rep by rep (SSL, SL, merged, separate, SSL, ...) so that drift on a
shared machine hits them alike; medians are reported, with the ratio merged / (ssl + sl):
below 1 means the merged mix epoch costs less than the SSL and SL epochs it stands in for,
and merged / ideal, where the ideal is an SL epoch plus the decoder's own cost (the merge
cannot do better than that). Then MixTraining (rho = 0.5) and SSL+SL end to end at equal epochs.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from trainable.config import MixConfig, resolve
from trainable.data import generator
from trainable.engine import Engine, load_training_data
from trainable.losses import mae_loss
from trainable.models import select_tokens

from common import write_result  # benchmarks/common.py (this folder is on sys.path when run as a script)

KINDS = {  # name -> config whose every epoch is that kind
    "ssl": dict(method="ssl_sl"),  # e_ssl = reps, e_sl = 1: the first `reps` epochs are SSL-only
    "sl": dict(method="sl"),
    "mix_merged": dict(method="mixtraining", rho=1.0, mix_step="merged"),
    "mix_separate": dict(method="mixtraining", rho=1.0, mix_step="separate"),
}


def decoder_epoch_time(engine: Engine) -> float:
    """Seconds the decoder alone (forward, loss, backward) takes over one epoch of SL batches."""
    model, gen = engine.model, generator(0)
    total = 0.0
    for idxs in engine.data.sl_batches(engine.cfg.batch_size, gen):
        x, _ = engine.data.sl_input(idxs, gen)
        with torch.no_grad():
            tokens = model.forward_encoder(x)
        tokens.requires_grad_(True)
        engine._sync()
        t0 = time.perf_counter()
        ids_keep, mask, ids_restore = model.random_masking(x.shape[0], model.cfg.num_patches, 0.75, gen, x.device)
        pred = model.forward_decoder(select_tokens(tokens, ids_keep), ids_restore)
        mae_loss(pred, model.patchify(x), mask).backward()
        engine._sync()
        total += time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--e2e-epochs", type=int, default=6, help="e_ssl = e_sl of the end-to-end comparison")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = MixConfig(datasets=(args.dataset,), model=args.model, batch_size=args.batch_size, device=args.device,
                     e_ssl=args.reps + 1, e_sl=args.reps + 1)  # + the warm-up epoch
    data = load_training_data(resolve(base))
    engines = {}
    for name, kw in KINDS.items():
        cfg = base.replace(**kw)
        if name == "ssl":
            cfg = cfg.replace(e_sl=1)
        engines[name] = Engine(cfg, data=data)
    engines["sl"].run_epoch()  # warm-up: first-call allocations
    times = {k: [] for k in engines}
    images = {}
    for _ in range(args.reps):
        for name, eng in engines.items():
            m = eng.run_epoch()
            assert m["phase"] == {"ssl": "ssl", "sl": "sl"}.get(name, "mix"), (name, m["phase"])
            times[name].append(m["epoch_time_s"])
            images[name] = m["images_per_s"] * m["epoch_time_s"]
    # The ideal mix epoch: an SL epoch plus what the decoder alone costs on the same batches.
    times["decoder"] = [decoder_epoch_time(engines["mix_merged"]) for _ in range(args.reps)]
    med = {k: statistics.median(v) for k, v in times.items()}
    med["ideal_mix"] = med["sl"] + med["decoder"]
    e2e = {}
    for method in ("ssl_sl", "mixtraining"):  # end to end at equal epochs, rho = 0.5
        eng = Engine(base.replace(method=method, rho=0.5, e_ssl=args.e2e_epochs, e_sl=args.e2e_epochs), data=data)
        while not eng.done:
            eng.run_epoch()
        e2e[method] = eng.train_time_s
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__} "
                   f"threads {args.threads} device {args.device}".strip(),
        "config": {"dataset": args.dataset, "model": args.model, "batch_size": args.batch_size, "reps": args.reps,
                   "images_per_epoch": int(images["sl"])},
        "epoch_s_median": med,
        "merged_mix_over_ssl_plus_sl": med["mix_merged"] / (med["ssl"] + med["sl"]),
        "separate_mix_over_ssl_plus_sl": med["mix_separate"] / (med["ssl"] + med["sl"]),
        "merged_over_separate": med["mix_merged"] / med["mix_separate"],
        "merged_mix_over_ideal": med["mix_merged"] / med["ideal_mix"],
        "end_to_end_train_s": e2e,
        "end_to_end_speedup_mixtraining_over_ssl_sl": e2e["ssl_sl"] / e2e["mixtraining"],
    }
    print(f"{'kind':<14}{'median epoch (s)':>18}{'all reps (s)':>40}")
    for k in times:
        print(f"{k:<14}{med[k]:>18.3f}{' '.join(f'{t:.3f}' for t in times[k]):>40}")
    print(f"merged mix / (ssl + sl)   = {result['merged_mix_over_ssl_plus_sl']:.3f}")
    print(f"separate mix / (ssl + sl) = {result['separate_mix_over_ssl_plus_sl']:.3f}")
    print(f"merged / separate         = {result['merged_over_separate']:.3f}")
    print(f"merged / ideal (sl + decoder) = {result['merged_mix_over_ideal']:.3f}")
    print(f"end to end, {args.e2e_epochs} + {args.e2e_epochs} epochs: SSL+SL {e2e['ssl_sl']:.1f} s, MixTraining "
          f"(rho 0.5) {e2e['mixtraining']:.1f} s, speedup {result['end_to_end_speedup_mixtraining_over_ssl_sl']:.2f}x")
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
