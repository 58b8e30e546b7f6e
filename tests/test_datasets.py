"""trainable.datasets: bundled sets load offline, the others from tiny files in their real layout."""

import os
import pickle
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
from PIL import Image
from torchvision.datasets.utils import calculate_md5

from trainable import datasets
from trainable.datasets import BUNDLED, DATASETS, ImageSet, MissingDataError, load_dataset

RNG = np.random.default_rng(0)


def assert_well_formed(data: ImageSet, channels: int, size: int, num_classes: int) -> None:
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape[1:] == (channels, size, size) and images.is_contiguous()
        assert labels.shape == (len(images),)
        assert 0 <= labels.min() and labels.max() < num_classes
    assert data.num_classes == num_classes


# --- bundled ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BUNDLED)
def bundled(request):
    return load_dataset(request.param, data_dir="/nonexistent")


def test_load_dataset__bundled_sets_load_offline_as_uint8_images_using_the_full_range(bundled):
    size = {"digits": 8, "mnist": 28}[bundled.name]
    assert_well_formed(bundled, channels=1, size=size, num_classes=10)
    assert bundled.train_images.max() > 200
    total = len(bundled.train_labels) + len(bundled.test_labels)
    assert len(bundled.test_labels) == pytest.approx(0.2 * total, abs=1)
    assert not bundled.flip


def test_load_dataset__bundled_split_is_stratified_over_all_ten_classes(bundled):
    train = torch.bincount(bundled.train_labels, minlength=10) / len(bundled.train_labels)
    test = torch.bincount(bundled.test_labels, minlength=10) / len(bundled.test_labels)
    assert (train > 0).all() and (test > 0).all()
    assert torch.allclose(train, test, atol=0.02)


def test_load_dataset__bundled_split_is_the_same_on_every_load(bundled):
    again = load_dataset(bundled.name)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(bundled, field), getattr(again, field))


# --- cifar10, cifar100, svhn ----------------------------------------------------------


def publish_checksums(monkeypatch, name, folder):
    """Make the files a test wrote the "published" ones: their MD5s replace the real ones (CHECKSUMS)."""
    monkeypatch.setitem(datasets.CHECKSUMS, name, {f: calculate_md5(str(folder / f)) for f in datasets.CHECKSUMS[name]})


def write_cifar(root, folder, batches, label_key, meta_name, meta_key):
    """Write pickled batches like the real ones; returns {batch name: (data rows, labels)}."""
    os.makedirs(root / folder)
    written = {}
    for name, count in batches.items():
        data = RNG.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        labels = RNG.integers(0, 4, count).tolist()
        # The real files were pickled by Python 2 with str keys, which torchvision reads back as str.
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels, "batch_label": name}, f)
        written[name] = (data, labels)
    with open(root / folder / meta_name, "wb") as f:
        pickle.dump({meta_key: ["a", "b", "c", "d"]}, f)
    return written


def test_load_dataset__cifar10_parses_the_real_batch_layout_into_nchw(tmp_path, monkeypatch):
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 10}
    written = write_cifar(tmp_path, "cifar-10-batches-py", batches, "labels", "batches.meta", "label_names")
    publish_checksums(monkeypatch, "cifar10", tmp_path / "cifar-10-batches-py")

    data = load_dataset("cifar10", tmp_path)

    assert_well_formed(data, channels=3, size=32, num_classes=10)
    train_rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    # Each row stores the red, green and blue 32x32 planes in turn, i.e. CHW.
    assert np.array_equal(data.train_images.numpy(), train_rows.reshape(-1, 3, 32, 32))
    assert data.train_labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert np.array_equal(data.test_images.numpy(), written["test_batch"][0].reshape(-1, 3, 32, 32))
    assert data.test_labels.tolist() == written["test_batch"][1]
    assert data.flip


def test_load_dataset__cifar100_reads_fine_labels(tmp_path, monkeypatch):
    written = write_cifar(
        tmp_path, "cifar-100-python", {"train": 20, "test": 10}, "fine_labels", "meta", "fine_label_names"
    )
    publish_checksums(monkeypatch, "cifar100", tmp_path / "cifar-100-python")

    data = load_dataset("cifar100", tmp_path)

    assert_well_formed(data, channels=3, size=32, num_classes=100)
    assert np.array_equal(data.train_images.numpy(), written["train"][0].reshape(-1, 3, 32, 32))
    assert data.train_labels.tolist() == written["train"][1]
    assert data.test_labels.tolist() == written["test"][1]


def write_svhn(root):
    written = {}
    for split, count in (("train", 20), ("test", 10)):
        images = RNG.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)  # (H, W, C, N) as in MATLAB
        labels = np.arange(count) % 10 + 1  # 1..10, 10 meaning the digit 0
        mat = {"X": images, "y": labels[:, None].astype(np.uint8)}
        scipy.io.savemat(root / f"{split}_32x32.mat", mat)
        written[split] = (images, labels)
    return written


def test_load_dataset__svhn_reads_mat_files_and_maps_label_10_to_digit_0(tmp_path, monkeypatch):
    written = write_svhn(tmp_path)
    publish_checksums(monkeypatch, "svhn", tmp_path)

    data = load_dataset("svhn", tmp_path)

    assert_well_formed(data, channels=3, size=32, num_classes=10)
    for split, (images, labels) in written.items():
        ours = getattr(data, f"{split}_images").numpy()
        assert np.array_equal(ours, images.transpose(3, 2, 0, 1))  # [n, c, h, w] == X[h, w, c, n]
        assert getattr(data, f"{split}_labels").tolist() == (labels % 10).tolist()
    assert data.flip  # App. A.3: the same crop and flip as CIFAR


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_load_dataset__a_file_that_fails_its_published_checksum_is_never_opened(tmp_path, monkeypatch, name):
    if name == "svhn":
        write_svhn(tmp_path)
        folder, victim = tmp_path, "test_32x32.mat"
    else:
        batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 10}
        write_cifar(tmp_path, "cifar-10-batches-py", batches, "labels", "batches.meta", "label_names")
        folder, victim = tmp_path / "cifar-10-batches-py", "data_batch_3"
    publish_checksums(monkeypatch, name, folder)
    with open(folder / victim, "r+b") as f:  # tampered after publication
        f.seek(100)
        f.write(b"X")
    with pytest.raises(MissingDataError, match=f"{victim} under .* failed the published MD5 checksum") as raised:
        load_dataset(name, tmp_path)
    assert "Delete them" in str(raised.value)


