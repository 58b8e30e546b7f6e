"""trainable.data: augmentation, subsets, the validation hold-out and an epoch's batches and inputs."""
import pytest
import torch
import torch.nn.functional as F

from trainable.data import (augment, build_training_data, epoch_batches, generator, normalize,
                            stratified_subset)
from trainable.datasets import ImageSet, load_dataset


def _offsets(out: torch.Tensor, x: torch.Tensor, pad: int) -> list[tuple[int, int]]:
    """For each output image, the (row, col) of the padded input's window it equals (the first if several)."""
    size = x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad))
    found = []
    for o, p in zip(out, padded):
        hits = [(r, c) for r in range(2 * pad + 1) for c in range(2 * pad + 1)
                if torch.equal(o, p[:, r:r + size, c:c + size])]
        assert hits, "an output is no window of its zero-padded input"
        found.append(hits[0])
    return found


def test_augment__crops_are_windows_of_the_zero_padded_images_at_varied_offsets():
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=generator(0), dtype=torch.uint8)
    out = augment(x, 2, False, generator(3))
    offsets = _offsets(out, x, 2)
    assert len(set(offsets)) >= 10, f"crops barely move: {set(offsets)}"  # 25 possible; a no-op crop gives 1
    assert torch.equal(augment(x, 2, False, generator(3)), out)  # seeded
    assert not torch.equal(augment(x, 2, False, generator(4)), out)


def test_augment__flip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=generator(1), dtype=torch.uint8)
    out = augment(x, 0, True, generator(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image exactly one of the two
    assert 16 <= sum(flipped) <= 48, sum(flipped)
    assert torch.equal(augment(x, 0, False, generator(0)), x)  # no flip asked: untouched


def test_stratified_subset__deterministic_and_keeps_class_proportions():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 10)
    a = stratified_subset(labels, 0.2, generator(5))
    assert torch.equal(a, stratified_subset(labels, 0.2, generator(5)))
    assert not torch.equal(a, stratified_subset(labels, 0.2, generator(6)))
    assert torch.bincount(labels[a]).tolist() == [20, 10, 2]


def test_build_training_data__fraction_is_seeded_and_validation_is_fixed():
    digits = load_dataset("digits")
    build = lambda frac, seed: build_training_data([digits], None, frac, 0.1, seed, 16, torch.device("cpu"))  # noqa: E731
    half0, half0b, half1 = build(0.5, 0), build(0.5, 0), build(0.5, 1)
    assert torch.equal(half0.tasks[0].train.labels, half0b.tasks[0].train.labels)
    assert not torch.equal(half0.tasks[0].train.images, half1.tasks[0].train.images)
    assert torch.equal(half0.tasks[0].val.images, half1.tasks[0].val.images)  # same validation set
    full = build(1.0, 0).tasks[0]
    assert len(half0.tasks[0].train.labels) == pytest.approx(len(full.train.labels) / 2, abs=10)
    assert half0.tasks[0].train.images.shape[1:] == (3, 16, 16)  # 8x8 grey -> the model's input


def _numbered_set(n: int = 200) -> ImageSet:
    """A dataset whose every image is unique: its index written into its first pixels."""
    images = torch.zeros(n, 1, 16, 16, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    labels = torch.arange(n) % 10
    return ImageSet("numbered", 10, images, labels, images[:10].clone(), labels[:10].clone(), flip=False)


def _ids(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist())


@pytest.mark.parametrize("fraction, seed", [(1.0, 0), (0.3, 0), (0.3, 7)])
def test_build_training_data__training_and_validation_images_never_overlap(fraction, seed):
    data = build_training_data([_numbered_set()], None, fraction, 0.2, seed, 16, torch.device("cpu"))
    train, val = _ids(data.tasks[0].train.images), _ids(data.tasks[0].val.images)
    assert len(val) == 40 and len(train) == 10 * round(16 * fraction)  # stratified: per class
    assert not train & val
    assert _ids(data.ssl_images) == train  # SSL on the SL images uses the training pool only


def test_epoch_batches__full_batches_of_fresh_permutations():
    batches = epoch_batches(10, 4, 5, generator(0))  # 20 indices: two permutations of 10
    flat = torch.cat(batches)
    assert [len(b) for b in batches] == [4] * 5
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))


def test_training_data__multi_task_batches_cover_the_largest_task_and_split_the_batch(digits_data):
    data = build_training_data([load_dataset("digits"), load_dataset("mnist")], None, 1.0, 0.1, 0, 16,
                               torch.device("cpu"))
    steps = data.sl_batches(64, generator(0))
    sizes = {tuple(len(i) for i in step) for step in steps}
    assert sizes == {(32, 32)}  # half the batch to each task
    assert len(steps) == -(-len(data.tasks[1].train.labels) // 32)  # one pass over the larger (MNIST)
    x, ys = data.sl_input(steps[0], generator(1))
    assert x.shape == (64, 3, 16, 16) and [len(y) for y in ys] == [32, 32]
    assert torch.equal(ys[0], data.tasks[0].train.labels[steps[0][0]])


def _windows(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Every crop of every zero-padded image: (N * (2p+1)^2, C, S, S)."""
    s = images.shape[-1]
    w = F.pad(images, (pad,) * 4).unfold(2, s, 1).unfold(3, s, 1)  # (N, C, 2p+1, 2p+1, S, S)
    return w.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1], s, s)


def test_training_data__mix_images_blend_each_sl_image_with_an_augmented_ssl_image_by_lambda():
    data = build_training_data([load_dataset("digits")], load_dataset("mnist"), 0.2, 0.1, 0, 16,
                               torch.device("cpu"))
    x_sl, _ = data.sl_input(data.sl_batches(4, generator(0))[0], generator(1))
    assert torch.equal(data.mix_images(x_sl, 1.0, generator(2)), x_sl)  # lam = 1: pure SL images
    mixed = data.mix_images(x_sl, 0.25, generator(2))
    x_ssl = (mixed - 0.25 * x_sl) / 0.75  # Eq. (2) solved for x_ssl
    pixels = ((x_ssl + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    crops = _windows(data.ssl_images, data.pad)
    for p in pixels:  # each must be a crop of a real SSL image (not 0, not another SL image)
        assert (crops == p).flatten(1).all(1).any(), "a mixed-in image is no crop of an SSL image"
    assert not torch.equal(normalize(torch.zeros_like(pixels)), x_ssl)
