"""trainable.config: validation, field roles and what derives from them, the plan, optimiser settings."""
import dataclasses
import math

import pytest

from conftest import small_config
from trainable import config
from trainable.config import (DATA, ROLES, RUNTIME, SSL, TRAIN, ConfigError, MixConfig, _field, field_roles,
                              fields_with, optim_settings, plan, resolve, trajectory_fields)
from trainable.engine import Engine
from trainable.prefix_store import prefix_key
from trainable.schedule import PhasePlan, lr_at


@pytest.mark.parametrize("field, value", [
    ("alpha", 1.5), ("alpha", -0.1), ("rho", 2), ("lam", -1e-3),
    ("fraction", 0.0), ("fraction", 1.01),
    ("e_ssl", -1), ("e_sl", 2.5), ("e_sl", 0), ("seed", -3), ("batch_size", 0),
    ("method", "supervised"), ("model", "vit_huge"), ("mix_step", "fused"),
    ("ssl_dataset", "imagenet"), ("mask_ratio", 1.0), ("sl_lr", -1.0),
    ("alpha", math.nan), ("fraction", math.inf), ("sl_lr", math.nan), ("ssl_lr", math.inf), ("sl_beta2", math.nan),
])
def test_config__invalid_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}:") as raised:
        MixConfig(**{field: value})
    assert isinstance(raised.value, ConfigError) and raised.value.field == field


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


def test_optim_settings__ssl_cosine_ssl_only_anneals_to_zero_when_the_ssl_only_phase_ends():
    cfg = MixConfig(e_ssl=100, e_sl=100, rho=0.5)  # 50 SSL-only epochs, then the mix phase on the SL schedule
    spans, ends = optim_settings(cfg, "ssl"), optim_settings(cfg.replace(ssl_cosine="ssl_only"), "ssl")
    assert (spans.total_epochs, spans.warmup_epochs) == (100, 20)
    assert lr_at(50, spans.lr, spans.warmup_epochs, spans.total_epochs) == pytest.approx(0.691 * spans.lr, abs=1e-6)
    assert (ends.total_epochs, ends.warmup_epochs) == (50, 10)  # warmup stays 20% of the schedule
    assert lr_at(50, ends.lr, ends.warmup_epochs, ends.total_epochs) == 0.0
    # SSL+SL (rho forced to 0) has no mix phase: both schedules are one; the SL schedule never changes.
    base = cfg.replace(method="ssl_sl")
    assert optim_settings(base, "ssl") == optim_settings(base.replace(ssl_cosine="ssl_only"), "ssl")
    assert optim_settings(cfg, "sl") == optim_settings(cfg.replace(ssl_cosine="ssl_only"), "sl")
    with pytest.raises(ConfigError, match="ssl_cosine"):
        cfg.replace(ssl_cosine="ssl_only", mix_optim="ssl")  # its mix phase would run past the SSL schedule's end


# --- field roles ------------------------------------------------------------------------------------

def test_field_roles__every_field_declares_known_roles():
    roles = field_roles()
    assert set(roles) == {f.name for f in dataclasses.fields(MixConfig)}
    assert all(r and r <= set(ROLES) for r in roles.values())


def test_field_roles__a_new_field_without_a_role_fails():
    bare = dataclasses.make_dataclass("WithNewField", [("new_knob", float, dataclasses.field(default=1.0))],
                                      bases=(MixConfig,), frozen=True)
    with pytest.raises(TypeError, match="'new_knob' has roles \\[\\]"):
        field_roles(bare)
    declared = dataclasses.make_dataclass("WithRole", [("new_knob", float, _field(1.0, TRAIN))],
                                          bases=(MixConfig,), frozen=True)
    assert field_roles(declared)["new_knob"] == {TRAIN}


def test_field_roles__a_field_that_selects_data_must_also_shape_the_ssl_phase():
    bad = dataclasses.make_dataclass("DataOnly", [("subset", int, _field(0, DATA))], bases=(MixConfig,), frozen=True)
    with pytest.raises(TypeError, match="selects the data.*role SSL too"):
        field_roles(bad)


def test_field_roles__the_derived_sets():
    assert set(fields_with(RUNTIME)) == {"data_dir", "download", "device"}
    assert set(trajectory_fields()) == {f.name for f in dataclasses.fields(MixConfig)} - set(fields_with(RUNTIME))
    assert {"alpha", "rho", "lam", "e_sl", "sl_lr", "method"} <= set(fields_with(TRAIN))
    assert not {"alpha", "rho", "lam", "e_sl", "sl_lr", "method"} & set(fields_with(SSL))
    assert set(fields_with(DATA)) == {"datasets", "ssl_dataset", "data_dir", "fraction", "val_frac", "model", "seed",
                                      "device"}


def _count_calls(monkeypatch, module, names):
    """Replace each function `names` of `module` by a wrapper that counts its calls; the counts by name."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        def counted(*args, _name=name, _inner=getattr(module, name), **kwargs):
            counts[_name] += 1
            return _inner(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return counts


def test_resolve__derived_values_made_once(monkeypatch, digits_data):
    counts = _count_calls(monkeypatch, config, ["method_plan", "optim_settings", "model_name", "resolve_device"])
    run = resolve(small_config(method="sl", e_ssl=10, e_sl=2, model="auto"))
    made = {"method_plan": 1, "optim_settings": 2, "model_name": 1, "resolve_device": 1}  # 2: one per optimiser
    assert counts == made
    assert run.plan == PhasePlan(0, 0, 2) and run.model == "tiny" and run.model_cfg.img_size == 16
    assert run.sl_optim.total_epochs == 2 and not (run.amp or run.compile or run.fused_adamw)
    assert run.values(SSL)["e_ssl"] == 0  # the SL baseline trains no SSL epoch, whatever e_ssl says
    assert run.values(DATA)["model"] == "tiny" and run.values(DATA)["device"] == "cpu"
    # Those who read the derived values (the engine, an epoch, the prefix key) never derive them again.
    engine = Engine(run, data=digits_data)
    engine.run_epoch()
    prefix_key(run, "cpu")
    assert counts == made
    assert run.sl_optim == optim_settings(run.cfg, "sl")  # the same values as derived from scratch


def test_resolve__cuda_asked_for_without_cuda_names_the_device_field(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^device: 'cuda' requested but CUDA is not available"):
        resolve(MixConfig(device="cuda"))
