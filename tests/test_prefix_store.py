"""trainable.prefix_store: the key, whole files under concurrency, corrupt files discarded, a bounded size."""
import logging
import multiprocessing as mp
import os
import time

import pytest
import torch

from concurrency_workers import load_loop, save_evict_loop, state, write_loop
from conftest import small_config
from trainable import storage
from trainable.config import resolve
from trainable.prefix_store import PrefixStore, decode, encode, prefix_key


def test_prefix_key__differs_exactly_when_the_ssl_phase_can_differ():
    base = small_config(e_ssl=4, e_sl=4)
    same = [base.replace(alpha=0.9), base.replace(rho=1.0), base.replace(lam=0.1), base.replace(e_sl=9),
            base.replace(method="ssl_sl"), base.replace(sl_lr=1.0)]
    other = [base.replace(seed=1), base.replace(e_ssl=5), base.replace(fraction=0.5), base.replace(ssl_lr=1e-3),
             base.replace(batch_size=64), base.replace(datasets=("mnist",))]
    k = prefix_key(resolve(base), "cpu")
    assert all(prefix_key(resolve(c), "cpu") == k for c in same)
    assert all(prefix_key(resolve(c), "cpu") != k for c in other)
    assert prefix_key(resolve(base), "cuda") != k


@pytest.mark.slow
def test_write_durably__concurrent_writers_and_a_reader_only_ever_see_whole_files(tmp_path):
    path = str(tmp_path / "f")
    storage.write_durably(path, bytes([1]) * 3_000_000)
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=write_loop, args=(path, v, 15)) for v in (2, 3)]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) == 3_000_000 and data.count(data[:1]) == len(data), "a torn or partial file was read"
        seen.add(data[0])
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert seen & {2, 3}, "the reader never saw a writer's file: the test proved nothing"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
def test_prefix_store__concurrent_save_evict_and_load_never_fail(tmp_path):
    ctx = mp.get_context("spawn")
    failures = ctx.Queue()
    procs = [ctx.Process(target=save_evict_loop, args=(str(tmp_path), 40)),
             ctx.Process(target=save_evict_loop, args=(str(tmp_path), 40)),
             ctx.Process(target=load_loop, args=(str(tmp_path), 200, failures)),
             ctx.Process(target=load_loop, args=(str(tmp_path), 200, failures))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not errors, errors[:5]
    assert len(PrefixStore(str(tmp_path)).epochs("k")) <= 4


def test_prefix_store__a_truncated_prefix_is_discarded_with_a_warning_and_the_next_shorter_used(tmp_path, caplog):
    store = PrefixStore(str(tmp_path))
    for e in (1, 2):
        store.save("k", e, state(e))
    path = tmp_path / "k" / "epoch_00002.pt"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # as a crash or a full disk leaves it
    with caplog.at_level(logging.WARNING, logger="trainable.prefix_store"):
        loaded = store.load_longest("k", 5, torch.device("cpu"))
    assert loaded["epoch"] == 1
    assert "discarding corrupt SSL prefix" in caplog.text and not path.exists()
    store.save("k", 2, state(2))  # a later trial stores it again, whole
    assert store.load("k", 2, torch.device("cpu"))["epoch"] == 2


def test_prefix_store__flipped_bytes_fail_the_checksum(tmp_path):
    blob = bytearray(encode(state(3)))
    assert decode(bytes(blob), torch.device("cpu"))["epoch"] == 3
    blob[-100] ^= 0xFF
    try:
        decode(bytes(blob), torch.device("cpu"))
        raise AssertionError("a corrupted payload decoded")
    except ValueError as e:
        assert "checksum mismatch" in str(e)


def test_prefix_store__a_prefix_evicted_between_listing_and_reading_is_just_missing(tmp_path):
    store = PrefixStore(str(tmp_path))
    store.save("k", 1, state(1))
    os.remove(tmp_path / "k" / "epoch_00001.pt")
    assert store.load("k", 1, torch.device("cpu")) is None
    assert store.load_longest("k", 3, torch.device("cpu")) is None


def test_prefix_store__size_bound_evicts_the_oldest_and_longest_picks_at_most_k(tmp_path):
    store = PrefixStore(str(tmp_path), max_bytes=3 * 450_000)
    for e in (1, 2, 3, 4):
        store.save("k", e, {"w": torch.zeros(100_000)})  # ~400 kB each
    assert store.epochs("k") == [2, 3, 4]
    assert store.longest("k", 3) == 3 and store.longest("k", 1) == 0 and store.longest("other", 9) == 0


def test_prefix_store__eviction_order_does_not_depend_on_modification_time_ties(tmp_path):
    store = PrefixStore(str(tmp_path), max_bytes=10**9)
    for e in (3, 1, 2):
        store.save("k", e, {"w": torch.zeros(100_000)})
    for f in (tmp_path / "k").iterdir():
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))  # a coarse clock: every file equally old
    store.max_bytes = 2 * 450_000
    store.save("other", 1, {"w": torch.zeros(10)})  # any save evicts
    assert store.epochs("k") == [3] or store.epochs("k") == [2, 3]
    assert 1 not in store.epochs("k")  # among equally old files the shortest prefix goes first


def test_prefix_store__unfinished_temporary_files_count_and_stale_ones_are_removed(tmp_path):
    store = PrefixStore(str(tmp_path), max_bytes=3 * 450_000)
    (tmp_path / "k").mkdir()
    live, stale = tmp_path / "k" / ".tmp-live", tmp_path / "k" / ".tmp-stale"
    live.write_bytes(b"x" * 900_000)  # a writer still at work: counts against the bound
    stale.write_bytes(b"x" * 900_000)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    store.save("k", 1, {"w": torch.zeros(100_000)})
    store.save("k", 2, {"w": torch.zeros(100_000)})
    assert not stale.exists() and live.exists()
    assert store.epochs("k") == [2]  # 900 kB in flight + 2 x 400 kB is over 1.35 MB: the oldest went
