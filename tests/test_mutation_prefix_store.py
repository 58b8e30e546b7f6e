"""trainable.prefix_store, what its first mutation run (`make mutation MODULES=prefix_store`) showed untested:
the key's exact form (earlier searches' stores are read by it), the object-store path of `save`, the size
bound's arithmetic and order, what is logged, and where a prefix is loaded to."""
import hashlib
import json
import logging
import os
import time

import pyarrow.fs
import pytest
import torch

from concurrency_workers import state
from conftest import small_config
from trainable import prefix_store, storage
from trainable.config import SSL, resolve
from trainable.prefix_store import MAGIC, PrefixStore, decode, encode, prefix_key

META = torch.device("meta")  # tells map_location apart on a machine without a GPU


def test_prefix_key__is_a_sorted_json_digest_of_the_ssl_fields_the_optimiser_and_the_device():
    """A warm-started search finds an earlier search's prefixes by this key: its form may not drift."""
    run = resolve(small_config(e_ssl=4, e_sl=4))
    fields = {**run.values(SSL), "ssl_optim": list(run.ssl_optim), "device": "cpu"}
    text = json.dumps(fields, sort_keys=True)
    assert list(fields) != sorted(fields)  # so an unsorted dump would differ
    assert prefix_key(run, "cpu") == hashlib.sha256(text.encode()).hexdigest()[:20]


def test_decode__a_blob_without_the_header_is_refused_as_such_whatever_its_length():
    whole = encode(state(1))
    empty = MAGIC + hashlib.sha256(b"").digest()  # a header whose checksum is right, over nothing
    for blob in (b"", MAGIC[:-1], b"x" * len(whole), empty):
        with pytest.raises(ValueError, match="not a prefix file"):
            decode(blob, torch.device("cpu"))


class Pickled:
    """Not a tensor, a number or a container: torch.load with weights_only refuses to build it."""


def test_decode__loads_weights_only_and_onto_the_given_device():
    assert decode(encode(state(2)), META)["w"].device == META
    with pytest.raises(Exception, match="[Ww]eights only"):
        decode(encode({"epoch": 1, "obj": Pickled()}), torch.device("cpu"))


def test_prefix_store__loads_onto_the_trial_s_device_also_from_an_earlier_search_s_store(tmp_path):
    earlier = PrefixStore(str(tmp_path / "earlier"))
    earlier.save("k", 3, state(3))
    store = PrefixStore(str(tmp_path / "now"), also=[str(tmp_path / "earlier")])
    assert store.load("k", 3, META) is None  # not in its own store
    loaded = store.load_longest("k", 3, META)  # exactly as long as asked: an earlier search's
    assert loaded["epoch"] == 3 and loaded["w"].device == META
    assert store.load_longest("k", 2, META) is None
    assert not (tmp_path / "now").exists()  # reading writes nothing


def test_prefix_store__a_local_store_writes_durably_and_a_new_nested_root_is_made(tmp_path, monkeypatch):
    durable = []
    monkeypatch.setattr(storage, "write_durably", lambda path, blob: durable.append(path) or
                        open(path, "wb").write(blob))
    store = PrefixStore(str(tmp_path / "a" / "b"))
    assert store.local
    store.save("k", 1, state(1))
    store.save("k", 1, state(99))  # stored already: identical by construction, not written again
    assert durable == [str(tmp_path / "a" / "b" / "k" / "epoch_00001.pt")]
    assert store.load("k", 1, torch.device("cpu"))["epoch"] == 1


