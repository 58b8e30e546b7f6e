"""A test hook: faults injected where the tests name them, to show that a failure loses no work.

Off unless the environment variable MIXTUNE_FAULT_FILE names a file *and* that file exists: then its JSON
object (e.g. `{"method": "ssl_sl", "epoch": 3, "seed": 0}`) says where to fail. Every key but the reserved
ones must equal the trial's config value.
- `check(config, epoch)`, called by the Trainable at the start of each epoch (1-based), raises
  `InjectedFault` in a matching trial at `"epoch"` (any epoch if absent), as a crash in training would.
- `driver_event(name, config)`, called by the driver's pruning callback, SIGKILLs the driver itself right
  after the event `"kill_driver_on"` (e.g. "trial_complete") of a matching trial; the file is removed first,
  so a resumed driver is not killed again.

The variable must be set before Ray starts its workers, which inherit it (tests/conftest.py's `ray_cluster`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any, Mapping

ENV = "MIXTUNE_FAULT_FILE"
RESERVED = ("epoch", "kill_driver_on")

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The failure a test asked for through MIXTUNE_FAULT_FILE."""


def _spec() -> dict[str, Any] | None:
    """The fault file's JSON object; None when the variable is unset or the file is not there."""
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"{ENV} file {path} must hold a JSON object, got {type(spec).__name__}")
    return spec


def _matches(spec: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    return all(config.get(k) == v for k, v in spec.items() if k not in RESERVED)


def check(config: Mapping[str, Any], epoch: int) -> None:
    """Raise InjectedFault when the fault file names this trial and `epoch` (the one about to be trained)."""
    spec = _spec()
    if spec is None or "kill_driver_on" in spec or not _matches(spec, config):
        return
    if spec.get("epoch", epoch) == epoch:
        raise InjectedFault(f"fault injected by {os.environ[ENV]} in epoch {epoch}: {spec}")


def driver_event(name: str, config: Mapping[str, Any]) -> None:
    """SIGKILL this process when the fault file asks for it at event `name` of a trial like `config`."""
    spec = _spec()
    if spec is None or spec.get("kill_driver_on") != name or not _matches(spec, config):
        return
    os.unlink(os.environ[ENV])  # one kill: the resumed driver must run on
    log.warning("fault injected by %s: killing the driver after %s", os.environ[ENV], name)
    os.kill(os.getpid(), signal.SIGKILL)
