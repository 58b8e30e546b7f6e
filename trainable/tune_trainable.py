"""Ray Tune class-API Trainable around the engine: one `step()` is one engine epoch.

A trial's config (over the search's shared `base`) is a dict of `MixConfig` fields plus the
searcher's bookkeeping keys, which start with an underscore (ignored by the engine). What the
search tells every trial besides the config (threads, GPU share, the SSL-prefix store, the step
costs) is one typed `TrialSettings`. Checkpoints hold the engine's full state and load with
`torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray import tune

from trainable.config import DATA, MixConfig, Resolved, resolve
from trainable.cost import calibrate
from trainable.data import TrainingData
from trainable.datasets import ImageSet
from trainable import faults
from trainable.engine import Engine, load_training_data
from trainable.prefix_store import PrefixStore, prefix_key
from trainable.sysmetrics import SystemMetrics

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "engine.pt"
RECONSTRUCTION_FILE = "reconstruction.pt"
PBT_MUTABLE = ("alpha", "lam")  # the fields population-based training may change during a trial
CPU_DATA_CACHE_BYTES = 4 * 2**30
GPU_DATA_CACHE_SHARE = 0.25  # of the GPU memory this trial's share (--gpus-per-trial) of the device holds
PREFIX_STORE_BYTES = 20 * 2**30  # the SSL-prefix store's default bound (--prefix-store-gb 20)


@dataclass(frozen=True)
class TrialSettings:
    """What a search tells each of its trials besides the config: the same for every trial of the search."""
    threads: int = 1  # torch intra-op threads (the trial's CPUs)
    gpu_share: float = 0.0  # the trial's share of one GPU (--gpus-per-trial), for the data cache's bound
    epoch_scale: float = 1.0  # --epoch-scale, recorded with the trial's results
    pbt: bool = False  # checkpoints may come from a population member with another alpha / lam
    system_metrics: bool = False  # CPU, memory and GPU use per epoch
    prefix_store: str | None = None  # the SSL-prefix store's folder (None: no sharing)
    prefix_max_bytes: int = PREFIX_STORE_BYTES
    prefix_also: tuple[str, ...] = ()  # stores read but never written (an earlier search's, --warm-start)
    step_seconds: dict[str, float] | None = None  # seconds per image of each step kind, measured alone
    dataset_digests: dict[str, dict] | None = field(default=None, compare=False)  # for MLflow's dataset inputs


class DataCache:
    """Training data by everything that determines it (the DATA-role fields), so a reused actor
    (and the sibling trials it runs) splits each dataset and moves it to its device once per worker
    process. Bounded in bytes, least recently used first out; an evicted entry is rebuilt when
    needed again. The decoded datasets themselves come from the search's driver through Ray's
    object store (`loaded`)."""

    def __init__(self):
        self.entries: OrderedDict[str, TrainingData] = OrderedDict()

    def get(self, run: Resolved, loaded: dict[str, ImageSet] | None, max_bytes: int) -> TrainingData:
        key = json.dumps(run.values(DATA), sort_keys=True, default=list)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        self.entries[key] = data = load_training_data(run, loaded)
        while len(self.entries) > 1 and sum(d.nbytes for d in self.entries.values()) > max_bytes:
            self.entries.popitem(last=False)  # never the entry just made, however large
        return data


_DATA_CACHE = DataCache()


def data_cache_bytes(device: torch.device, gpu_share: float) -> int:
    if device.type != "cuda":
        return CPU_DATA_CACHE_BYTES
    total = torch.cuda.get_device_properties(device).total_memory
    return int(GPU_DATA_CACHE_SHARE * total * min(1.0, gpu_share or 1.0))


def assigned_gpu(told: float) -> float:
    """This trial's share of a GPU as Ray assigned it (what its placement group holds); `told` (--gpus-per-trial)
    outside a Ray worker, e.g. a Trainable made by hand."""
    if ray.is_initialized():
        try:
            return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
        except Exception:  # noqa: BLE001 - the driver process: Ray assigns resources to workers only
            pass
    return told


def measure_step_seconds(base: dict[str, Any], loaded: dict[str, ImageSet] | None = None,
                         threads: int = 1) -> dict[str, float]:
    """Seconds per image of each step kind for the search's model and data, on this worker's device, with
    nothing else running (the search runs it as a Ray task on one trial's resources before any trial)."""
    torch.set_num_threads(threads)
    run = resolve(MixConfig.from_trial({**base, "method": "mixtraining"}))
    return calibrate(Engine(run, data=load_training_data(run, loaded)))


class MixTrainable(tune.Trainable):
    """base: the config fields every trial of a search shares (`tune.with_parameters`), so a
    trial's own config holds only what varies and Ray's progress output stays readable.
    loaded: datasets by name, decoded once by the driver and passed the same way, so trial
    processes map them from the node's object store instead of reading them from disk.
    settings: what the search tells every trial besides the config."""

    def setup(self, config: dict[str, Any], base: dict[str, Any] | None = None,
              loaded: dict[str, ImageSet] | None = None, settings: TrialSettings | None = None) -> None:
        settings = settings or TrialSettings()
        self.full = {**(base or {}), **config}
        torch.set_num_threads(settings.threads)
        self.run = resolve(MixConfig.from_trial(self.full))
        self.mutable = PBT_MUTABLE if settings.pbt else ()
        self.system = SystemMetrics(self.run.device) if settings.system_metrics else None
        self.gpu_share = assigned_gpu(settings.gpu_share)
        budget = data_cache_bytes(self.run.device, self.gpu_share)
        self.engine = Engine(self.run, data=_DATA_CACHE.get(self.run, loaded, budget),
                             step_seconds=settings.step_seconds)
        # SSL-prefix sharing (switched on by the search with a prefix store): start from the
        # longest stored prefix this trial's SSL-only phase can use.
        self.store = None
        if settings.prefix_store and self.run.plan.ssl > 0:
            self.store = PrefixStore(settings.prefix_store, settings.prefix_max_bytes, also=settings.prefix_also)
            self.prefix_key = prefix_key(self.run, self.run.device.type)
            self.prefix_every = max(1, self.run.cfg.e_ssl // 4)
            state = self.store.load_longest(self.prefix_key, self.run.plan.ssl, self.run.device)
            if state is not None:
                self.engine.load_ssl_prefix(state)

    def step(self) -> dict[str, Any]:
        faults.check(self.full, self.engine.epoch + 1)  # a test's injected failure (MIXTUNE_FAULT_FILE)
        m = self.engine.run_epoch()
        e, p = self.engine.epoch, self.run.plan
        if self.store and m["phase"] == "ssl" and (e % self.prefix_every == 0 or e == p.ssl):
            # Store at a stride (the SSL-only ends of other rho values) and at this trial's own end.
            self.store.save(self.prefix_key, e, self.engine.state_dict())
        cfg = self.run.cfg
        m["alpha"], m["lam"] = cfg.alpha, cfg.lam  # metrics too: PBT changes them during a trial
        m["gpu_share"] = self.gpu_share  # of one GPU, as Ray assigned it
        m["ssl_epochs_reused"] = self.engine.prefix_epochs
        m["ssl_time_reused_s"] = self.engine.prefix_time_s
        # Tune wants the metric in every result. Before the classifier has trained there is no
        # accuracy: NaN, never 0, and the phase-aware scheduler ignores these epochs anyway.
        m.setdefault("val_acc", float("nan"))
        # Tune also sets `done` when a scheduler stops a trial early; `completed` means the plan ran to its end.
        m["completed"] = m["done"]
        if self.system is not None:
            m.update(self.system.sample())
        if m["done"]:
            # The final report carries the test accuracy for the comparison table; the search
            # itself only ever sees validation accuracy.
            m.update({f"test_{k}": v for k, v in self.engine.evaluate("test").items()})
        return m

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        tmp = os.path.join(checkpoint_dir, CHECKPOINT_FILE + ".tmp")
        torch.save(self.engine.state_dict(), tmp)
        os.replace(tmp, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
        p = self.run.plan
        if self.engine.done and p.ssl + p.mix > 0:
            # Fig. 4 material for the tracker: original, masked and reconstructed test images.
            orig, masked, recon = self.engine.reconstruct(8)
            torch.save({"original": orig, "masked": masked, "reconstructed": recon},
                       os.path.join(checkpoint_dir, RECONSTRUCTION_FILE))

    def load_checkpoint(self, checkpoint: str) -> None:
        state = torch.load(os.path.join(checkpoint, CHECKPOINT_FILE), weights_only=True,
                           map_location=self.run.device)
        # Under PBT a checkpoint may come from a population member with another alpha / lam.
        self.engine.load_state_dict(state, mutable=self.mutable)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # A reused actor starts the new trial from scratch; the data cache makes this cheap.
        self.setup(new_config)  # with_parameters wraps setup and passes `base`, `loaded` and `settings` again
        self.config = new_config
        return True
