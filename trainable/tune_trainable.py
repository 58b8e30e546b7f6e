"""Ray Tune class-API Trainable around the engine: one `step()` is one engine epoch.

The trial config (over the search's shared `base`) is a dict of `MixConfig` fields plus
bookkeeping keys that start with an underscore (ignored by the engine). Checkpoints hold the
engine's full state and load with
`torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from ray import tune

from trainable.config import MixConfig, model_name
from trainable.datasets import ImageSet
from trainable.engine import Engine, load_training_data, resolve_device
from trainable.models import MODEL_CONFIGS
from trainable.prefix_store import PrefixStore, prefix_key

CHECKPOINT_FILE = "engine.pt"
RECONSTRUCTION_FILE = "reconstruction.pt"
PBT_MUTABLE = ("alpha", "lam")  # the fields population-based training may change during a trial

# Training data by everything that determines it, so a reused actor (and the sibling trials it
# runs) splits each dataset and moves it to its device once per worker process. The decoded
# datasets themselves come from the search's driver through Ray's object store (`loaded`).
_DATA_CACHE: dict[tuple, Any] = {}
_DATA_CACHE_MAX = 4


def engine_config(config: dict[str, Any]) -> MixConfig:
    return MixConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})


def _data_key(cfg: MixConfig) -> tuple:
    return (cfg.datasets, cfg.ssl_dataset, os.path.abspath(cfg.data_dir), cfg.fraction, cfg.val_frac,
            cfg.seed, MODEL_CONFIGS[model_name(cfg)].img_size, str(resolve_device(cfg.device)))


def shared_training_data(cfg: MixConfig, loaded: dict[str, ImageSet] | None = None):
    key = _data_key(cfg)
    if key not in _DATA_CACHE:
        while len(_DATA_CACHE) >= _DATA_CACHE_MAX:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = load_training_data(cfg, resolve_device(cfg.device), loaded)
    return _DATA_CACHE[key]


class MixTrainable(tune.Trainable):
    """base: the config fields every trial of a search shares (`tune.with_parameters`), so a
    trial's own config holds only what varies and Ray's progress output stays readable.
    loaded: datasets by name, decoded once by the driver and passed the same way, so trial
    processes map them from the node's object store instead of reading them from disk."""

    def setup(self, config: dict[str, Any], base: dict[str, Any] | None = None,
              loaded: dict[str, ImageSet] | None = None) -> None:
        full = {**(base or {}), **config}
        if full.get("_threads"):
            torch.set_num_threads(int(full["_threads"]))
        self.cfg = engine_config(full)
        self.mutable = PBT_MUTABLE if full.get("_pbt") else ()
        self.engine = Engine(self.cfg, data=shared_training_data(self.cfg, loaded))
        # SSL-prefix sharing (switched on by the search with `_prefix_store`): start from the
        # longest stored prefix this trial's SSL-only phase can use.
        self.store = None
        if full.get("_prefix_store") and self.engine.plan.ssl > 0:
            self.store = PrefixStore(full["_prefix_store"], int(full.get("_prefix_max_bytes", 20 * 2**30)))
            self.prefix_key = prefix_key(self.cfg, self.engine.device.type)
            self.prefix_every = max(1, self.cfg.e_ssl // 4)
            k = self.store.longest(self.prefix_key, self.engine.plan.ssl)
            if k:
                self.engine.load_ssl_prefix(self.store.load(self.prefix_key, k, self.engine.device))

    def step(self) -> dict[str, Any]:
        m = self.engine.run_epoch()
        e, p = self.engine.epoch, self.engine.plan
        if self.store and m["phase"] == "ssl" and (e % self.prefix_every == 0 or e == p.ssl):
            # Store at a stride (the SSL-only ends of other rho values) and at this trial's own end.
            self.store.save(self.prefix_key, e, self.engine.state_dict())
        m["alpha"], m["lam"] = self.cfg.alpha, self.cfg.lam  # metrics too: PBT changes them during a trial
        m["ssl_epochs_reused"] = self.engine.prefix_epochs
        m["ssl_time_reused_s"] = self.engine.prefix_time_s
        # Tune wants the metric in every result. Before the classifier has trained there is no
        # accuracy: NaN, never 0, and the phase-aware scheduler ignores these epochs anyway.
        m.setdefault("val_acc", float("nan"))
        # Tune also sets `done` when a scheduler stops a trial early; `completed` means the plan ran to its end.
        m["completed"] = m["done"]
        if m["done"]:
            # The final report carries the test accuracy for the comparison table; the search
            # itself only ever sees validation accuracy.
            m.update({f"test_{k}": v for k, v in self.engine.evaluate("test").items()})
        return m

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        tmp = os.path.join(checkpoint_dir, CHECKPOINT_FILE + ".tmp")
        torch.save(self.engine.state_dict(), tmp)
        os.replace(tmp, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
        p = self.engine.plan
        if self.engine.done and p.ssl + p.mix > 0:
            # Fig. 4 material for the tracker: original, masked and reconstructed test images.
            orig, masked, recon = self.engine.reconstruct(8)
            torch.save({"original": orig, "masked": masked, "reconstructed": recon},
                       os.path.join(checkpoint_dir, RECONSTRUCTION_FILE))

    def load_checkpoint(self, checkpoint: str) -> None:
        state = torch.load(os.path.join(checkpoint, CHECKPOINT_FILE), weights_only=True,
                           map_location=self.engine.device)
        # Under PBT a checkpoint may come from a population member with another alpha / lam.
        self.engine.load_state_dict(state, mutable=self.mutable)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # A reused actor starts the new trial from scratch; the data cache makes this cheap.
        self.setup(new_config)  # with_parameters wraps setup and passes `base` and `loaded` again
        self.config = new_config
        return True
