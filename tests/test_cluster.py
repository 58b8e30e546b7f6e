"""cluster.yaml against Ray's schema; what a search makes of a cluster's nodes and its autoscaler's node types;
real multi-node searches on this machine: worker nodes that join after the search starts and one that is lost,
and a fake autoscaler that starts the worker a search's trials need."""
import copy
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests_helpers import NO_GPU, TINY, free_port, kill_session, trial_results
from tuning import cluster
from tuning.cluster import AUTOSCALE, FITS, IMPOSSIBLE, WAIT

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
    # Every node runs one Ray, a version the project accepts (pyproject.toml), a CPU image on the head and a
    # GPU one on the workers. (Not necessarily the Ray installed here: pyproject allows any newer one.)
    import tomllib

    from packaging.requirements import Requirement
    docker = cluster_yaml["docker"]
    images = [re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(cpu|gpu)", docker[k]) for k in
              ("head_image", "worker_image")]
    assert all(images) and [m.group(2) for m in images] == ["cpu", "gpu"], docker
    assert images[0].group(1) == images[1].group(1)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    required = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert required.specifier.contains(images[0].group(1)), (required, images[0].group(1))


def test_cluster_yaml__only_ssh_is_open_and_servers_bind_to_loopback(cluster_yaml):
    perms = cluster_yaml["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    head = " ".join(cluster_yaml["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "tuning.mlflow_store serve" in head and "--host 127.0.0.1" in head and "0.0.0.0" not in head


def test_cluster_yaml__token_authentication_on_every_node_without_a_token_in_the_file(cluster_yaml):
    text = (REPO / "cluster.yaml").read_text()
    assert "--env RAY_AUTH_MODE=token" in cluster_yaml["docker"]["run_options"]  # head and workers alike
    assert cluster_yaml["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert not re.search(r"[0-9a-f]{32,}", text), "a token (or other secret) is written in cluster.yaml"


def test_cluster_yaml__mlflow_results_live_in_the_bucket(cluster_yaml):
    serve = " ".join(cluster_yaml["head_start_ray_commands"])
    assert '--backup "$MIXTUNE_BUCKET/mlflow.db"' in serve and '--artifacts "$MIXTUNE_BUCKET/mlflow-artifacts"' in serve
    assert "--env MIXTUNE_BUCKET=s3://" in " ".join(cluster_yaml["docker"]["run_options"])


# --- what the search makes of a cluster (no Ray) -----------------------------------------------------

AUTOSCALING = {  # an autoscaling config as `ray start --autoscaling-config` reads it
    "max_workers": 4, "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}},
        "gpu_worker": {"resources": {"CPU": 4, "GPU": 1}, "min_workers": 0, "max_workers": 2},
        "cpu_worker": {"resources": {"CPU": 8}},  # max_workers: the cluster's
        "retired": {"resources": {"CPU": 64, "GPU": 8}, "max_workers": 0},
    }}
HEAD = {"CPU": 0.0, "memory": 1e9}  # a head that runs no trials, as ray.nodes() reports it
TYPES = cluster.node_types(AUTOSCALING)


def test_node_types__the_workers_an_autoscaler_may_launch_without_the_head_or_max_workers_0():
    assert [(t.name, t.resources, t.max_workers) for t in TYPES] == [
        ("gpu_worker", {"CPU": 4, "GPU": 1}, 2), ("cpu_worker", {"CPU": 8}, 4)]
    assert cluster.node_types({**AUTOSCALING, "max_workers": 0}) == []
    assert cluster.node_types({}) == []


def test_node_types__cluster_yaml_offers_gpu_workers_that_state_their_cpus_and_gpus(cluster_yaml):
    assert [(t.name, t.resources) for t in cluster.node_types(cluster_yaml)] == [("gpu_worker", {"CPU": 4, "GPU": 1})]


@pytest.mark.parametrize("cpus, gpus, alive, types, wait_s, verdict, fitting", [
    (1, 0, [HEAD, {"CPU": 2.0}], TYPES, 0, FITS, []),  # a worker is there
    (1, 0.25, [HEAD], TYPES, 0, AUTOSCALE, ["gpu_worker"]),  # the README's cluster, scaled down to zero
    (4, 0, [HEAD], TYPES, 0, AUTOSCALE, ["gpu_worker", "cpu_worker"]),
    (1, 2, [HEAD], TYPES, 0, IMPOSSIBLE, []),  # no type has 2 GPUs (the one that had may launch none)
    (1, 2, [HEAD], TYPES, 60, WAIT, []),  # ... unless the user said they start such nodes themselves
    (1, 0, [HEAD], [], 0, IMPOSSIBLE, []),  # no autoscaler
    (1, 0, [HEAD], [], 120, WAIT, []),  # no autoscaler, --wait-for-nodes 120
    (1, 1, [{"CPU": 2.0}], [], 0, IMPOSSIBLE, []),  # a local instance without a GPU
    (1, 0, [], [], 0, IMPOSSIBLE, []),
])
def test_decide__fits_now_wait_for_the_autoscaler_wait_for_manual_nodes_or_impossible(
        cpus, gpus, alive, types, wait_s, verdict, fitting):
    got, fit = cluster.decide(cpus, gpus, alive, types, wait_s)
    assert (got, [t.name for t in fit]) == (verdict, fitting)


def test_no_node_message__names_the_node_types_and_offers_gpus_per_trial_0_only_without_gpus():
    msg = cluster.no_node_message(1, 2, [HEAD], TYPES)
    assert msg == ("no node can run a trial needing 1 CPU and 2 GPU (nodes have: 0 CPU, 0 GPU; the autoscaler can "
                   "add: gpu_worker node (4 CPU, 1 GPU), cpu_worker node (8 CPU, 0 GPU)). "
                   "Lower --cpus-per-trial / --gpus-per-trial")
    assert cluster.no_node_message(1, 1, [HEAD], [], waited_s=5).endswith(
        "(nodes have: 0 CPU, 0 GPU) and none that can joined within --wait-for-nodes 5 s. Lower --cpus-per-trial / "
        "--gpus-per-trial (no GPU here: use --gpus-per-trial 0)")


def test_wait_for_nodes__returns_when_a_node_that_can_hold_a_trial_joins_and_fails_when_none_does(monkeypatch):
    polls = iter([[HEAD], [HEAD, {"CPU": 0.5}], [HEAD, {"CPU": 2.0}]])
    monkeypatch.setattr(cluster, "alive_resources", lambda: next(polls))
    cluster.wait_for_nodes(1, 0, 60, "10.0.0.5:6379", [], poll_s=0.01)
    assert next(polls, "all polled") == "all polled"
    monkeypatch.setattr(cluster, "alive_resources", lambda: [HEAD])
    with pytest.raises(cluster.NoNode, match="none that can joined within --wait-for-nodes 0.2 s"):
        cluster.wait_for_nodes(1, 0, 0.2, "10.0.0.5:6379", [], poll_s=0.05)


MONITOR = [sys.executable, "-u", "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py",
           "--logs-dir=/tmp/ray/session_latest/logs"]


def _fake_proc(root: Path, processes: dict[int, tuple[list[str], Path]]) -> Path:
    """A /proc holding the given processes: pid -> (command line, working folder)."""
    for pid, (argv, cwd) in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
        (root / str(pid) / "cwd").symlink_to(cwd)
    (root / "self").mkdir(parents=True, exist_ok=True)  # not a pid: passed over
    return root


@pytest.fixture
def launcher_config(tmp_path):
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(json.dumps(AUTOSCALING))  # `ray up` writes it as JSON, which YAML reads
    return path


def test_autoscaling_config_path__from_this_clusters_monitor_not_another_ones_or_the_launchers(
        tmp_path, launcher_config):
    proc = _fake_proc(tmp_path / "proc", {
        10: ([*MONITOR, "--gcs-address=10.0.0.5:6380", "--autoscaling-config=/other/cluster.yaml"], tmp_path),
        11: ([*MONITOR, "--gcs-address=10.0.0.5:6379", "--autoscaling-config=/etc/mine.yaml"], tmp_path),
        12: (["python", "train.py", "--gcs-address=10.0.0.5:6379", "--autoscaling-config=/not/a/monitor"], tmp_path)})
    assert cluster.autoscaling_config_path("10.0.0.5:6379", proc, str(launcher_config)) == Path("/etc/mine.yaml")
    # The driver named the head by another address: the one monitor on the GCS port is still this cluster's.
    assert cluster.autoscaling_config_path("127.0.0.1:6379", proc, str(launcher_config)) == Path("/etc/mine.yaml")


def test_autoscaling_config_path__relative_to_the_monitors_folder_and_home_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    proc = _fake_proc(tmp_path / "proc", {
        20: ([*MONITOR, "--gcs-address=127.0.0.1:6379", "--autoscaling-config=conf/a.yaml"], tmp_path),
        21: ([*MONITOR, "--gcs-address=127.0.0.1:7000", "--autoscaling-config=~/b.yaml"], tmp_path)})
    assert cluster.autoscaling_config_path("127.0.0.1:6379", proc) == tmp_path.resolve() / "conf" / "a.yaml"
    assert cluster.autoscaling_config_path("127.0.0.1:7000", proc) == tmp_path / "home" / "b.yaml"


def test_autoscaling_config_path__none_for_a_monitor_without_config_else_the_launchers_when_present(
        tmp_path, launcher_config):
    readonly = _fake_proc(tmp_path / "readonly", {30: ([*MONITOR, "--gcs-address=127.0.0.1:6379"], tmp_path)})
    assert cluster.autoscaling_config_path("127.0.0.1:6379", readonly, str(launcher_config)) is None
    nothing = _fake_proc(tmp_path / "nothing", {})
    assert cluster.autoscaling_config_path("127.0.0.1:6379", nothing, str(launcher_config)) == launcher_config
    assert cluster.autoscaling_config_path("127.0.0.1:6379", nothing, str(tmp_path / "absent.yaml")) is None


def test_launchable_node_types__read_from_the_config_and_none_from_an_unreadable_one(
        tmp_path, monkeypatch, launcher_config, caplog):
    monkeypatch.setattr(cluster, "autoscaling_config_path", lambda address: launcher_config)
    assert cluster.launchable_node_types("127.0.0.1:6379") == TYPES
    launcher_config.write_text("available_node_types: [not, a, mapping")
    assert cluster.launchable_node_types("127.0.0.1:6379") == []
    assert "could not read the autoscaling config" in caplog.text


# --- real multi-node runs on this machine ------------------------------------------------------------

DRIVER_ENV = {**NO_GPU, "RAY_AUTH_MODE": "disabled",  # Ray 2.60 turns token auth on for new clusters
              "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # a node told to stop (SIGTERM) stops now, not in 30 s


# The head's health checks of the nodes, as Ray's own node-failure tests shorten them: a killed node is
# declared dead in about 2 s instead of about 20 s (what this test waits on is Tune's reaction, not that delay).
FAST_NODE_DEATH = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
                   "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}


def _start_node(args, log, env=None):
    return subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **DRIVER_ENV, **(env or {})})