# The MD5s the datasets' files are published with, copied from torchvision's source
# (torchvision/datasets/cifar.py: CIFAR10 and CIFAR100 train_list, test_list and meta; torchvision/datasets/svhn.py:
# SVHN.split_list), written out so that a changed or mis-assembled table fails here.
PUBLISHED_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    },
}


def test_checksums__are_torchvisions_published_ones():
    assert datasets.CHECKSUMS == PUBLISHED_MD5


# --- tinyimagenet ------------------------------------------------------------------------

WNIDS = ["n01443537", "n01629819", "n01641577"]
COLOURS = {"n01443537": (200, 30, 30), "n01629819": (30, 200, 30), "n01641577": (30, 30, 200)}


def write_tinyimagenet(data_dir):
    """3 classes x 2 constant-colour training JPEGs (one grayscale) and 3 annotated val JPEGs."""
    root = data_dir / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(2):
            path = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            Image.new("RGB", (64, 64), COLOURS[wnid]).save(path)
    Image.new("L", (64, 64), 128).save(root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_1.JPEG")
    val = ["n01641577", "n01443537", "n01629819"]  # deliberately not in wnids.txt order
    for i, wnid in enumerate(val):
        Image.new("RGB", (64, 64), COLOURS[wnid]).save(root / "val" / "images" / f"val_{i}.JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n" for i, wnid in enumerate(val))
    )
    return root, val


def assert_close_colour(images, colours):
    mean = images.float().mean(dim=(2, 3))  # JPEG is lossy, but a flat colour survives almost exactly
    assert torch.allclose(mean, torch.tensor(colours, dtype=torch.float32), atol=3)


def test_load_dataset__tinyimagenet_labels_follow_wnids_order_and_grayscale_becomes_rgb(tmp_path):
    _, val = write_tinyimagenet(tmp_path)

    data = load_dataset("tinyimagenet", tmp_path)

    assert_well_formed(data, channels=3, size=64, num_classes=3)
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test_labels.tolist() == [WNIDS.index(wnid) for wnid in val]
    assert_close_colour(data.test_images, [COLOURS[wnid] for wnid in val])
    assert_close_colour(data.train_images[1:2], [(128, 128, 128)])  # the grayscale JPEG
    assert_close_colour(data.train_images[2:], [COLOURS[w] for w in WNIDS[1:] for _ in range(2)])
    assert data.flip


def test_load_dataset__tinyimagenet_second_load_comes_from_the_cache_until_wnids_change(tmp_path):
    root, _ = write_tinyimagenet(tmp_path)
    first = load_dataset("tinyimagenet", tmp_path)
    assert (root / "cache_uint8.npz").exists()
    for path in root.glob("train/*/images/*.JPEG"):
        Image.new("RGB", (64, 64), (0, 0, 0)).save(path)

    cached = load_dataset("tinyimagenet", tmp_path)
    assert torch.equal(cached.train_images, first.train_images)
    assert torch.equal(cached.test_labels, first.test_labels)

    later = (root / "cache_uint8.npz").stat().st_mtime + 10
    os.utime(root / "wnids.txt", (later, later))
    assert load_dataset("tinyimagenet", tmp_path).train_images.max() < 10


# --- missing data, unknown names ------------------------------------------------------

EXPECTED_UNDER = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "",
    "tinyimagenet": "tiny-imagenet-200",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_UNDER))
def test_load_dataset__missing_files_name_path_how_to_get_them_and_offline_alternative(tmp_path, name):
    with pytest.raises(MissingDataError) as raised:
        load_dataset(name, tmp_path)

    message = str(raised.value)
    assert str(tmp_path / EXPECTED_UNDER[name]).rstrip("/") in message
    assert "download" in message and "digits" in message and "mnist" in message
    assert isinstance(raised.value, FileNotFoundError)


def test_load_dataset__missing_tinyimagenet_points_to_the_zip(tmp_path):
    with pytest.raises(MissingDataError, match="tiny-imagenet-200.zip"):
        load_dataset("tinyimagenet", tmp_path)


def test_load_dataset__failed_download_says_so_and_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(MissingDataError, match="download failed") as raised:
        load_dataset("cifar10", tmp_path, download=True)
    assert str(tmp_path / "cifar-10-batches-py") in str(raised.value)


def test_load_dataset__unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as raised:
        load_dataset("imagenet")
    assert all(name in str(raised.value) for name in DATASETS)


def test_image_set__pickles_its_pixels_out_of_band_so_the_object_store_shares_them_without_copies():
    data = load_dataset("digits")
    buffers = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)

    back = pickle.loads(payload, buffers=buffers)

    assert len(buffers) == 4 and len(payload) < 1000  # the arrays travel beside the pickle, not in it
    assert back.train_images.data_ptr() == data.train_images.data_ptr()  # mapped, not copied
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(back, field), getattr(data, field))
    assert (back.name, back.num_classes, back.flip) == (data.name, data.num_classes, data.flip)
