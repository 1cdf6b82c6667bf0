"""Every ``molequi`` verb is registered and answers ``--help``; a verb module that fails to import stops the
CLI with an error naming it (it used to vanish from the verb list); ``molequi eval`` runs end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.calculators import MolequiCalculator
from molequi.checkpoint import make_payload, save_model
from molequi.cli import main as cli_main
from molequi.config import to_plain
from molequi.data.readers import write_extxyz
from molequi.models.lj import LennardJones

# the verbs users are told about (README, docs); a missing one is a broken install or a bad refactor
EXPECTED_VERBS = {"data", "train", "eval", "init-config", "quickstart", "md", "relax", "predict", "scf-guess",
                  "generate", "distill", "learn"}


def _verbs(parser) -> dict:
    return next(a for a in parser._actions if a.dest == "verb").choices


def test_every_verb_is_registered_and_has_help(capsys):
    verbs = _verbs(cli_main.build_parser())
    missing = EXPECTED_VERBS - set(verbs)
    assert not missing, f"verbs missing from molequi: {sorted(missing)}"
    assert len(verbs) >= len(cli_main.VERBS)  # every module in VERBS added at least one verb
    for verb in sorted(verbs):
        with pytest.raises(SystemExit) as info:
            cli_main.main([verb, "--help"])
        assert info.value.code == 0, verb
        assert f"molequi {verb}" in capsys.readouterr().out


@pytest.mark.parametrize("body, what", [
    ("import molequi_no_such_dependency_xyz\n", "molequi_no_such_dependency_xyz"),
    ("raise RuntimeError('boom at import')\n", "boom at import"),
])
def test_a_verb_module_that_fails_to_import_is_an_error(tmp_path, monkeypatch, body, what):
    (tmp_path / "molequi_broken_verb.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_main, "VERBS", [*cli_main.VERBS, "molequi_broken_verb"])
    with pytest.raises(ImportError, match="molequi_broken_verb") as info:
        cli_main.build_parser()
    assert what in str(info.value)
    sys.modules.pop("molequi_broken_verb", None)


def test_a_verb_module_missing_from_the_install_is_an_error(monkeypatch):
    monkeypatch.setattr(cli_main, "VERBS", [*cli_main.VERBS, "molequi.cli.not_written"])
    with pytest.raises(ImportError, match="molequi.cli.not_written"):
        cli_main.build_parser()


def _argon_frames():
    """Three rattled argon crystals of 4 and 8 atoms and a 5-atom cluster."""
    frames = []
    for seed, reps in enumerate([(1, 1, 1), (2, 1, 1), (1, 1, 1)]):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * reps
        atoms.rattle(0.1, seed=seed)
        frames.append(atoms)
    cluster = bulk("Ar", "fcc", a=5.26, cubic=True)[:4] + bulk("Ar", "fcc", a=5.26, cubic=True)[:1]
    cluster.positions[-1] += [2.6, 2.6, 2.6]
    cluster.pbc, cluster.cell = False, None
    frames.append(cluster)
    return frames


def _mace():
    from molequi.data.statistics import Statistics
    from molequi.models.mace import MACE

    stats = Statistics(elements=[18], e0s={18: -0.05}, avg_num_neighbors=12.0)
    config = MACE.Config(r_max=5.0, hidden_irreps="4x0e+4x1o", max_ell=2, radial_MLP=[8, 8],
                         MLP_irreps="4x0e", correlation=2, num_interactions=2)
    torch.manual_seed(0)
    return MACE.from_config(config, stats).double(), config, stats.to_dict()


@pytest.mark.parametrize("name", [
    "mace",
    "lj",  # parameter-free: the evaluation dtype comes from its buffers
])
def test_eval_metrics_of_known_errors(tmp_path, capsys, name):
    """Labels = the model's own prediction (through the ASE calculator) + known offsets, so the metrics
    eval prints must be the offsets' MAE / RMSE, computed here with numpy."""
    if name == "lj":
        model = LennardJones()
        config, stats = model.config, {"elements": [18]}
    else:
        model, config, stats = _mace()
    save_model(make_payload(config={"model": {"name": name, **to_plain(config)}}, statistics=stats,
                            model_state=model.state_dict(), dtype=torch.float64), tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    frames, de, df = [], [], []
    for atoms in _argon_frames():
        atoms.calc = MolequiCalculator(model)
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        de.append(rng.normal(0, 0.05))
        df.append(rng.normal(0, 0.02, f.shape))
        atoms.calc = SinglePointCalculator(atoms, energy=e - de[-1], forces=f - df[-1])
        frames.append(atoms)
    write_extxyz(tmp_path / "labelled.xyz", frames)
    de, df = np.array(de), np.concatenate(df)
    n = np.array([len(a) for a in frames])

    assert cli_main.main(["eval", str(tmp_path / "model.pt"), str(tmp_path / "labelled.xyz"), "--json",
                          "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n_structures"] == len(frames) and metrics["n_atoms"] == n.sum()
    assert metrics["energy_mae"] == pytest.approx(np.abs(de).mean(), abs=1e-6)
    assert metrics["energy_rmse"] == pytest.approx(np.sqrt((de**2).mean()), abs=1e-6)
    assert metrics["energy_mae_per_atom"] == pytest.approx(np.abs(de / n).mean(), abs=1e-7)
    assert metrics["forces_mae"] == pytest.approx(np.abs(df).mean(), abs=1e-6)
    assert metrics["forces_rmse"] == pytest.approx(np.sqrt((df**2).mean()), abs=1e-6)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    rows = (tmp_path / "eval" / "errors.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(frames) and (tmp_path / "eval" / "parity.png").stat().st_size > 1000
