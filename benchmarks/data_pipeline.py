"""Images/s of the tensor-resident pipeline against a torchvision DataLoader + transforms one.

    python benchmarks/data_pipeline.py                 # micro model
    python benchmarks/data_pipeline.py --data-only     # the pipelines alone

Both feed the same SL training step of the same (small) model on the same CIFAR-shaped
32x32 RGB images, so the difference is data handling: ours indexes a uint8 tensor and augments
the whole batch at once (crop with 4-pixel padding, flip) on the training device; the baseline
is the usual per-sample PIL pipeline (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
Normalize) through a DataLoader. The two are timed in alternating rounds; medians are reported.
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
import torchvision.transforms as T
from PIL import Image

from trainable.data import augment, epoch_batches, generator, normalize, to_input_shape
from trainable.datasets import load_dataset
from trainable.steps import sl_step
from trainable.models import MODEL_CONFIGS, MixViT, ModelConfig

from common import write_result  # benchmarks/common.py (this folder is on sys.path when run as a script)


# A model small enough that the data pipeline decides the throughput: 32x32 in patches of 8.
MICRO = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_dim=32,
                    decoder_depth=1, decoder_heads=2)


class PILImages(torch.utils.data.Dataset):
    """The classic torchvision way: one PIL image per sample, transformed on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="micro",
                   help="micro (default): 16 tokens of dim 32, one block, so that data handling matters")
    p.add_argument("--data-only", action="store_true", help="no training step: the pipelines alone")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=60, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (this machine has 2 cores)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    mnist = load_dataset("mnist")  # 4,000 real training images, brought to 32x32 RGB like CIFAR
    images = to_input_shape(mnist.train_images, 32)
    labels = mnist.train_labels
    cfg = MICRO if args.model == "micro" else MODEL_CONFIGS[args.model]
    model = MixViT(cfg.__class__(**{**cfg.__dict__, "img_size": 32}), [10])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step(x, y):
        if args.data_only:
            return
        loss = sl_step(model, x, [y])[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def ours(n):
        gen = generator(0)
        idx = epoch_batches(len(labels), args.batch_size, n, gen)
        t0 = time.perf_counter()
        for b in idx:
            train_step(normalize(augment(images[b], 4, True, gen)), labels[b])
        return n * args.batch_size / (time.perf_counter() - t0)

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = torch.utils.data.DataLoader(PILImages(images, labels, tf), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True, persistent_workers=args.workers > 0)

    def dataloader(n):
        it, done = iter(loader), 0
        t0 = time.perf_counter()
        while done < n:
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            train_step(x, y)
            done += 1
        return n * args.batch_size / (time.perf_counter() - t0)

    ours(3), dataloader(3)  # warm-up (worker start, first allocations)
    rates = {"tensor_resident": [], "dataloader": []}
    for _ in range(args.rounds):
        rates["tensor_resident"].append(ours(args.batches))
        rates["dataloader"].append(dataloader(args.batches))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"machine": f"{platform.machine()} torch {torch.__version__} threads {args.threads} cpu, "
                         f"DataLoader workers {args.workers}",
              "config": vars(args), "images_per_s_median": med, "rounds": rates,
              "ratio": med["tensor_resident"] / med["dataloader"]}
    for k, v in rates.items():
        print(f"{k:<16} {med[k]:8.0f} img/s   (rounds: {', '.join(f'{r:.0f}' for r in v)})")
    print(f"tensor-resident / DataLoader = {result['ratio']:.2f}x")
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
