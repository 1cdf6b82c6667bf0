"""Config: typed sections from YAML, unknown keys with suggestions, dotted overrides, commented defaults."""

import os
import sys

import pytest
import yaml

from molequi.models import MODELS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
import tiny_model  # noqa: E402

from molequi.config import (  # noqa: E402
    TASKS,
    Config,
    OptimConfig,
    apply_overrides,
    default_yaml,
    get_task_class,
    load_config,
    parse_override,
)
from molequi.errors import ConfigError  # noqa: E402


@pytest.fixture(autouse=True)
def _tiny():
    tiny_model.register()


def write(tmp_path, raw):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        load_config(write(tmp_path, {"model": {"name": "tiny"}, "optim": {"lrr": 0.1}}))
    with pytest.raises(ConfigError, match="did you mean 'trainer'"):
        Config.from_dict({"model": {"name": "tiny"}, "trainr": {}})
    with pytest.raises(ConfigError, match="did you mean 'r_max'"):
        Config.from_dict({"model": {"name": "tiny", "rmax": 4.0}})
    with pytest.raises(ConfigError, match="did you mean 'root'"):
        Config.from_dict({"model": {"name": "tiny"}, "data": {"rot": "x.xyz"}})
    with pytest.raises(ConfigError, match="did you mean 'forces'"):
        Config.from_dict({"model": {"name": "tiny"}, "task": {"weights": {"force": 10}}})


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'energy_forces'"):
        get_task_class("energy_force")
    with pytest.raises(ConfigError, match="unknown model"):
        Config.from_dict({"model": {"name": "macee"}})
    assert TASKS["energy_forces"].endswith(":EnergyForcesTask")


def test_wrong_types_are_errors():
    base = {"model": {"name": "tiny"}}
    for section, key, value in [("trainer", "batch_size", "five"), ("optim", "amsgrad", 1),
                                ("optim", "lr", "fast"), ("trainer", "precision", "float16"),
                                ("optim", "scheduler", "cosin"), ("model", "hidden", 3.5)]:
        raw = {**base, section: {**base.get(section, {}), key: value}}
        with pytest.raises(ConfigError, match=key):
            Config.from_dict(raw)
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        Config.from_dict({**base, "optim": {"scheduler": "cosin"}})


def test_overrides_are_yaml_scalars(tmp_path):
    p = write(tmp_path, {"model": {"name": "tiny"}, "data": {"root": "a.xyz"}})
    cfg = load_config(p, ["optim.lr=1e-3", "trainer.devices=2", "optim.ema_decay=null", "model.hidden=8",
                          "dataset.root=b.xyz", "trainer.max_time=00:00:10:00", "task.weights.forces=10"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.trainer.devices == 2 and cfg.optim.ema_decay is None
    assert cfg.model.config.hidden == 8 and cfg.data.root == "b.xyz"
    assert cfg.trainer.max_time == "00:00:10:00"
    assert cfg.task.config.weights.forces == 10.0
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_config(p, ["optim.lrate=1"])
    assert apply_overrides({}, ["x.y=1"]) == {"x": {"y": 1}}


def test_defaults_and_dict_round_trip():
    cfg = Config.from_dict({"model": {"name": "tiny"}})
    assert cfg.optim == OptimConfig() and cfg.task.name == "energy_forces"
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.qm)
                                   if m in ("qhnet", "hamiltonian_conv") else m
                                   for m in sorted(MODELS)])  # qhnet's basis comes from PySCF
def test_init_config_round_trip(tmp_path, model):
    text = default_yaml(model)
    p = tmp_path / "init.yaml"
    p.write_text(text)
    cfg = load_config(p)
    # equiformer_v2_fairchem is the former name of equiformer_v2, read as it
    assert cfg.model.name == {"equiformer_v2_fairchem": "equiformer_v2"}.get(model, model)
    assert cfg == Config.from_dict({"model": {"name": model}, "data": {"root": "train.xyz"}})
    # every key carries a comment line above it
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert all(":" in ln for ln in lines)
    assert text.count("#") >= len(lines) - 6  # section headers and 'name' lines aside


def test_cli_init_config_prints_loadable_yaml(tmp_path, capsys):
    from molequi.cli.main import main

    assert main(["init-config", "tiny"]) == 0
    out = capsys.readouterr().out
    p = tmp_path / "x.yaml"
    p.write_text(out)
    assert load_config(p).model.name == "tiny"


def test_shipped_example_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(root.glob("*.yaml"))
    assert paths
    for path in paths:
        if path.name.startswith("learn_"):  # molequi learn's configs (molequi.train.active.LearnConfig)
            from molequi.train.active import load_learn_config

            load_learn_config(path)
            continue
        cfg = load_config(path)
        assert Config.from_dict(cfg.to_dict()) == cfg, path


def test_model_config_is_validated_when_the_yaml_is_read(tmp_path, monkeypatch):
    """``max_ell: -1`` is a ConfigError from load_config itself: no dataset is opened, no model built."""
    import molequi.data.datasets as datasets

    def no_data(cfg):
        raise AssertionError("the dataset was read before the model config was validated")

    monkeypatch.setitem(datasets.DATASETS, "xyz", no_data)
    p = write(tmp_path, {"model": {"name": "mace", "max_ell": -1}, "data": {"root": "missing.xyz"}})
    with pytest.raises(ConfigError, match="model 'mace'.*max_ell >= 0"):
        load_config(p)
    with pytest.raises(ConfigError, match="r_max must be positive"):
        Config.from_dict({"model": {"name": "lj", "r_max": 0.0}})


@pytest.mark.qm  # the def2-SVP shells come from PySCF
def test_qhnet_config_is_validated_against_its_basis():
    with pytest.raises(ConfigError, match="lmax=2 cannot express def2-svp"):
        Config.from_dict({"model": {"name": "qhnet", "lmax": 2}})


def test_old_data_keys_name_the_new_key():
    """Keys of earlier data-section shapes are errors that say what to write instead."""
    with pytest.raises(ConfigError, match="'data.path' is now 'data.root'"):
        Config.from_dict({"model": {"name": "tiny"}, "data": {"path": "a.xyz"}})
    with pytest.raises(ConfigError, match="directly under 'data'"):
        Config.from_dict({"model": {"name": "tiny"}, "data": {"dataset": {"root": "a.xyz"}}})


def test_one_data_config_type_from_yaml_to_the_dataset_builder():
    """The ``data`` section is the type ``build_dataset`` takes; family options stay in ``options``."""
    from molequi.data.datasets import DataConfig, dataset_option

    cfg = Config.from_dict({"model": {"name": "tiny"},
                            "data": {"name": "qm9", "root": "q", "target": "gap", "seed": 3,
                                     "options": {"split": [10, 5, None]}}})
    assert type(cfg.data) is DataConfig
    assert dataset_option(cfg.data, "split") == [10, 5, None]
    assert dataset_option(cfg.data, "target") == "gap"
    # the random-split seed of flat datasets is not a family option (qm9's own split seed stays 0)
    assert dataset_option(cfg.data, "seed", 0) == 0
    assert dataset_option(cfg.data, "test", "rest") == "rest"
