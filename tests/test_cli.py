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


def test_train_command__printed_for_a_chosen_configuration_trains_exactly_it():
    import shlex

    from trainable import train
    from tuning.search import train_command
    chosen = MixConfig(datasets=("digits",), model="tiny", fraction=0.5, val_frac=0.2, e_ssl=15, e_sl=15, alpha=0.9,
                       rho=0.75, lam=0.25, batch_size=32, ssl_lr=2.4e-3, sl_lr=1.6e-2, mix_step="separate",
                       ssl_cosine="ssl_only")
    cmd = train_command({"config": chosen.to_dict(), "tuned_at_epoch_scale": 0.2})
    argv = shlex.split(cmd.split("  #")[0])
    assert argv[:3] == ["python", "-m", "trainable.train"] and "tuned at --epoch-scale 0.2" in cmd
    parser = train.build_parser()
    rebuilt = train.config_from(parser.parse_args(argv[3:]), parser)
    assert rebuilt.replace(seed=chosen.seed) == chosen  # every field, the new ones included
