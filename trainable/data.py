"""Training data held as uint8 tensors on the training device, with batched on-device augmentation.

No DataLoader and no per-sample work in the hot loop: a batch is an index into a resident
tensor, augmented as a whole (random crop with padding, horizontal flip; App. A.3).
All randomness comes from generators seeded by (seed, stream, epoch), so an epoch's data
order, crops, flips and masks are a pure function of those: resuming is exact by construction.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from trainable.datasets import ImageSet

log = logging.getLogger(__name__)

# Split of the labelled training data into a training pool and a validation set is fixed
# (independent of the run's seed) so that every trial of a search is selected on the same images.
VAL_SPLIT_SEED = 12345


def stream_seed(seed: int, stream: str, epoch: int) -> int:
    """A 63-bit seed for one random stream of one epoch."""
    digest = hashlib.sha256(f"{seed}/{stream}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def stratified_subset(labels: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Indices of a random subset with `fraction` of every class (at least one image each), sorted."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    picked = []
    for c in torch.unique(labels):
        idx = (labels == c).nonzero().squeeze(1)
        k = max(1, round(fraction * len(idx)))
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    return torch.cat(picked).sort().values


def to_input_shape(images: torch.Tensor, size: int, chans: int = 3) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, chans, size, size): grey is repeated, other sizes resized."""
    if images.shape[1] != chans:
        if images.shape[1] != 1:
            raise ValueError(f"cannot bring {images.shape[1]}-channel images to {chans} channels")
        images = images.expand(-1, chans, -1, -1)
    if images.shape[-2:] != (size, size):
        out = torch.empty(len(images), chans, size, size, dtype=torch.uint8)
        for i in range(0, len(images), 4096):  # chunks keep the float copy small
            x = images[i:i + 4096].float()
            y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[i:i + 4096] = y.round().clamp(0, 255).to(torch.uint8)
        images = out
    return images.contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and optional horizontal flip, batched. x: uint8 (B, C, H, W)."""
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        # Every crop of the padded batch as a strided view (B, C, 2p+1, 2p+1, H, W); one index copies the chosen ones.
        windows = F.pad(x, (pad, pad, pad, pad)).unfold(2, h, 1).unfold(3, w, 1)
        off = torch.randint(0, 2 * pad + 1, (2, b), generator=gen, device=dev)
        x = windows[torch.arange(b, device=dev), :, off[0], off[1]]
    if flip:
        do = torch.rand(b, generator=gen, device=dev) < 0.5
        x = torch.where(do.view(b, 1, 1, 1), x.flip(3), x)
    return x


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, S, S) on the device
    labels: torch.Tensor  # int64 (N,) on the device


@dataclass
class Task:
    """One supervised dataset: its pool for training, validation and test split, on the device."""
    name: str
    num_classes: int
    flip: bool
    train: Split
    val: Split
    test: Split


@dataclass
class TrainingData:
    tasks: list[Task]
    ssl_images: torch.Tensor  # uint8 (M, 3, S, S): D_ssl
    ssl_flip: bool
    ssl_is_sl: bool  # True when D_ssl is the SL images, so D_mix = D_sl (Sec. 2.2.2)

    @property
    def device(self) -> torch.device:
        return self.ssl_images.device

    @property
    def pad(self) -> int:
        return self.ssl_images.shape[-1] // 8  # App. A.3: 4-pixel padding at 32x32

    @property
    def nbytes(self) -> int:
        """Bytes held on the device (images and labels), shared SSL images counted once."""
        tensors = {id(t): t for task in self.tasks for s in (task.train, task.val, task.test)
                   for t in (s.images, s.labels)}
        tensors.setdefault(id(self.ssl_images), self.ssl_images)
        return sum(t.numel() * t.element_size() for t in tensors.values())

    # --- an epoch's batches: index tensors on the device ---
    def ssl_batches(self, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
        n = len(self.ssl_images)
        b = min(batch_size, n)
        return epoch_batches(n, b, math.ceil(n / b), gen, self.device)

    def sl_batches(self, batch_size: int, gen: torch.Generator) -> list[list[torch.Tensor]]:
        """Per step, one index batch per task; an epoch is one pass over the largest task."""
        sizes = [min(math.ceil(batch_size / len(self.tasks)), len(t.train.labels)) for t in self.tasks]
        steps = max(math.ceil(len(t.train.labels) / b) for t, b in zip(self.tasks, sizes))
        per_task = [epoch_batches(len(t.train.labels), b, steps, gen, self.device)
                    for t, b in zip(self.tasks, sizes)]
        return [list(step) for step in zip(*per_task)]

    # --- a batch's model input: augmented and normalised ---
    def ssl_input(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, 3, S, S) float images of D_ssl."""
        return normalize(augment(self.ssl_images[idx], self.pad, self.ssl_flip, gen))

    def sl_input(self, idxs: list[torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The tasks' images concatenated in task order (B, 3, S, S), and one label tensor per task."""
        xs = [normalize(augment(t.train.images[idx], self.pad, t.flip, gen)) for t, idx in zip(self.tasks, idxs)]
        return torch.cat(xs), [t.train.labels[idx] for t, idx in zip(self.tasks, idxs)]

    def mix_images(self, x_sl: torch.Tensor, lam: float, gen: torch.Generator) -> torch.Tensor:
        # Eq. (2): x_mix = lam * x_sl + (1 - lam) * x_ssl, a random x_ssl for every sample.
        idx = torch.randint(0, len(self.ssl_images), (x_sl.shape[0],), generator=gen, device=self.device)
        return lam * x_sl + (1 - lam) * self.ssl_input(idx, gen)


def build_training_data(sets: Sequence[ImageSet], ssl_set: ImageSet | None, fraction: float,
                        val_frac: float, seed: int, img_size: int, device: torch.device) -> TrainingData:
    """Validation held out of each training split (fixed), then a seeded stratified `fraction` of the rest."""
    tasks = []
    for s in sets:
        imgs = to_input_shape(s.train_images, img_size)
        pool, val = _holdout(s.train_labels, val_frac)
        pool = pool[stratified_subset(s.train_labels[pool], fraction, generator(stream_seed(seed, s.name, 0)))]
        tasks.append(Task(
            s.name, s.num_classes, s.flip,
            Split(imgs[pool].to(device), s.train_labels[pool].to(device)),
            Split(imgs[val].to(device), s.train_labels[val].to(device)),
            Split(to_input_shape(s.test_images, img_size).to(device), s.test_labels.to(device))))
        log.info("%s: %d training, %d validation, %d test images", s.name, len(pool), len(val),
                 len(s.test_labels))
    if ssl_set is None:
        ssl = tasks[0].train.images if len(tasks) == 1 else torch.cat([t.train.images for t in tasks])
        return TrainingData(tasks, ssl, all(t.flip for t in tasks), True)
    # A different SSL dataset is unlabelled data: used in full (Sec. 3.2.2), whatever fraction of
    # labelled data the supervised task gets.
    ssl = to_input_shape(ssl_set.train_images, img_size).to(device)
    return TrainingData(tasks, ssl, ssl_set.flip, False)


def _holdout(labels: torch.Tensor, val_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    if val_frac <= 0:
        return torch.arange(len(labels)), torch.arange(0)
    val = stratified_subset(labels, val_frac, generator(VAL_SPLIT_SEED))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().squeeze(1), val


def epoch_batches(n: int, batch: int, steps: int, gen: torch.Generator,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """`steps` full batches of indices into n items: fresh permutations, concatenated as needed.

    Full batches keep shapes static (one torch.compile graph); a task smaller than the others
    in a multi-task epoch cycles through its data again. The whole epoch's indices move to
    `device` in one copy.
    """
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch / n))]
    return list(torch.cat(perms)[:steps * batch].view(steps, batch).to(device))
