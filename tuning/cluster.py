"""What the Ray cluster a search joined can run: its alive nodes now and the node types its autoscaler may add.

Ray 2.60 does not tell drivers which node types an autoscaler can launch (the GCS cluster config it
would publish them in stays empty), so they are read from the autoscaling config the head was started
with: the command line of the cluster's autoscaler monitor names it, and the driver runs on the head
(`ray job submit`). Without a monitor to ask, the cluster launcher's path is tried.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml

log = logging.getLogger(__name__)


class NoNode(Exception):
    """No node the cluster has or may get can hold one trial; the message says what to change."""

LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the config on the head

# What `decide` concludes about one trial's request.
FITS = "fits"  # an alive node can hold a trial now
AUTOSCALE = "autoscale"  # none can, but the autoscaler can add a node type that can
WAIT = "wait"  # none can and no node type can: wait for nodes started by hand (--wait-for-nodes)
IMPOSSIBLE = "impossible"  # nothing this cluster has or may get can hold a trial


@dataclass(frozen=True)
class NodeType:
    """A worker node type an autoscaler may launch."""
    name: str
    resources: dict  # e.g. {"CPU": 4, "GPU": 1}, as the config states them
    max_workers: float

    def describe(self) -> str:
        return f"{self.name} node ({resources_text(self.resources)})"


def resources_text(resources: dict) -> str:
    """The CPUs and GPUs of a node, as the search's messages name them: '4 CPU, 1 GPU'."""
    return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def can_hold(resources: dict, cpus: float, gpus: float) -> bool:
    return resources.get("CPU", 0) >= cpus and resources.get("GPU", 0) >= gpus


def node_types(config: dict) -> list[NodeType]:
    """The worker types an autoscaling config lets the autoscaler launch.

    The head type is left out (it is never launched), and so is any type whose max_workers, or the
    cluster's, is 0. A type's max_workers defaults to the cluster's, as Ray's autoscaler does.
    """
    cap = config.get("max_workers", math.inf)
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        limit = min(spec.get("max_workers", cap), cap)
        if name != config.get("head_node_type") and limit > 0:
            types.append(NodeType(name, dict(spec.get("resources") or {}), limit))
    return types


def decide(cpus: float, gpus: float, alive: list[dict], types: list[NodeType],
           wait_s: float = 0) -> tuple[str, list[NodeType]]:
    """What the search should do about a trial needing `cpus` and `gpus`, and the node types that can hold it.

    alive: the resources of each alive node; types: what the autoscaler may add (none without one);
    wait_s: how long the user lets the search wait for nodes they start themselves.
    """
    if any(can_hold(r, cpus, gpus) for r in alive):
        return FITS, []
    fitting = [t for t in types if can_hold(t.resources, cpus, gpus)]
    if fitting:
        return AUTOSCALE, fitting
    return (WAIT if wait_s > 0 else IMPOSSIBLE), []


# --- the autoscaling config of the cluster this process joined ------------------------------------

def command_lines(proc: Path = Path("/proc")) -> dict[int, list[str]]:
    """The command line of each process on this machine, by pid (psutil is not a dependency). Processes that
    end meanwhile, or that this user may not read, are left out; an ended one not yet reaped has an empty one."""
    found = {}
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                found[int(d.name)] = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
    return found


def _monitors(proc: Path) -> list[tuple[list[str], Path]]:
    """The command line and working folder of every Ray autoscaler monitor process on this machine."""
    return [(argv, proc / str(pid) / "cwd") for pid, argv in command_lines(proc).items()
            if any(Path(a).name == "monitor.py" and "autoscaler" in a for a in argv)]


