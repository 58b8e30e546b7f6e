"""Shared fixtures: the bundled digits data, loaded once per test session for the `test` model."""
import pytest
import torch

from trainable.config import MixConfig
from trainable.engine import load_training_data


def small_config(**overrides) -> MixConfig:
    """The smallest real configuration: the `test` model on the bundled digits."""
    base = dict(datasets=("digits",), model="test", e_ssl=2, e_sl=2, rho=0.5, alpha=0.5,
                batch_size=128, device="cpu", seed=0)
    base.update(overrides)
    return MixConfig(**base)


@pytest.fixture(scope="session")
def digits_data():
    return load_training_data(small_config(), torch.device("cpu"))

# One intra-op thread: on 2 shared cores, OpenMP's second thread makes small tensor ops many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole test session, capped at 2 CPUs; yields its address."""
    import os

    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
