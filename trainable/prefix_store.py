"""A store of SSL-only prefixes shared between trials.

The SSL-only phase depends only on the fields with the SSL role (`trainable.config`), never on
alpha, rho, lam or e_sl, so trials that agree on those train identical prefixes. A trial that
needs k SSL-only epochs starts from the longest stored prefix of at most k epochs and stores
what it computes.

Nothing in the store can fail a trial:
- each file carries a SHA-256 of its contents, checked on load; a torn, truncated or otherwise
  unreadable file is deleted with a warning and the trial trains those epochs itself (a later
  trial stores them again);
- files are written to a temporary name, flushed to disk and renamed, so a reader never sees half
  a file and two writers of one prefix leave one whole file;
- a file evicted or replaced between listing and reading is just not there: the next shorter
  prefix is tried.
The store lives under the search's storage path (local, s3://, gs://), so every node of a
cluster sees it; its size, unfinished temporary files included, is bounded by evicting the
oldest files, and temporary files older than an hour (a writer that died) are removed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid

import pyarrow.fs
import torch

from trainable import storage
from trainable.config import SSL, Resolved

log = logging.getLogger(__name__)

MAGIC = b"mixtune-prefix-v1\n"  # then the SHA-256 of the payload (32 bytes), then torch.save's bytes
STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died


def prefix_key(run: Resolved, device_type: str) -> str:
    """Everything the SSL-only phase depends on: the SSL-role fields, the SSL optimiser derived from
    them, and the kind of device (kernels differ between CPU and CUDA)."""
    d = {**run.values(SSL), "ssl_optim": list(run.ssl_optim), "device": device_type}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:20]


def encode(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(blob: bytes, device: torch.device) -> dict:
    """The state in a stored file; ValueError when the file is not whole."""
    head = len(MAGIC) + 32
    if len(blob) <= head or not blob.startswith(MAGIC):  # an empty payload is no state either
        raise ValueError("not a prefix file (no header)")
    if hashlib.sha256(blob[head:]).digest() != blob[len(MAGIC):head]:
        raise ValueError(f"checksum mismatch ({len(blob)} bytes: torn or truncated)")
    return torch.load(io.BytesIO(blob[head:]), weights_only=True, map_location=device)


class PrefixStore:
    """root: where this search stores prefixes; also: stores of earlier searches, read but never written."""

    def __init__(self, root: str, max_bytes: int = 20 * 2**30, also: list[str] | tuple = ()):
        self.fs, self.root = storage.resolve(root)
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)
        self.max_bytes = max_bytes
        self.also = [PrefixStore(r, max_bytes) for r in also]

    def _dir(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _file(self, key: str, epoch: int) -> str:
        return f"{self._dir(key)}/epoch_{epoch:05d}.pt"

    def _list(self, path: str, recursive: bool = False) -> list:
        """The entries under `path`; none when it does not exist. allow_not_found alone is not enough:
        pyarrow can still raise when the folder appears or vanishes while it lists it."""
        try:
            return self.fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=recursive, allow_not_found=True))
        except FileNotFoundError:
            return []

    def epochs(self, key: str) -> list[int]:
        infos = self._list(self._dir(key))
        return sorted(int(i.base_name[6:-3]) for i in infos
                      if i.base_name.startswith("epoch_") and i.base_name.endswith(".pt"))

    def longest(self, key: str, at_most: int) -> int:
        """The longest stored prefix of at most `at_most` epochs; 0 when none."""
        return max([e for e in self.epochs(key) if e <= at_most], default=0)

    def load(self, key: str, epoch: int, device: torch.device) -> dict | None:
        """The stored state after `epoch` SSL-only epochs; None when it is gone or was corrupt (then deleted)."""
        path = self._file(key, epoch)
        try:
            with self.fs.open_input_file(path) as f:
                blob = f.read()
        except (FileNotFoundError, OSError) as e:
            log.info("prefix %s is gone (%s); training those epochs instead", path, e)
            return None
        try:
            return decode(blob, device)
        except Exception as e:  # ValueError from the header, or torch.load on a bad payload
            log.warning("discarding corrupt SSL prefix %s: %s; the trial trains those epochs itself", path, e)
            self._delete(path)
            return None

    def load_longest(self, key: str, at_most: int, device: torch.device) -> dict | None:
        """The longest whole prefix of at most `at_most` epochs, here or in an earlier search's store, skipping
        any that vanish or are corrupt."""
        found = [(e, store) for store in (self, *self.also) for e in store.epochs(key) if e <= at_most]
        for epoch, store in sorted(found, key=lambda x: -x[0]):
            state = store.load(key, epoch, device)
            if state is not None:
                return state
        return None

    def save(self, key: str, epoch: int, state: dict) -> None:
        if epoch in self.epochs(key):
            return  # another trial stored the same prefix: identical by construction (and checked on load)
        blob = encode(state)
        self.fs.create_dir(self._dir(key), recursive=True)
        if self.local:
            storage.write_durably(self._file(key, epoch), blob)
        else:  # an object store's upload appears whole or not at all
            tmp = f"{self._dir(key)}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as f:
                f.write(blob)
            self.fs.move(tmp, self._file(key, epoch))
        self._evict()

    def _delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass  # another trial deleted it first

    def _evict(self) -> None:
        """Drop stale temporary files, then the oldest prefixes while the store is above its bound.

        Unfinished temporary files count against the bound. Ties in modification time (coarse
        clocks) go to the shorter prefix of a key, so the order never depends on the filesystem.
        """
        files = [i for i in self._list(self.root, recursive=True) if i.type == pyarrow.fs.FileType.File]
        now_ns = time.time_ns()
        stale = {i.path for i in files if i.base_name.startswith(".tmp-")
                 and now_ns - (i.mtime_ns or now_ns) > STALE_TMP_S * 1e9}
        for path in stale:
            self._delete(path)
            log.info("removed a stale temporary prefix file %s", path)
        files = [i for i in files if i.path not in stale and i.base_name.startswith(("epoch_", ".tmp-"))]
        total = sum(i.size for i in files)
        for i in sorted((i for i in files if i.base_name.startswith("epoch_")),
                        key=lambda i: (i.mtime_ns or 0, i.path)):
            if total <= self.max_bytes:
                break
            self._delete(i.path)
            total -= i.size
            log.info("prefix store over %d bytes: evicted %s", self.max_bytes, i.path)