class ObjectStore:
    """A filesystem as an object store looks to the store (not LocalFileSystem): it records the calls."""

    def __init__(self):
        self.fs, self.calls = pyarrow.fs.LocalFileSystem(), []

    def open_output_stream(self, path):
        self.calls.append(("write", path))
        return self.fs.open_output_stream(path)

    def move(self, src, dest):
        self.calls.append(("move", src, dest))
        return self.fs.move(src, dest)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_prefix_store__on_an_object_store_a_prefix_appears_whole_under_its_name(tmp_path):
    store = PrefixStore(str(tmp_path))
    store.fs, store.local = ObjectStore(), False
    store.save("k", 2, state(2))
    (_, written), (_, src, dest) = store.fs.calls
    assert written == src and os.path.basename(src).startswith(".tmp-") and os.path.dirname(src) == str(tmp_path / "k")
    assert dest == str(tmp_path / "k" / "epoch_00002.pt")
    assert os.listdir(tmp_path / "k") == ["epoch_00002.pt"]
    assert store.load("k", 2, torch.device("cpu"))["epoch"] == 2


def _aged(store, key, epochs, start=1_000):
    """Prefixes of ~400 kB each, their modification times in the order given (oldest first)."""
    for i, e in enumerate(epochs):
        store.save(key, e, {"w": torch.zeros(100_000)})
        os.utime(store._file(key, e), ns=((start + i) * 10**9,) * 2)
    return os.path.getsize(store._file(key, epochs[0]))


def test_prefix_store__evicts_by_age_not_by_name_until_the_store_fits_its_bound_exactly(tmp_path, caplog):
    store = PrefixStore(str(tmp_path), max_bytes=10**9)
    size = _aged(store, "k", [4, 1, 3, 2])  # epoch 4 is the oldest, epoch 2 the newest
    (tmp_path / "notes.txt").write_bytes(b"x" * 10**7)  # not a prefix: never counted, never evicted
    store.max_bytes = 2 * size  # exactly two prefixes fit: two must go, the two oldest
    with caplog.at_level(logging.INFO, logger="trainable.prefix_store"):
        store._evict()
    assert store.epochs("k") == [2, 3] and (tmp_path / "notes.txt").exists()
    evicted = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert evicted == [f"prefix store over {2 * size} bytes: evicted {store._file('k', e)}" for e in (4, 1)]


def test_prefix_store__a_stale_temporary_file_is_removed_with_a_line_that_names_it(tmp_path, caplog):
    store = PrefixStore(str(tmp_path))
    (tmp_path / "k").mkdir()
    stale = tmp_path / "k" / ".tmp-dead"
    stale.write_bytes(b"x")
    old = time.time() - prefix_store.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    with caplog.at_level(logging.INFO, logger="trainable.prefix_store"):
        store._evict()
    assert not stale.exists()
    assert [r.getMessage() for r in caplog.records] == [f"removed a stale temporary prefix file {stale}"]


def test_prefix_store__a_vanished_or_corrupt_prefix_is_logged_with_its_path_and_reason(tmp_path, caplog):
    store = PrefixStore(str(tmp_path))
    store.save("k", 1, state(1))
    store.save("k", 2, state(2))
    os.remove(store._file("k", 2))
    (tmp_path / "k" / "epoch_00001.pt").write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, logger="trainable.prefix_store"):
        assert store.load("k", 2, torch.device("cpu")) is None
        assert store.load("k", 1, torch.device("cpu")) is None
    gone, corrupt = (r.getMessage() for r in caplog.records)
    assert gone.startswith(f"prefix {store._file('k', 2)} is gone (") and "No such file" in gone
    assert gone.endswith("); training those epochs instead")
    assert corrupt == (f"discarding corrupt SSL prefix {store._file('k', 1)}: not a prefix file (no header); "
                       "the trial trains those epochs itself")


def test_prefix_store__only_epoch_files_count_as_prefixes_whatever_their_number_of_digits(tmp_path):
    store = PrefixStore(str(tmp_path))
    for e in (12, 123_456):
        store.save("k", e, state(e))
    for name in ("epoch_00007.tmp", "notes.pt", ".tmp-epoch_00003.pt"):
        (tmp_path / "k" / name).write_bytes(b"x")
    assert store.epochs("k") == [12, 123_456]
