"""``optim.param_groups`` (``molequi.train.param_groups``): per-group learning rates (heads vs body), mapped
onto the torch optimiser Lightning gets from ``TaskModule.configure_optimizers``.

Reference: the parameter names by prefix (``str.startswith``, not the glob matching under test) and the
learning rates written in the config; the cosine schedule keeps each group's ratio to optim.lr.
"""

import pytest

from molequi.config import Config
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.train.module import TaskModule
from molequi.train.run import apply_freeze, build_task

TINY = {"name": "mace", "r_max": 3.0, "num_bessel": 4, "max_ell": 1, "hidden_irreps": "4x0e+4x1o",
        "correlation": 2, "num_interactions": 2, "MLP_irreps": "4x0e", "radial_MLP": [8]}
STATS = Statistics(elements=[1, 6, 8], e0s={1: -13.6, 6: -1029.8, 8: -2041.3}, avg_num_neighbors=3.0)


def _module(optim, freeze=()):
    cfg = Config.from_dict({"model": TINY, "optim": optim, "trainer": {"max_steps": 10}})
    task = build_task(cfg, STATS)
    if freeze:
        apply_freeze(task.model, list(freeze))
    return TaskModule(task, cfg, STATS), task.model


def _optimizer(configured):
    return configured["optimizer"] if isinstance(configured, dict) else configured


def _ids(params):
    return {id(p) for p in params}


def test_groups_get_their_learning_rates():
    module, model = _module({"lr": 0.01, "weight_decay": 1e-6, "scheduler": "cosine", "param_groups": [
        {"pattern": "readouts.*", "lr": 1e-3},
        {"pattern": ["embedding.*", "layers.0.linear_up.*"], "lr_factor": 0.5, "weight_decay": 0.0}]})
    configured = module.configure_optimizers()
    opt = _optimizer(configured)
    named = dict(model.named_parameters())
    readouts = [p for n, p in named.items() if n.startswith("readouts.")]
    body0 = [p for n, p in named.items() if n.startswith(("embedding.", "layers.0.linear_up."))]
    rest = [p for n, p in named.items()
            if not n.startswith(("readouts.", "embedding.", "layers.0.linear_up."))]
    assert readouts and body0 and rest
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"param_groups[0]", "param_groups[1]", "default"}
    assert _ids(groups["param_groups[0]"]["params"]) == _ids(readouts)
    assert _ids(groups["param_groups[1]"]["params"]) == _ids(body0)
    assert _ids(groups["default"]["params"]) == _ids(rest)
    assert [groups[k]["lr"] for k in ("param_groups[0]", "param_groups[1]", "default")] == \
        pytest.approx([1e-3, 5e-3, 1e-2])
    assert [groups[k]["weight_decay"] for k in ("param_groups[0]", "param_groups[1]", "default")] == \
        [1e-6, 0.0, 1e-6]
    # the schedule (cosine over max_steps) scales every group alike
    sched = configured["lr_scheduler"]["scheduler"]
    for _ in range(4):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["default"] < 1e-2
    assert lrs["param_groups[0]"] / lrs["default"] == pytest.approx(0.1)
    assert lrs["param_groups[1]"] / lrs["default"] == pytest.approx(0.5)


def test_first_matching_group_wins_and_default_is_one_group():
    module, model = _module({"param_groups": [{"pattern": "readouts.1.*", "lr": 1e-4},
                                              {"pattern": "readouts.*", "lr": 1e-3}]})
    groups = {g["name"]: g for g in _optimizer(module.configure_optimizers()).param_groups}
    named = dict(model.named_parameters())
    assert _ids(groups["param_groups[0]"]["params"]) == _ids(p for n, p in named.items()
                                                              if n.startswith("readouts.1."))
    assert _ids(groups["param_groups[1]"]["params"]) == _ids(p for n, p in named.items()
                                                              if n.startswith("readouts.0."))
    plain, model = _module({"lr": 0.02})
    (group,) = _optimizer(plain.configure_optimizers()).param_groups
    assert group["lr"] == 0.02 and _ids(group["params"]) == _ids(model.parameters())


def test_pattern_matching_nothing_is_an_error():
    module, _ = _module({"param_groups": [{"pattern": "readout.*", "lr": 1e-3}]})  # names are readouts.N.*
    with pytest.raises(ConfigError, match=r"param_groups\[0\]: pattern\(s\) 'readout\.\*' match no"):
        module.configure_optimizers()
    module, _ = _module({"param_groups": [{"pattern": "embedding.*", "lr": 1e-3}]}, freeze=["embedding.*"])
    with pytest.raises(ConfigError, match="frozen by model.freeze are not trainable"):
        module.configure_optimizers()
    with pytest.raises(ConfigError, match="give lr or lr_factor, not both"):
        Config.from_dict({"optim": {"param_groups": [{"pattern": "x", "lr": 1.0, "lr_factor": 2.0}]}})
    with pytest.raises(ConfigError, match="unknown key 'optim.param_groups\\[0\\].lrate'"):
        Config.from_dict({"optim": {"param_groups": [{"pattern": "x", "lrate": 1.0}]}})
    # the groups survive a config round trip (checkpoints store the config as plain values)
    cfg = Config.from_dict({"optim": {"param_groups": [{"pattern": ["a.*", "b"], "lr_factor": 0.1}]}})
    assert Config.from_dict(cfg.to_dict()) == cfg
