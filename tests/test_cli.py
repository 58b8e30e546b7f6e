"""trainable.cli: the flags both commands share, and config errors said as flags."""
import argparse

from trainable.cli import add_common_args, common_config, config_error_message
from trainable.config import ConfigError, MixConfig


def _args(*argv):
    p = argparse.ArgumentParser()
    add_common_args(p)
    return p.parse_args(list(argv))


def test_common_config__speed_switch_flags_reach_the_config():
    cfg = MixConfig(**common_config(_args("--amp", "on", "--compile", "off", "--fused-adamw", "on", "--sdpa", "off")))
    assert (cfg.amp, cfg.compile, cfg.fused_adamw, cfg.sdpa) == ("on", "off", "on", "off")
    assert MixConfig(**common_config(_args())).amp == "auto"


def test_common_config__bundled_data_preset_unless_a_flag_overrides_it():
    assert {k: v for k, v in common_config(_args("--dataset", "digits")).items()
            if k in ("batch_size", "ssl_lr", "sl_lr")} == {"batch_size": 32, "ssl_lr": 2.4e-3, "sl_lr": 1.6e-2}
    assert common_config(_args("--dataset", "digits", "--batch-size", "8"))["batch_size"] == 8
    assert "batch_size" not in common_config(_args("--dataset", "cifar10"))  # Table 7's 256


def test_config_error_message__names_the_flag_not_the_field():
    assert config_error_message(ConfigError("datasets", "x")) == "--dataset: x"
    assert config_error_message(ConfigError("e_ssl", "y")) == "--e-ssl (or --epochs): y"
    assert config_error_message(ConfigError("ssl_lr", "z")) == "--ssl-lr: z"
