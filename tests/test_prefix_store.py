"""trainable.prefix_store: the key, whole files under concurrency, corrupt files discarded, a bounded size."""
import logging
import multiprocessing as mp
import os
import time

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from concurrency_workers import load_loop, save_evict_loop, state, write_loop
from conftest import small_config
from trainable import storage
from trainable.config import SSL, field_names, fields_with, resolve
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
    # An SSL cosine that ends with the SSL-only phase makes that phase depend on rho: shared only at equal lengths.
    ends = base.replace(ssl_cosine="ssl_only", e_ssl=10, e_sl=10)
    assert prefix_key(resolve(ends.replace(rho=0.2)), "cpu") != prefix_key(resolve(ends), "cpu")
    assert prefix_key(resolve(ends.replace(rho=0.55)), "cpu") == prefix_key(resolve(ends), "cpu")  # e_mix 5 both
    assert prefix_key(resolve(base.replace(e_ssl=10, e_sl=10, rho=0.2)), "cpu") == \
        prefix_key(resolve(base.replace(e_ssl=10, e_sl=10)), "cpu")  # today's: one prefix for every rho


# Valid values for every config field, by whether the SSL-only phase depends on it. A new field fails
# test_prefix_key__every_field_has_values_to_try until it is added here.
_UNIT = st.floats(0, 1)
_MAYBE_LR = st.none() | st.floats(0, 1)
NOT_SSL_VALUES = {  # TRAIN and RUNTIME fields
    "method": st.sampled_from(["ssl_sl", "mixtraining"]),  # not "sl": it trains no SSL phase to share
    "data_dir": st.sampled_from(["data", "./data", "elsewhere"]), "download": st.booleans(),
    "device": st.sampled_from(["cpu", "auto"]),  # the key takes the device kind apart (prefix_key's argument)
    "e_sl": st.integers(1, 50), "alpha": _UNIT, "rho": _UNIT, "lam": _UNIT,
    "mix_step": st.sampled_from(["merged", "separate"]), "mix_optim": st.sampled_from(["sl", "ssl"]),
    "sl_lr": _MAYBE_LR, "sl_beta2": st.none() | st.floats(0, 0.999), "sl_weight_decay": _MAYBE_LR, "sl_warmup": _UNIT,
}
SSL_VALUES = {
    "datasets": st.sampled_from([("mnist",), ("digits", "mnist")]), "ssl_dataset": st.sampled_from(["mnist"]),
    "fraction": st.floats(0.01, 0.99), "val_frac": st.floats(0, 0.5), "model": st.sampled_from(["auto", "tiny"]),
    "e_ssl": st.integers(5, 50), "mask_ratio": st.floats(0.05, 0.95), "batch_size": st.integers(1, 127),
    "ssl_lr": st.floats(0, 1), "ssl_beta2": st.floats(0, 0.999), "ssl_weight_decay": st.floats(0, 1),
    "ssl_warmup": st.floats(0, 0.19), "seed": st.integers(1, 2**31), "amp": st.sampled_from(["on", "off"]),
    "compile": st.sampled_from(["on", "off"]), "fused_adamw": st.sampled_from(["on", "off"]),
    "sdpa": st.just("off"), "deterministic": st.just(True), "ssl_cosine": st.sampled_from(["e_ssl", "ssl_only"]),
}
BASE = small_config(e_ssl=4, e_sl=4)
PROPERTY = settings(max_examples=60, deadline=None)


def test_prefix_key__every_field_has_values_to_try():
    assert set(SSL_VALUES) == set(fields_with(SSL))
    assert set(NOT_SSL_VALUES) == set(field_names()) - set(fields_with(SSL))


@PROPERTY
@given(changes=st.fixed_dictionaries({}, optional=NOT_SSL_VALUES))
def test_prefix_key__equal_for_configs_that_differ_only_in_train_and_runtime_fields(changes):
    assert prefix_key(resolve(BASE.replace(**changes)), "cpu") == prefix_key(resolve(BASE), "cpu")


