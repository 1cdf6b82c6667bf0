"""trainer.loggers (csv, tensorboard, wandb offline, mlflow) and progress output that does not flood a log
that is not a terminal (issue 20 item 8)."""

import importlib.util
import io

import pytest

from molequi.config import Config
from molequi.errors import ConfigError
from molequi.train.loggers import LineProgress, check_loggers, show_bar, wants_lines
from molequi.train.run import train


def tiny_config(tmp_path, **trainer):
    return Config.from_dict({
        "model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
        "optim": {"lr": 0.01, "scheduler": "none"},
        "trainer": {"max_steps": 6, "batch_size": 2, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "log_every": 2, **trainer},
    })


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_modes():
    assert show_bar("auto", _Stream(True)) and not wants_lines("auto", _Stream(True))
    assert not show_bar("auto", _Stream(False)) and wants_lines("auto", _Stream(False))
    assert show_bar(True, _Stream(False)) and not wants_lines(True, _Stream(False))
    assert not show_bar(False, _Stream(True)) and not wants_lines(False, _Stream(False))


def test_logger_names_and_missing_packages(monkeypatch):
    check_loggers(["csv", "tensorboard"])
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'.*did you mean 'tensorboard'"):
        check_loggers(["csv", "tensorbord"])
    with pytest.raises(ConfigError, match="twice"):
        check_loggers(["csv", "csv"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow")
                        else real(name, *a))
    with pytest.raises(ConfigError, match="needs the 'wandb' package.*pip install wandb"):
        check_loggers(["wandb"])
    with pytest.raises(ConfigError, match="needs the 'mlflow' package"):
        check_loggers(["csv", "mlflow"])
    with pytest.raises(ConfigError, match="must be a list"):
        Config.from_dict({"trainer": {"loggers": "csv"}})


def test_missing_logger_package_fails_before_data_is_read(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb"
                        else real(name, *a))

    class Unread(dict):
        def __getitem__(self, key):
            raise AssertionError("the data was read before the logger check")

    with pytest.raises(ConfigError, match="wandb"):
        train(tiny_config(tmp_path, loggers=["csv", "wandb"]), splits=Unread(), enable_summary=False)


def test_csv_and_tensorboard_files_and_line_progress(tmp_path, morse_five, capsys):
    splits = {"train": morse_five, "valid": [], "test": []}
    # default: csv only, and (stdout is no terminal under pytest) one progress line per log_every steps
    train(tiny_config(tmp_path / "a"), splits=splits, enable_summary=False)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[molequi train] step")]
    assert [ln.split()[3] for ln in lines] == ["2", "4", "6"], out
    assert all(" loss " in ln for ln in lines)
    run = tmp_path / "a" / "run"
    assert list(run.glob("logs/version_*/metrics.csv")) and not (run / "tb").exists()
    train(tiny_config(tmp_path / "b", loggers=["csv", "tensorboard"], progress_bar=False), splits=splits,
          enable_summary=False)
    assert "[molequi train]" not in capsys.readouterr().out
    run = tmp_path / "b" / "run"
    assert list(run.glob("logs/version_*/metrics.csv"))
    events = list(run.glob("tb/version_*/events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_line_progress_every_validates():
    assert LineProgress(0).every == 1 and LineProgress(25).every == 25
