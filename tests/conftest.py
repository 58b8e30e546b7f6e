"""Shared fixtures: the bundled digits data for the `test` model, one Ray instance and one MLflow server per
session, and processes ended by pid whatever a test's outcome.

Tests that need Ray or an MLflow server are marked `slow` here, so `pytest -m "not slow"` is the quick loop.
"""
import os
import tempfile

import pytest
import torch

from tests_helpers import NO_GPU, MlflowServer, Processes
from trainable import faults
from trainable.config import MixConfig, resolve
from trainable.engine import load_training_data

# One intra-op thread: on 2 shared cores, OpenMP's second thread makes small tensor ops many times slower.
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no call home from the tests' MLflow clients

SLOW_FIXTURES = {"ray_cluster", "mlflow_server", "mlflow_supervisor", "tracked_search"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (it names each test by its group then)
def pytest_collection_modifyitems(items):
    for item in items:
        session = SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
        if session:
            item.add_marker(pytest.mark.slow)
        # Under `pytest -n 2 --dist loadgroup` (make test): the tests on the session's Ray and MLflow server run in
        # one worker, so those start once; the others go module by module, so a module's fixtures are made once.
        item.add_marker(pytest.mark.xdist_group("session-ray-mlflow" if session else item.module.__name__))


def small_config(**overrides) -> MixConfig:
    """The smallest real configuration: the `test` model on the bundled digits."""
    base = dict(datasets=("digits",), model="test", e_ssl=2, e_sl=2, rho=0.5, alpha=0.5,
                batch_size=128, device="cpu", seed=0)
    base.update(overrides)
    return MixConfig(**base)


@pytest.fixture(scope="session")
def digits_data():
    return load_training_data(resolve(small_config()))


@pytest.fixture
def processes():
    procs = Processes()
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole test session, capped at 2 CPUs and no GPU; yields its address.

    Its processes see no GPU either (CUDA_VISIBLE_DEVICES is empty while it starts, and they inherit
    that), so tests that expect "no GPU" hold on a machine with one.
    """
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Where a test's fault file goes (trainable/faults.py): set before Ray starts, so its workers inherit it.
    os.environ.setdefault(faults.ENV, os.path.join(tempfile.gettempdir(), f"mixtune-fault-{os.getpid()}.json"))
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ.update(NO_GPU)
    try:
        ctx = ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_supervisor(tmp_path_factory):
    """The session's `mlflow server`, run as on a cluster's head through `python -m tuning.mlflow_store serve`:
    its database in `head/`, copied every 2 s at most to `bucket/` (a local folder standing for the bucket),
    where the artifacts go too; yields the MlflowServer (`.uri`, `.db`, `.bucket`, `.backup`)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    procs = Processes()
    try:
        yield MlflowServer(root / "head", procs, bucket=root / "bucket", interval=2).start()
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_supervisor):
    """A real MLflow server on a loopback port with a sqlite backend (through the supervisor); its URI."""
    return mlflow_supervisor.uri


@pytest.fixture(scope="session")
def tracked_search(ray_cluster, mlflow_server, tmp_path_factory):
    """One small search with two seeds tracked on the MLflow server: (trial rows, printed summary, client)."""
    from mlflow import MlflowClient

    from tests_helpers import run_search_cli
    tmp = tmp_path_factory.mktemp("tracked")
    df, out = run_search_cli(tmp, "--space", "smoke", "--name", "tracked", "--num-samples", "2",
                             "--scheduler", "fifo", "--seeds", "2", "--mlflow-uri", mlflow_server,
                             "--experiment", "tracked", "--register-model", "tracked-best", "--system-metrics")
    df.attrs["storage"] = tmp  # the experiment is tmp / "tracked"
    return df, out, MlflowClient(mlflow_server)


@pytest.fixture(autouse=True)
def _restore_process_state():
    """What a command run in-process sets for the whole process is put back after each test, so no test depends
    on which ran before it: the root logger (search.main configures it), MLflow's tracking URI (its fluent API
    keeps one per process and mirrors it into MLFLOW_TRACKING_URI), and the environment."""
    import logging

    import mlflow
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    uri_env, env = mlflow.get_tracking_uri() if mlflow.tracking._tracking_service.utils.is_tracking_uri_set() \
        else None, dict(os.environ)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    if uri_env is None:
        mlflow.tracking._tracking_service.utils._tracking_uri = None
    else:
        mlflow.set_tracking_uri(uri_env)
    for key in set(os.environ) - set(env):
        del os.environ[key]
    os.environ.update(env)