@PROPERTY
@given(field=st.sampled_from(sorted(SSL_VALUES)), data=st.data(),
       others=st.fixed_dictionaries({}, optional=NOT_SSL_VALUES))
def test_prefix_key__differs_when_an_ssl_field_differs(field, data, others):
    assume(not (field == "ssl_cosine" and others.get("mix_optim") == "ssl"))  # a combination MixConfig refuses
    value = data.draw(SSL_VALUES[field].filter(lambda v: v != getattr(BASE, field)))
    changed = BASE.replace(**others, **{field: value})
    assert prefix_key(resolve(changed), "cpu") != prefix_key(resolve(BASE.replace(**others)), "cpu")


@pytest.mark.slow
def test_write_durably__concurrent_writers_and_a_reader_only_ever_see_whole_files(tmp_path):
    path = str(tmp_path / "f")
    storage.write_durably(path, bytes([1]) * 3_000_000)
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=write_loop, args=(path, v, 15)) for v in (2, 3)]
    seen = set()
    try:
        for w in writers:
            w.start()
        while any(w.is_alive() for w in writers):
            with open(path, "rb") as f:
                data = f.read()
            assert len(data) == 3_000_000 and data.count(data[:1]) == len(data), "a torn or partial file was read"
            seen.add(data[0])
        for w in writers:
            w.join(timeout=120)
            assert w.exitcode == 0
    finally:
        for w in writers:  # whatever failed, no writer outlives the test
            w.kill()
    assert seen & {2, 3}, "the reader never saw a writer's file: the test proved nothing"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def _load_checked(store):
    """The longest prefix of "k" (None when there is none), after checking its contents match its epoch."""
    s = store.load_longest("k", 10_000, torch.device("cpu"))
    assert s is None or torch.equal(s["w"], state(s["epoch"])["w"]), "a prefix loaded with the wrong contents"
    return s


@pytest.mark.slow
def test_prefix_store__concurrent_save_evict_and_load_never_fail(tmp_path):
    ctx = mp.get_context("spawn")
    failures = ctx.Queue()
    savers = [ctx.Process(target=save_evict_loop, args=(str(tmp_path), 40)) for _ in range(2)]
    loaders = [ctx.Process(target=load_loop, args=(str(tmp_path), 200, failures)) for _ in range(2)]
    store, loaded = PrefixStore(str(tmp_path)), set()
    try:
        for p in savers + loaders:
            p.start()
        while any(p.is_alive() for p in savers):  # this process loads too, for as long as the savers run
            s = _load_checked(store)
            if s is not None:
                loaded.add(s["epoch"])
        for p in savers + loaders:
            p.join(timeout=240)
            assert p.exitcode == 0
    finally:
        for p in savers + loaders:  # whatever failed, no worker outlives the test
            p.kill()
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not errors, errors[:5]
    assert loaded, "no load found a prefix while the savers ran"
    assert len(store.epochs("k")) <= 4
    assert _load_checked(store)["epoch"] == 40  # what is left loads, the longest first


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


class _ListingRaces:
    """A filesystem whose listing raises as pyarrow's does when a folder appears while it is listed (seen in CI
    with allow_not_found=True); everything else goes to the real one."""

    def __init__(self, fs):
        self.fs = fs

    def get_file_info(self, selector):
        raise FileNotFoundError(f"[Errno 2] Cannot list directory '{selector.base_dir}'")

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_prefix_store__a_folder_appearing_while_listed_is_an_empty_store_not_a_failure(tmp_path):
    store = PrefixStore(str(tmp_path))
    store.fs = _ListingRaces(store.fs)
    assert store.load_longest("k", 3, torch.device("cpu")) is None
    store.save("k", 1, state(1))  # lists before saving and while evicting
    assert (tmp_path / "k" / "epoch_00001.pt").exists()


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
