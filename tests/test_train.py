"""`python -m trainable.train`: one configuration without Ray; checkpoints, resume and exit codes."""
import logging
import re

import pytest
import torch

from trainable import train
from trainable.engine import Engine

TEST = ["--dataset", "digits", "--model", "test", "--batch-size", "128", "--threads", "1", "--device", "cpu"]


def _test_acc(out: str) -> str:
    return re.search(r"test_acc=(\S+)", out).group(1)


def test_train__prints_a_line_per_epoch_and_the_test_accuracy(capsys, caplog):
    caplog.set_level(logging.INFO, logger="trainable.train")
    assert train.main([*TEST, "--epochs", "2", "--rho", "0.5"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"test_acc=0\.\d{3} train_time_s=\d+\.\d\n", out)
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert [e.split("[")[1][:3].strip() for e in epochs] == ["ssl", "mix", "sl"]


def test_train__e_ssl_and_e_sl_override_epochs(caplog):
    caplog.set_level(logging.INFO, logger="trainable.train")
    assert train.main([*TEST, "--epochs", "9", "--e-ssl", "2", "--e-sl", "1", "--rho", "1.0"]) == 0
    assert "1 SSL-only, 1 mix, 0 SL-only epochs" in caplog.text


def test_train__interrupted_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch, capsys):
    args = [*TEST, "--epochs", "3", "--rho", "0.34", "--checkpoint", str(tmp_path / "run.pt")]
    assert train.main([*TEST, "--epochs", "3", "--rho", "0.34"]) == 0
    reference = _test_acc(capsys.readouterr().out)

    run_epoch, calls = Engine.run_epoch, []

    def interrupt_after_two(self):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return run_epoch(self)

    monkeypatch.setattr(Engine, "run_epoch", interrupt_after_two)
    assert train.main(args) == 130
    assert "interrupted after epoch 2; rerun with the same --checkpoint to continue" in capsys.readouterr().err
    monkeypatch.setattr(Engine, "run_epoch", run_epoch)
    assert train.main(args) == 0
    assert _test_acc(capsys.readouterr().out) == reference


def test_train__a_checkpoint_of_another_config_is_refused_with_a_message(tmp_path, capsys):
    ckpt = str(tmp_path / "run.pt")
    assert train.main([*TEST, "--epochs", "1", "--checkpoint", ckpt]) == 0
    assert train.main([*TEST, "--epochs", "1", "--alpha", "0.9", "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err
    assert "was trained with a different config: fields ['alpha'] differ" in err and "Traceback" not in err


def test_train__deterministic_flag_reaches_the_config():
    parser = train.build_parser()
    assert train.config_from(parser.parse_args([*TEST, "--deterministic"]), parser).deterministic
    assert not train.config_from(parser.parse_args(TEST), parser).deterministic


def _never_trains(monkeypatch):
    def refuse(self):
        raise AssertionError("an epoch trained before the checkpoint was checked")
    monkeypatch.setattr(Engine, "run_epoch", refuse)


def _single_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_train__a_checkpoint_in_a_missing_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    _never_trains(monkeypatch)
    missing = tmp_path / "no" / "such" / "folder"
    assert train.main([*TEST, "--epochs", "1", "--checkpoint", str(missing / "run.pt")]) == 2
    err = _single_error_line(capsys)
    assert err.startswith(f"error: --checkpoint {missing / 'run.pt'}: {missing} does not exist; create the folder")
    (tmp_path / "file").write_text("")
    assert train.main([*TEST, "--epochs", "1", "--checkpoint", str(tmp_path / "file" / "run.pt")]) == 2
    assert "is not a folder" in _single_error_line(capsys)


def test_train__an_unwritable_checkpoint_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    _never_trains(monkeypatch)
    real_open = open

    def read_only_folder(file, mode="r", *args, **kwargs):  # tests run as root, whom chmod does not stop
        if str(file).startswith(str(tmp_path)) and "w" in mode:
            raise PermissionError(13, "Permission denied")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_folder)
    assert train.main([*TEST, "--epochs", "1", "--checkpoint", str(tmp_path / "run.pt")]) == 2
    assert f"cannot write in {tmp_path} (Permission denied)" in _single_error_line(capsys)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated", "another object"])
def test_train__an_unreadable_checkpoint_is_refused_with_one_line(tmp_path, monkeypatch, capsys, content):
    ckpt = tmp_path / "run.pt"
    if content == "truncated":  # a real checkpoint cut short, as a full disk leaves one
        assert train.main([*TEST, "--epochs", "1", "--checkpoint", str(ckpt)]) == 0
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    elif content == "another object":
        torch.save({"weights": torch.zeros(3)}, ckpt)
    else:
        ckpt.write_bytes(content)
    capsys.readouterr()
    _never_trains(monkeypatch)
    assert train.main([*TEST, "--epochs", "1", "--checkpoint", str(ckpt)]) == 2
    err = _single_error_line(capsys)
    assert err.startswith(f"error: --checkpoint {ckpt}: ") and "delete it to start afresh" in err


@pytest.mark.parametrize("argv, code, message", [
    (["--alpha", "2"], 2, "argument --alpha: must be in [0, 1], got 2"),
    (["--dataset", "digits", "mnist", "--ssl-dataset", "digits"], 2,
     "--ssl-dataset: 'digits' is one of the supervised datasets"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], 2, "Dataset 'cifar10': missing"),
    (["--sl-lr", "1e30", "--method", "sl", "--epochs", "1"], 1, "non-finite loss in epoch 1"),
])
def test_train__exit_codes_and_messages(argv, code, message, capsys):
    try:
        rc = train.main([*TEST, *argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
