"""Active learning (``molequi.train.active``, ``molequi learn``): selection, labels, the loop, resume, errors.

The loop tests label a 6-atom Cu cluster with ASE's EMT through the ``ase`` labeller route (``module:Class``)
and train the tiny test model (tests/train/tiny_model.py), so no xTB time is spent.
"""

from __future__ import annotations

import json
import sys

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Octahedron

from molequi.errors import ConfigError
from molequi.train.active import (
    frame_disagreement,
    label_frames,
    labelled_set,
    learn,
    learn_config_from_dict,
    load_learn_config,
    pyscf_energy_forces,
    select_frames,
    split_labelled,
)


# ------------------------------------------------------------------------------------------- selection
def test_selection_takes_exactly_the_frames_above_the_threshold():
    d = [0.05, 0.2, 0.15, 0.3, 0.01, 0.1]  # 0.1 is not above a threshold of 0.1
    steps = [0, 10, 20, 30, 40, 50]
    assert select_frames(d, steps, threshold=0.1, window=0, max_frames=10) == [1, 2, 3]
    assert select_frames(d, steps, threshold=0.5, window=0, max_frames=10) == []
    assert select_frames(d, steps, threshold=0.1, window=0, max_frames=2) == [1, 3]  # the largest two


def test_diversity_window_keeps_one_frame_per_excursion():
    # one excursion (steps 20..28) of five frames above the threshold, and a second one at step 100
    d = [0.0, 0.5, 0.9, 0.8, 0.7, 0.6, 0.0, 0.4]
    steps = [0, 20, 22, 24, 26, 28, 60, 100]
    assert select_frames(d, steps, threshold=0.1, window=10, max_frames=10) == [2, 7]
    # window 5, largest first: 22 taken; 24, 26 (within 5 steps of 22) skipped; 28 (6 away) taken; 20
    # skipped; 100 taken
    assert select_frames(d, steps, threshold=0.1, window=5, max_frames=10) == [2, 5, 7]


def test_committee_disagreement_matches_two_ase_lennard_jones_potentials():
    """A fake committee of two Lennard-Jones members (different epsilon): its per-frame disagreement is
    max_i |F1_i - F2_i| / 2, computed here from ASE's own LennardJones, and the selection takes exactly the
    frames where that exceeds the threshold."""
    from molequi.calculators import MolequiCalculator
    from molequi.models.lj import LennardJones, LennardJonesConfig

    sigma, rc = 2.3, 30.0  # a cutoff so far that the shifted-force correction is below 1e-8 eV/Å
    members = [LennardJones.from_config(LennardJonesConfig(r_max=rc, epsilon=eps, sigma=sigma), None).double()
               for eps in (0.010, 0.013)]
    calc = MolequiCalculator(models=members, dtype="float64")
    rng = np.random.default_rng(0)
    base = Octahedron("Cu", 2).positions
    frames, ours, reference = [], [], []
    for i in range(12):
        atoms = Octahedron("Cu", 2)
        atoms.positions = base + rng.normal(scale=0.02 + 0.02 * i, size=base.shape)
        atoms.calc = calc
        atoms.get_forces()
        ours.append(frame_disagreement(calc.results["forces_std_norm"]))
        f = []
        for eps in (0.010, 0.013):
            b = atoms.copy()
            b.calc = AseLJ(epsilon=eps, sigma=sigma, rc=rc, smooth=False)
            f.append(b.get_forces())
        reference.append(float(np.linalg.norm(f[0] - f[1], axis=1).max() / 2))
        frames.append(atoms)
    np.testing.assert_allclose(ours, reference, rtol=1e-7, atol=1e-8)
    threshold = float(np.median(reference))
    expected = [i for i, r in enumerate(reference) if r > threshold]
    assert 0 < len(expected) < len(frames)
    assert select_frames(ours, list(range(12)), threshold, window=0, max_frames=100) == expected


