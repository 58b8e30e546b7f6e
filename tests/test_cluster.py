"""cluster.yaml against Ray's schema, and a real two-node search that loses a worker node."""
import copy
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests_helpers import TINY, trial_results

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster_yaml():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml__validates_against_the_installed_ray_schema_offline(cluster_yaml):
    validate_config(prepare_config(copy.deepcopy(cluster_yaml)))


@pytest.mark.parametrize("path, key", [((), "max_worker"), (("available_node_types", "gpu_worker"), "min_worker"),
                                       (("docker",), "worker_imgae")])
def test_cluster_yaml__a_misspelt_key_fails_validation(cluster_yaml, path, key):
    bad = copy.deepcopy(cluster_yaml)
    node = bad
    for p in path:
        node = node[p]
    node[key] = 1
    with pytest.raises(Exception, match=f"'{key}' was unexpected"):
        validate_config(prepare_config(bad))


def test_cluster_yaml__cpu_head_runs_no_trials_and_gpu_workers_autoscale_on_spot(cluster_yaml):
    nodes = cluster_yaml["available_node_types"]
    assert nodes[cluster_yaml["head_node_type"]]["resources"] == {"CPU": 0}
    worker = nodes["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    docker = cluster_yaml["docker"]
    assert docker["worker_image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert docker["head_image"].startswith(f"rayproject/ray:{ray.__version__}-")


def test_cluster_yaml__only_ssh_is_open_and_servers_bind_to_loopback(cluster_yaml):
    perms = cluster_yaml["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    head = " ".join(cluster_yaml["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "mlflow server" in head and "--host 127.0.0.1" in head and "0.0.0.0" not in head


# --- a real multi-node run on this machine ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args, log):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _kill_session(proc, sig=signal.SIGKILL):
    """Every process of a node: `ray start --block` leads a session; its workers have their own groups."""
    pids = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill_session(proc, signal.SIGKILL)


def _wait_for_nodes(address, n, timeout=60):
    """Poll `ray status`-like state through a short-lived subprocess (this process is on another cluster)."""
    code = (f"import ray; ray.init(address='{address}', logging_level='ERROR');"
            f"print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        if r.stdout.strip().isdigit() and int(r.stdout.strip()) >= n:
            return
        time.sleep(1)
    raise TimeoutError(f"cluster at {address} never had {n} nodes")


@pytest.mark.slow
def test_search_on_two_nodes_survives_losing_the_worker_node(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _start_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                        "--include-dashboard=false"], tmp_path / "head.log")
    procs = [head]
    driver = None
    try:
        procs.append(_start_node([f"--address={address}", "--num-cpus=2"], tmp_path / "worker1.log"))
        _wait_for_nodes(address, 2)
        store = tmp_path / "mlflow.db"
        cmd = [sys.executable, str(REPO / "tuning" / "search.py"), *TINY, "--space", "smoke", "--name", "multi",
               "--num-samples", "2", "--scheduler", "fifo", "--epoch-scale", "3", "--storage-path",
               str(tmp_path / "results"), "--address", address, "--max-failures", "3",
               "--mlflow-uri", f"sqlite:///{store}", "--experiment", "multi"]
        driver = subprocess.Popen(cmd, stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        exp = tmp_path / "results" / "multi"
        deadline = time.time() + 240
        while time.time() < deadline:  # kill the node once some trial has checkpointed and is still running
            running = {t: rs for t, rs in trial_results(exp).items() if len(rs) >= 2 and not rs[-1].get("done")}
            if running:
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        assert running, "no trial reached its second epoch"
        _kill_session(procs[1])  # SIGKILL: the raylet and every worker of the node, by pid
        at_kill = {t: rs[-1]["epoch"] for t, rs in trial_results(exp).items()}
        procs.append(_start_node([f"--address={address}", "--num-cpus=2"], tmp_path / "worker2.log"))
        assert driver.wait(timeout=420) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver and driver.poll() is None:
            _kill_session(driver)
        for p in reversed(procs):
            _kill_session(p, signal.SIGTERM)

    results = trial_results(exp)
    assert len(results) == 4  # 2 baselines + 2 samples, and nothing lost
    assert all(rs[-1]["completed"] for rs in results.values())
    # The trials running at the kill resumed from a checkpoint on the new node, not from epoch 1.
    resumed = [rs for t, rs in results.items() if t in running and t in at_kill]
    assert resumed
    for rs in resumed:
        restarts = [r for r in rs[1:] if r["iterations_since_restore"] == 1]
        assert restarts and all(r["epoch"] > 1 for r in restarts), [
            (r["epoch"], r["iterations_since_restore"]) for r in rs]
    # One MLflow run per trial, all FINISHED: the lost trial's run continued rather than being duplicated.
    with sqlite3.connect(store) as db:
        rows = db.execute("select r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                          "where t.key = 'trial_id'").fetchall()
    assert sorted(tid for _, tid in rows) == sorted(results)
    assert {status for status, _ in rows} == {"FINISHED"}