def _wait_for_output(proc, log: Path, text: str, timeout: float = 90) -> None:
    """Until the running process `proc` has written `text` to `log`."""
    deadline = time.time() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"exited {proc.returncode} before saying {text!r}: {log.read_text()[-3000:]}"
        assert time.time() < deadline, f"never said {text!r}: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def _search_cmd(address: str, storage: Path, name: str, *argv: str) -> list[str]:
    return [sys.executable, str(REPO / "tuning" / "search.py"), *TINY, "--space", "smoke", "--name", name,
            "--scheduler", "fifo", "--storage-path", str(storage), "--address", address, *argv]


@pytest.mark.slow
def test_search_on_two_nodes_survives_losing_the_worker_node(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = _start_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                        "--include-dashboard=false"], tmp_path / "head.log", FAST_NODE_DEATH)
    procs = [head]
    driver = None
    try:
        _wait_for_output(head, tmp_path / "head.log", "Ray runtime started")
        store = tmp_path / "mlflow.db"
        # Started before any node can run a trial (the head has no CPU and no autoscaler): it waits for one.
        cmd = _search_cmd(address, tmp_path / "results", "multi", "--num-samples", "2", "--epoch-scale", "2",
                          "--max-failures", "3", "--mlflow-uri", f"sqlite:///{store}", "--experiment", "multi",
                          "--wait-for-nodes", "120")
        driver = subprocess.Popen(cmd, stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, **DRIVER_ENV})
        _wait_for_output(driver, tmp_path / "driver.log", "waiting up to 120 s for a node that can run a trial "
                         "needing 1 CPU and 0 GPU; start one with: ray start --address=")
        # Ray names the head by this machine's address rather than 127.0.0.1: the port says it is this cluster.
        assert f":{port}\n" in (tmp_path / "driver.log").read_text()
        procs.append(_start_node([f"--address={address}", "--num-cpus=2"], tmp_path / "worker1.log"))
        exp = tmp_path / "results" / "multi"
        deadline = time.time() + 240
        while time.time() < deadline:  # kill the node once some trial has checkpointed and is still running
            running = {t: rs for t, rs in trial_results(exp).items() if len(rs) >= 2 and not rs[-1].get("done")}
            if running:
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        assert running, "no trial reached its second epoch"
        kill_session(procs[1])  # SIGKILL: the raylet and every worker of the node, by pid
        at_kill = {t: rs[-1]["epoch"] for t, rs in trial_results(exp).items()}
        procs.append(_start_node([f"--address={address}", "--num-cpus=2"], tmp_path / "worker2.log"))
        assert driver.wait(timeout=420) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver and driver.poll() is None:
            kill_session(driver)
        for p in reversed(procs):
            kill_session(p, signal.SIGTERM)

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