def test_validation_frames_keep_their_side_as_the_set_grows():
    train10, valid10 = split_labelled(list(range(10)), 0.2)
    train23, valid23 = split_labelled(list(range(23)), 0.2)
    assert valid10 == [0, 5] and valid23 == [0, 5, 10, 15, 20]
    assert set(valid10) <= set(valid23) and set(train10) <= set(train23)


# ----------------------------------------------------------------------------------------------- labels
@pytest.mark.qm  # PySCF: deselected by -m "not qm"
def test_pyscf_labeller_forces_are_minus_the_energy_gradient():
    """RHF/STO-3G water: the labeller's forces against central differences of its own energy."""
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.positions[1] += [0.05, -0.03, 0.02]
    e0, forces = pyscf_energy_forces(atoms, "hf", "sto-3g")
    h = 1e-3
    for atom, axis in ((0, 2), (1, 0), (2, 1)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        e_plus, e_minus = (pyscf_energy_forces(a, "hf", "sto-3g")[0] for a in (plus, minus))
        fd = -(e_plus - e_minus) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, abs=2e-4)
    assert np.abs(forces.sum(0)).max() < 1e-5  # no net force


@pytest.mark.qm  # tblite (the [qm] extra)
def test_xtb_labeller_forces_are_minus_the_energy_gradient():
    """GFN2-xTB through tblite: the labeller's forces (eV/Å) against central differences of its energy."""
    from ase.build import molecule

    from molequi.train.active import LabellerConfig, make_labeller

    label = make_labeller(LabellerConfig(name="xtb", method="GFN2-xTB"))
    atoms = molecule("H2O")
    atoms.positions[2] += [0.04, 0.02, -0.03]
    _, forces = label(atoms)
    h = 1e-4
    for atom, axis in ((0, 1), (2, 2)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        assert forces[atom, axis] == pytest.approx(-(label(plus)[0] - label(minus)[0]) / (2 * h), abs=1e-4)


def test_ase_labeller_passes_its_kwargs():
    from molequi.train.active import LabellerConfig, make_labeller

    atoms = Octahedron("Cu", 2)
    label = make_labeller(LabellerConfig(name="ase", calculator="ase.calculators.lj:LennardJones",
                                         kwargs={"sigma": 2.3, "epsilon": 0.02, "rc": 6.0}))
    energy, forces = label(atoms)
    atoms.calc = AseLJ(sigma=2.3, epsilon=0.02, rc=6.0)
    assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-12)
    assert energy != pytest.approx(AseLJ(sigma=2.3, epsilon=0.01, rc=6.0).get_potential_energy(atoms.copy()))


