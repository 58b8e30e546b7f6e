"""A store of SSL-only prefixes shared between trials.

The SSL-only phase depends only on the SSL settings, data, model and seed (never on alpha, rho,
lam or e_sl), so trials that agree on those train identical prefixes. A trial that needs k
SSL-only epochs starts from the longest stored prefix of at most k epochs and stores what it
computes. Files are written to a temporary name and renamed, so two trials storing the same
prefix at once leave one whole file (the same bytes either way) and a reader never sees half a
file. The store lives under the search's storage path, on pyarrow's filesystems (local,
s3://, gs://), so every node of a cluster sees it; its size is bounded by evicting the oldest
files.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid

import torch

from trainable.config import MixConfig, model_name, optim_settings

log = logging.getLogger(__name__)

# Everything the SSL-only phase depends on (the SSL optimiser via optim_settings, see prefix_key).
_KEY_FIELDS = ("datasets", "ssl_dataset", "fraction", "val_frac", "seed", "e_ssl", "batch_size", "mask_ratio",
               "amp", "compile", "fused_adamw", "sdpa")


def prefix_key(cfg: MixConfig, device_type: str) -> str:
    ssl = optim_settings(cfg.replace(method="ssl_sl"), "ssl")
    d = {k: getattr(cfg, k) for k in _KEY_FIELDS}
    d.update(model=model_name(cfg), ssl_optim=list(ssl), device=device_type)
    if cfg.method == "sl":
        d["e_ssl"] = 0
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:20]


class PrefixStore:
    def __init__(self, root: str, max_bytes: int = 20 * 2**30):
        import pyarrow.fs
        if "://" in root:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), os.path.abspath(root)
        self.max_bytes = max_bytes

    def _dir(self, key: str) -> str:
        return f"{self.root}/{key}"

    def epochs(self, key: str) -> list[int]:
        import pyarrow.fs
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._dir(key), allow_not_found=True))
        return sorted(int(i.base_name[6:-3]) for i in infos
                      if i.base_name.startswith("epoch_") and i.base_name.endswith(".pt"))

    def longest(self, key: str, at_most: int) -> int:
        """The longest stored prefix of at most `at_most` epochs; 0 when none."""
        return max([e for e in self.epochs(key) if e <= at_most], default=0)

    def load(self, key: str, epoch: int, device: torch.device) -> dict:
        with self.fs.open_input_file(f"{self._dir(key)}/epoch_{epoch:05d}.pt") as f:
            return torch.load(io.BytesIO(f.read()), weights_only=True, map_location=device)

    def save(self, key: str, epoch: int, state: dict) -> None:
        if epoch in self.epochs(key):
            return  # another trial stored the same prefix: identical by construction
        buf = io.BytesIO()
        torch.save(state, buf)
        self.fs.create_dir(self._dir(key), recursive=True)
        final = f"{self._dir(key)}/epoch_{epoch:05d}.pt"
        tmp = f"{self._dir(key)}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        self.fs.move(tmp, final)  # atomic rename on local and POSIX filesystems; a plain copy on object stores
        self._evict()

    def _evict(self) -> None:
        """Drop the oldest prefixes while the store is above its size bound."""
        import pyarrow.fs
        files = [i for i in self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, recursive=True,
                                                                          allow_not_found=True))
                 if i.type == pyarrow.fs.FileType.File and i.base_name.startswith("epoch_")]
        total = sum(i.size for i in files)
        for i in sorted(files, key=lambda i: i.mtime_ns or 0):
            if total <= self.max_bytes:
                break
            self.fs.delete_file(i.path)
            total -= i.size
            log.info("prefix store over %d bytes: evicted %s", self.max_bytes, i.path)
