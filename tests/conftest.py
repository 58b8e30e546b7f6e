"""Shared fixtures: the bundled digits data, loaded once per test session for the `test` model."""
import pytest
import torch

from trainable.config import MixConfig, resolve
from trainable.engine import load_training_data


def small_config(**overrides) -> MixConfig:
    """The smallest real configuration: the `test` model on the bundled digits."""
    base = dict(datasets=("digits",), model="test", e_ssl=2, e_sl=2, rho=0.5, alpha=0.5,
                batch_size=128, device="cpu", seed=0)
    base.update(overrides)
    return MixConfig(**base)


@pytest.fixture(scope="session")
def digits_data():
    return load_training_data(resolve(small_config()))

# One intra-op thread: on 2 shared cores, OpenMP's second thread makes small tensor ops many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole test session, capped at 2 CPUs; yields its address."""
    import os

    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a loopback port with a sqlite backend; stopped (whole group) at the end."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