@pytest.mark.slow  # two spawned workers import molequi (torch): ~10 s idle, ~60 s on a loaded machine
def test_process_pool_labels_equal_ase_in_order():
    from molequi.train.active import LabellerConfig

    rng = np.random.default_rng(1)
    frames = []
    for _ in range(5):
        a = Octahedron("Cu", 2)
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        frames.append(a)
    spec = LabellerConfig(name="ase", calculator="ase.calculators.emt:EMT", workers=2)
    labelled = label_frames(spec, frames)
    for a, b in zip(frames, labelled):
        a = a.copy()
        a.calc = EMT()
        np.testing.assert_allclose(b.positions, a.positions)
        assert b.info["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(b.arrays["forces"], a.get_forces(), atol=1e-12)


@pytest.mark.parametrize("executor, options", [
    ("dask", {"processes": False, "n_workers": 2, "dashboard_address": None}),  # a real LocalCluster
    ("submitit", {"cluster": "debug"}),  # submitit's in-process executor (same code path as slurm)
])
def test_dask_and_submitit_label_like_ase(tmp_path, executor, options):
    from molequi.train.active import LabellerConfig

    frames = [Octahedron("Cu", 2) for _ in range(3)]
    for k, a in enumerate(frames):
        a.positions[0, 0] += 0.05 * k
    spec = LabellerConfig(name="ase", calculator="ase.calculators.emt:EMT", workers=2, executor=executor,
                          executor_options=options)
    labelled = label_frames(spec, frames, scratch=tmp_path)
    for a, b in zip(frames, labelled):
        a = a.copy()
        a.calc = EMT()
        assert b.info["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(b.arrays["forces"], a.get_forces(), atol=1e-12)
    if executor == "submitit":
        assert (tmp_path / "submitit").is_dir()  # the job folder defaults to the round directory


@pytest.mark.parametrize("executor, package", [("dask", "distributed"), ("submitit", "submitit")])
def test_cluster_executor_without_its_package_is_a_named_error(monkeypatch, executor, package):
    from molequi.train.active import LabellerConfig

    monkeypatch.setitem(sys.modules, package, None)  # import fails as if the package were not installed
    spec = LabellerConfig(name="ase", calculator="ase.calculators.emt:EMT", executor=executor)
    with pytest.raises(ConfigError, match=f"{executor} needs .*pip install {package}"):
        label_frames(spec, [Octahedron("Cu", 2)])


# ------------------------------------------------------------------------------------------------ loop
def config(tmp_path, **changes) -> dict:
    ase.io.write(tmp_path / "cu6.extxyz", Octahedron("Cu", 2))
    raw = {
        "output": str(tmp_path / "run"),
        "start": {"file": str(tmp_path / "cu6.extxyz"), "n_frames": 8, "rattle": 0.1},
        "labeller": {"name": "ase", "calculator": "ase.calculators.emt:EMT", "workers": 1},  # pool: own test
        "committee": {"size": 2, "seeds": [3, 4], "finetune_max_epochs": 2, "valid_fraction": 0.25, "train": {
            "model": {"name": "tiny", "r_max": 4.0, "hidden": 8, "num_basis": 4},
            "optim": {"lr": 0.01, "scheduler": "none", "ema_decay": None},
            "trainer": {"max_epochs": 3, "batch_size": 4, "precision": "float64", "accelerator": "cpu",
                        "devices": 1, "log_every": 1, "progress_bar": False}}},
        "md": {"temperatures": [300.0], "time_fs": 60.0, "timestep": 2.0, "stride": 2,
               "stop_disagreement": 100.0},
        "select": {"threshold": 1e-9, "window": 6, "max_frames": 3},
        "stop": {"max_rounds": 2},
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        raw[section][name] = value
    return raw


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    import tiny_model

    tiny_model.register()
    tmp = tmp_path_factory.mktemp("learn")
    raw = config(tmp)
    return raw, learn(raw)


@pytest.mark.slow
def test_two_rounds_grow_the_labelled_set_with_emt_labels(two_rounds):
    raw, result = two_rounds
    out = result.output
    state = json.loads((out / "state.json").read_text())
    assert state["stop_reason"] == "max_rounds" and state["rounds_done"] == 3
    counts = [e["n_labelled"] for e in state["history"]]
    assert counts == [8, 11, 14]  # 8 start frames, then max_frames = 3 per round (threshold ~0)
    frames = labelled_set(out, 3)
    assert len(frames) == 14
    for a in frames:  # the labels are EMT's
        b = a.copy()
        b.calc = EMT()
        assert a.info["energy"] == pytest.approx(b.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(a.arrays["forces"], b.get_forces(), atol=1e-7)  # extxyz keeps 8 decimals
    # selected MD frames are >= window steps apart within a round
    for r in (1, 2):
        md = json.loads((out / f"round_{r:03d}" / "md.json").read_text())
        assert md["runs"][0]["steps_done"] == 30 and not md["stable"]
        picked = ase.io.read(out / f"round_{r:03d}" / "selected.extxyz", ":")
        assert len(picked) == 3
    # later rounds fine-tune from the previous round's member
    member = (out / "round_002" / "members" / "1" / "config.yaml").read_text()
    assert f"init_from: {out / 'round_001' / 'members' / '1' / 'model.pt'}" in member
    assert [p.exists() for p in result.model_paths] == [True, True]
    rows = (out / "learn.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("round,temperature_K,n_new,n_labelled,valid_forces_mae")
    assert (out / "learn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(e.get("valid_forces_mae_meV_A") is not None for e in state["history"])


class Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_kill_between_labelling_and_training(two_rounds, tmp_path):
    import tiny_model

    tiny_model.register()
    reference_raw, reference = two_rounds
    raw = config(tmp_path)

    def kill(rnd):
        if rnd == 1:
            raise Killed

    with pytest.raises(Killed):
        learn(raw, after_labelling=kill)
    out = tmp_path / "run"
    state = json.loads((out / "state.json").read_text())
    assert state["rounds_done"] == 1
    labelled = out / "round_001" / "labelled.extxyz"
    assert labelled.exists() and not (out / "round_001" / "members" / "0" / "model.pt").exists()
    stamp = labelled.stat().st_mtime_ns
    result = learn(raw)  # the rerun continues: trains round 1 and runs round 2
    assert labelled.stat().st_mtime_ns == stamp  # round 1 was not labelled again
    ours, theirs = labelled_set(out, 3), labelled_set(reference.output, 3)
    assert result.state["n_labelled"] == len(ours) == len(theirs) == 14
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info["energy"] == b.info["energy"]


@pytest.mark.slow
def test_cli_runs_round_zero_and_a_rerun_continues(tmp_path, capsys):
    import tiny_model
    import yaml

    from molequi.cli.main import main

    tiny_model.register()
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    assert main(["learn", str(path), "stop.max_rounds=0"]) == 0
    assert "max_rounds: 1 rounds, 8 labelled frames" in capsys.readouterr().out
    # a rerun with another labeller refuses the directory; a larger budget continues it
    assert main(["learn", str(path), "stop.max_rounds=0", "labeller.workers=2"]) == 1
    assert "sections differ: labeller" in capsys.readouterr().err
    assert main(["learn", str(path), "stop.max_rounds=1"]) == 0
    assert "2 rounds, 11 labelled frames" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("change, message", [
    ({"select.treshold": 0.1}, "unknown key 'select.treshold'; did you mean 'threshold'"),
    ({"start.smiles": ["CCO"]}, "either start.file .* or start.smiles"),
    ({"committee.size": 1}, "committee.size must be >= 2"),
    ({"committee.seeds": [1, 1]}, "committee.seeds needs 2 different seeds"),
    ({"labeller.calculator": None}, "needs an import path 'module:Class'"),
    ({"labeller.name": "xtb", "labeller.calculator": None, "labeller.method": "GFN3"}, "xtb methods are"),
    ({"md.stop_disagreement": 1e-10}, "must exceed select.threshold"),
    ({"stop.stable_fs": 1000.0}, r"stop.stable_fs \(1000.0\) must be in \(0, md.time_fs"),
    ({"md.temperatures": []}, "md.temperatures must be positive"),
    ({"committee.train": {"data": {"name": "xyz"}}},
     "committee.train.data: the labelled frames are the data"),
    ({"committee.train": {"model": {"name": "tiny", "hiden": 3}}},
     "committee.train: unknown key 'model.hiden'"),
])
def test_config_errors_are_named(tmp_path, change, message):
    import tiny_model

    tiny_model.register()
    with pytest.raises(ConfigError, match=message):
        learn_config_from_dict(config(tmp_path, **change))


def test_unknown_ase_calculator_is_named_when_labelling(tmp_path):
    import yaml

    raw = config(tmp_path, **{"labeller.calculator": "ase.calculators.emt:NoSuchCalc"})
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump(raw))
    import tiny_model

    tiny_model.register()
    with pytest.raises(ConfigError, match="cannot import 'ase.calculators.emt:NoSuchCalc'"):
        learn(load_learn_config(path))
