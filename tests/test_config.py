import pytest

from trainable.config import MixConfig, optim_settings, plan
from trainable.schedule import PhasePlan


@pytest.mark.parametrize("field, value", [
    ("alpha", 1.5), ("alpha", -0.1), ("rho", 2), ("lam", -1e-3),
    ("fraction", 0.0), ("fraction", 1.01),
    ("e_ssl", -1), ("e_sl", 2.5), ("e_sl", 0), ("seed", -3), ("batch_size", 0),
    ("method", "supervised"), ("model", "vit_huge"), ("mix_step", "fused"),
    ("ssl_dataset", "imagenet"), ("mask_ratio", 1.0), ("sl_lr", -1.0),
])
def test_config__invalid_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        MixConfig(**{field: value})


def test_config__unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="datasets: 'imagenet' is not one of .*digits.*cifar10"):
        MixConfig(datasets=("imagenet",))


def test_config__from_dict_rejects_a_misspelt_field():
    with pytest.raises(ValueError, match="unknown config field.*'alhpa'"):
        MixConfig.from_dict({"alhpa": 0.5})


def test_config__round_trips_through_a_plain_dict():
    cfg = MixConfig(datasets=("cifar10", "svhn"), alpha=0.9, ssl_dataset="tinyimagenet")
    assert MixConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("method, expected", [
    ("mixtraining", PhasePlan(50, 50, 50)),
    ("ssl_sl", PhasePlan(100, 0, 100)),  # rho forced to 0
    ("sl", PhasePlan(0, 0, 100)),  # e_ssl forced to 0
])
def test_plan__baselines_are_the_same_plan_with_rho_or_e_ssl_zero(method, expected):
    assert plan(MixConfig(method=method, e_ssl=100, e_sl=100, rho=0.5)) == expected


def test_optim_settings__table7_defaults_and_tinyimagenet_overrides():
    ssl = optim_settings(MixConfig(), "ssl")
    sl = optim_settings(MixConfig(), "sl")
    assert (ssl.lr, ssl.betas, ssl.weight_decay, ssl.warmup_epochs) == (1.5e-4, (0.9, 0.95), 0.05, 20)
    assert (sl.lr, sl.betas, sl.weight_decay, sl.warmup_epochs) == (1e-3, (0.9, 0.95), 0.05, 5)
    tin = MixConfig(datasets=("tinyimagenet",))
    assert optim_settings(tin, "ssl")[:3] == (1e-3, (0.9, 0.95), 0.15)
    assert optim_settings(tin, "sl")[:3] == (2e-3, (0.9, 0.999), 0.05)
    assert optim_settings(MixConfig(batch_size=128), "sl").lr == pytest.approx(5e-4)  # lr = base * B / 256


def test_optim_settings__ssl_schedule_depends_on_e_ssl_only():
    a = optim_settings(MixConfig(e_ssl=10, e_sl=20, rho=0.25, alpha=0.1), "ssl")
    b = optim_settings(MixConfig(e_ssl=10, e_sl=5, rho=1.0, alpha=0.9), "ssl")
    assert a == b
