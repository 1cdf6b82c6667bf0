"""``optim.stage_two`` (mace-torch's stage two): loss weights and learning rate switch at the configured step
or epoch, the plateau schedule stops, and a run killed after the switch and resumed ends bitwise
equal to the uninterrupted run.

The lr after the switch is checked against torch's ``SWALR`` set up as mace-torch 0.3.16 sets it up
(``get_swa``: ``anneal_epochs=1``, linear, stepped once at the first stage-two epoch); the loss weights
against the config numbers, through the logged loss = w_E x energy term + w_F x force term of every step.
"""

import pytest
import torch
import yaml
from conftest import morse_structures
from resume_harness import compare, mace_config, run_to_end, run_with_kills

STAGE_TWO = {"start_fraction": 0.5, "energy_weight": 50.0, "forces_weight": 2.0, "lr": 0.003}


def _config(run_dir, data, max_steps, stage_two=STAGE_TWO, **trainer):
    path = mace_config(run_dir, data, max_steps, **trainer)
    raw = yaml.safe_load(path.read_text())
    raw["optim"]["stage_two"] = dict(stage_two)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def data(tmp_path):
    from ase.io import write

    from molequi.data.records import data_to_atoms

    path = tmp_path / "morse.xyz"
    write(path, [data_to_atoms(r) for r in morse_structures(10, seed=3)], format="extxyz")
    return path  # 8 training structures (n_valid 2), batch 3: 3 optimiser steps per epoch


def _per_step(run_dir):
    """{step: row} of the logged training rows (lr, train/loss_step, ...); the last row of a step wins."""
    from molequi.train.evaluate import read_run_metrics

    rows = {}
    for row in read_run_metrics(run_dir):
        if row.get("lr") is not None and row.get("train/loss_step") is not None:
            rows.setdefault(int(row["step"]), {}).update(row)
    return rows


def _swalr_lr(lr: float, swa_lr: float) -> float:
    """The lr mace-torch's stage two trains with: SWALR(anneal_epochs=1, linear) after its first step."""
    from torch.optim.swa_utils import SWALR

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = SWALR(opt, swa_lr=swa_lr, anneal_epochs=1, anneal_strategy="linear")
    opt.step()  # (no gradient: no update) the order torch expects before a scheduler step
    sched.step()
    return opt.param_groups[0]["lr"]


def _check_switch(rows, first_stage_two_step, total_steps):
    assert sorted(rows) == list(range(total_steps)), sorted(rows)
    stage_two_lr = _swalr_lr(0.01, STAGE_TWO["lr"])
    assert stage_two_lr == pytest.approx(STAGE_TWO["lr"])
    for step, row in rows.items():
        two = step >= first_stage_two_step
        w_e, w_f = (STAGE_TWO["energy_weight"], STAGE_TWO["forces_weight"]) if two else (1.0, 100.0)
        expected = w_e * row["train/loss_energy_step"] + w_f * row["train/loss_forces_step"]
        assert row["train/loss_step"] == pytest.approx(expected, rel=1e-5), (step, row)
        if two:
            assert row["lr"] == pytest.approx(stage_two_lr, rel=1e-7), (step, row["lr"])  # logged as float32
        else:
            assert row["lr"] != pytest.approx(stage_two_lr), (step, row["lr"])
    # the plateau schedule (patience 0, factor 0.5, validation every 4 steps) lowers lr in stage one; in
    # stage two it is no longer stepped: lr stays at stage_two.lr through the validation rounds at 8, 12, ...
    assert rows[first_stage_two_step - 1]["lr"] < 0.01


def test_step_based_switch_and_resume_equal_to_uninterrupted(tmp_path, data):
    steps = 14  # start_fraction 0.5: stage two from optimiser step round(0.5 x 14) = 7
    ref = _config(tmp_path / "reference", data, steps)
    run_to_end(ref)
    rows = _per_step(tmp_path / "reference" / "run")
    _check_switch(rows, 7, steps)
    ckpt = torch.load(tmp_path / "reference" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["stage_two_step"] == 7
    # killed in stage two and resumed with --resume auto
    cfg = _config(tmp_path / "killed", data, steps)
    report = run_with_kills(cfg, [("after", 9)])
    assert 9 <= report[0]["last_step"] < steps, report
    diffs = compare(tmp_path / "reference" / "run", tmp_path / "killed" / "run")
    assert diffs == [], "\n".join(diffs)
    _check_switch(_per_step(tmp_path / "killed" / "run"), 7, steps)


def test_epoch_based_switch_at_the_first_batch_of_the_start_epoch(tmp_path, data):
    # 4 epochs of 3 steps; start_fraction 0.6: epoch round(2.4) = 2 (mace-torch: epochs >= --start_swa 2),
    # whose first optimiser step is step 6
    cfg = _config(tmp_path / "epochs", data, -1, stage_two={**STAGE_TWO, "start_fraction": 0.6},
                  max_epochs=4)
    run_to_end(cfg)
    _check_switch(_per_step(tmp_path / "epochs" / "run"), 6, 12)


def test_start_fraction_outside_the_run_is_a_config_error():
    from molequi.config import Config
    from molequi.errors import ConfigError

    with pytest.raises(ConfigError, match="start_fraction|stage_two"):
        Config.from_dict({"model": {"name": "mace"}, "data": {"name": "xyz", "root": "x"},
                          "task": {"name": "energy_forces"}, "optim": {"stage_two": {"start_fraction": 1.0}}})