# --- scaling from zero workers with Ray's fake multi-node autoscaler ------------------------------------

FAKE_WORKER = "cpu_worker"


def _fake_autoscaling_config(port: int) -> dict:
    """A head that runs no trials and one worker type from zero, launched by Ray's `fake_multinode` provider
    as raylets on this machine. Ray's wheel lacks the provider's defaults file, so every field is given."""
    return {
        "cluster_name": f"fake-{port}", "max_workers": 1, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,  # keeps the worker between the cost calibration and the trials
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            FAKE_WORKER: {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1}},
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "rsync_exclude": [],
        "rsync_filter": [], "file_mounts_sync_continuously": False, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": []}


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text`: every raylet, GCS and worker of a cluster names its temp dir."""
    return [pid for pid, argv in cluster.command_lines().items()
            if pid != os.getpid() and any(text in a for a in argv)]


def _end_cluster(head: subprocess.Popen, temp_dir: Path) -> None:
    """The head's session (its processes and the fake workers the autoscaler started under it), then anything
    left that names the cluster's temp dir, all by pid: never `ray stop`, which would end every cluster here."""
    kill_session(head, signal.SIGKILL)
    deadline = time.time() + 30
    while (left := _processes_mentioning(str(temp_dir))) and time.time() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not left, f"processes of the test's cluster outlived it: {left}"


@pytest.fixture
def fake_autoscaling_cluster(tmp_path):
    """A head with no CPU whose autoscaler starts a {"CPU": 2} worker when work waits for one; yields its address."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rfa", dir="/tmp"))  # short: Ray's socket paths stay < 108 characters
    port = free_port()
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(_fake_autoscaling_config(port)))
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus=0", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],  # the default port may be taken
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **DRIVER_ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    try:
        _wait_for_output(head, tmp_path / "head.log", "Ray runtime started")
        yield f"127.0.0.1:{port}"
    finally:
        _end_cluster(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_search_scales_from_zero_workers_with_the_autoscaler_and_refuses_what_no_node_type_holds(
        fake_autoscaling_cluster, processes, tmp_path):
    address, results = fake_autoscaling_cluster, tmp_path / "results"
    gpu = processes.start(_search_cmd(address, results, "gpu", "--no-mlflow", "--gpus-per-trial", "1"),
                          log=tmp_path / "gpu.log", env=DRIVER_ENV)
    assert gpu.wait(timeout=120) == 2, (tmp_path / "gpu.log").read_text()[-3000:]  # refused: no trial ran
    said = (tmp_path / "gpu.log").read_text()
    assert not list(results.glob("gpu/MixTrainable_*"))
    assert ("no node can run a trial needing 1 CPU and 1 GPU (nodes have: 0 CPU, 0 GPU; the autoscaler can add: "
            f"{FAKE_WORKER} node (2 CPU, 0 GPU))") in said and "--gpus-per-trial 0" in said

    driver = processes.start(_search_cmd(address, results, "scale0", "--no-mlflow", "--num-samples", "1"),
                             log=tmp_path / "driver.log", env=DRIVER_ENV)
    assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    said = (tmp_path / "driver.log").read_text()
    assert f"waiting for a {FAKE_WORKER} node (2 CPU, 0 GPU) to join; the autoscaler starts it" in said
    trials = trial_results(results / "scale0")
    assert len(trials) == 3  # 2 baselines + 1 sample, run on the worker the autoscaler started (the head has no CPU)
    assert all(rs[-1]["completed"] for rs in trials.values())


# --- fractional GPUs, on a Ray instance that declares a GPU this machine does not have ----------------------

FAKE_GPU_DRIVER = """
import json, sys, threading, time
import ray
ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": sys.argv[2]}})
from tuning import search
used, stop = [], threading.Event()
def watch():  # what the trials' placement groups hold while the search runs
    while not stop.is_set():
        try:
            free = ray.available_resources()
            used.append((1 - free.get("GPU", 0.0), 4 - free.get("CPU", 0.0)))
        except Exception:
            pass
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
rc = search.main(json.loads(sys.argv[1]))
stop.set()
print("USED " + json.dumps(used))
sys.exit(rc)
"""


@pytest.mark.slow
def test_search__a_quarter_gpu_per_trial_runs_four_trials_at_once_on_one_gpu_each_told_its_share(tmp_path):
    # A Ray instance of its own: the session's is GPU-free. 4 CPUs would allow 8 trials of 0.5 CPU; the one GPU
    # allows 4 of 0.25. The device stays the CPU (there is no GPU to compute on).
    argv = [*TINY, "--space", "smoke", "--search", "grid", "--scheduler", "fifo", "--seeds", "2", "--gpus-per-trial",
            "0.25", "--cpus-per-trial", "0.5", "--device", "cpu", "--no-mlflow", "--storage-path", str(tmp_path),
            "--name", "gpu"]
    proc = subprocess.run([sys.executable, "-c", FAKE_GPU_DRIVER, json.dumps(argv), str(REPO)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})  # Ray refuses ""
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = json.loads(proc.stdout.rsplit("USED ", 1)[1])
    assert max(g for g, _ in used) == pytest.approx(1.0)  # four quarters at once: the whole GPU
    assert max(c for _, c in used) <= 2.0 + 1e-9  # and never more than four trials, though the CPUs allow eight
    results = trial_results(tmp_path / "gpu")
    assert len(results) == 12 and all(rs[-1]["completed"] for rs in results.values())  # 8 + 4 baselines
    assert {r["gpu_share"] for rs in results.values() for r in rs} == {0.25}  # each trial told its share