def _flag(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def _port(address: str | None) -> str | None:
    return address.rsplit(":", 1)[-1] if address and ":" in address else None


def autoscaling_config_path(gcs_address: str, proc: str | Path = "/proc",
                            launcher_config: str = LAUNCHER_CONFIG) -> Path | None:
    """The autoscaling config of the cluster at gcs_address, or None when it has no autoscaler.

    Its monitor is the one given this GCS address, or else the only one on its port (a driver that joined
    by a host name keeps that name; the monitor has the head's IP). A monitor started without
    --autoscaling-config only reports, so the cluster is fixed. With no monitor of this cluster to be
    seen here, the cluster launcher's path, if present.
    """
    mine = [(argv, cwd) for argv, cwd in _monitors(Path(proc))
            if _port(_flag(argv, "gcs-address")) == _port(gcs_address)]
    exact = [m for m in mine if _flag(m[0], "gcs-address") == gcs_address]
    if exact or len(mine) == 1:
        argv, cwd = (exact or mine)[0]
        config = _flag(argv, "autoscaling-config")
        if not config:
            return None
        path = Path(os.path.expanduser(config))
        return path if path.is_absolute() else Path(os.path.realpath(cwd)) / path
    fallback = Path(os.path.expanduser(launcher_config))
    return fallback if fallback.is_file() else None


def launchable_node_types(gcs_address: str) -> list[NodeType]:
    """The node types the autoscaler of this cluster may add; none when it has no autoscaler or its config
    cannot be read (then only the alive nodes count, as on a fixed cluster)."""
    path = autoscaling_config_path(gcs_address)
    if path is None:
        return []
    try:
        types = node_types(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        log.warning("could not read the autoscaling config %s (%s); counting only the nodes alive now", path, e)
        return []
    log.debug("autoscaling config %s: node types %s", path, types)
    return types


# --- the cluster this process joined: what it can run, waiting for it --------------------------------

def alive_resources() -> list[dict]:
    """The resources of each alive node of the cluster this process joined."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def trials_per_node(resources: dict, cpus: float, gpus: float) -> int:
    """Trials of `cpus` CPUs and `gpus` GPUs that one node with these resources runs at once."""
    fits = [resources.get("CPU", 0) / cpus] + ([resources.get("GPU", 0) / gpus] if gpus else [])
    return math.floor(min(fits) + 1e-9)


def slot_capacity(cpus: float, gpus: float) -> int:
    """Trials that the alive nodes and the nodes the autoscaler may add can run at once (at least 1)."""
    alive = sum(trials_per_node(r, cpus, gpus) for r in alive_resources())
    launchable = sum(min(t.max_workers, 1000) * trials_per_node(t.resources, cpus, gpus)
                     for t in launchable_node_types(ray.get_runtime_context().gcs_address))
    return max(1, alive + int(launchable))


def check_resources(cpus: float, gpus: float, wait_s: float = 0.0) -> None:
    """Fail at once when nothing the cluster has or may get can hold one trial, instead of trials PENDING
    forever. A node type its autoscaler can add is enough: Tune's pending trials are the demand that
    starts it (a GPU cluster scales up from zero workers). When neither can, wait up to wait_s for nodes
    the user starts by hand (--wait-for-nodes). NoNode says why none can."""
    address = ray.get_runtime_context().gcs_address
    types = launchable_node_types(address)
    alive = alive_resources()
    verdict, fitting = decide(cpus, gpus, alive, types, wait_s)
    if verdict == AUTOSCALE:
        log.info("waiting for a %s to join; the autoscaler starts it", " or a ".join(t.describe() for t in fitting))
    elif verdict == WAIT:
        wait_for_nodes(cpus, gpus, wait_s, address, types)
    elif verdict == IMPOSSIBLE:
        raise NoNode(no_node_message(cpus, gpus, alive, types))


def wait_for_nodes(cpus: float, gpus: float, wait_s: float, address: str, types: list, poll_s: float = 1.0) -> None:
    """Poll the alive nodes until one can hold a trial (--wait-for-nodes): the search may be started before
    the worker nodes its user starts by hand. NoNode when none has joined after wait_s."""
    log.info("waiting up to %g s for a node that can run a trial needing %g CPU and %g GPU; start one with: "
             "ray start --address=%s", wait_s, cpus, gpus, address)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        joined = [r for r in alive_resources() if can_hold(r, cpus, gpus)]
        if joined:
            log.info("a node with %s joined; starting the search", resources_text(joined[0]))
            return
    raise NoNode(no_node_message(cpus, gpus, alive_resources(), types, waited_s=wait_s))


def no_node_message(cpus: float, gpus: float, alive: list[dict], types: list, waited_s: float = 0.0) -> str:
    """Why no trial can run: what it needs, what the nodes (and the autoscaler's node types) have, and the fix."""
    have = "; ".join(resources_text(r) for r in alive) or "no nodes"
    if types:
        have += "; the autoscaler can add: " + ", ".join(t.describe() for t in types)
    waited = f" and none that can joined within --wait-for-nodes {waited_s:g} s" if waited_s else ""
    no_gpu = gpus and not any(r.get("GPU") for r in [*alive, *(t.resources for t in types)])
    return (f"no node can run a trial needing {cpus:g} CPU and {gpus:g} GPU (nodes have: {have}){waited}. "
            f"Lower --cpus-per-trial / --gpus-per-trial" + (" (no GPU here: use --gpus-per-trial 0)" if no_gpu else ""))
