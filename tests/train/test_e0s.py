"""``task.E0s`` (``molequi.train.e0s``): fit | average | isolated_atoms | {Z or symbol: eV}, on an extended
XYZ file written by ASE in MACE's convention (REF_energy, REF_forces, single-atom config_type=IsolatedAtom
frames).

References: numpy's least squares on the frame compositions (mace-torch's ``compute_average_E0s`` is
``np.linalg.lstsq(A, B, rcond=None)`` over the training frames once the IsolatedAtom frames are taken out;
checked once by hand with mace-torch 0.3.16 on this same file, equal to 1e-12 eV), and the energies written
into the IsolatedAtom frames.
"""

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write

from molequi.config import Config
from molequi.data.readers import read_extxyz
from molequi.data.statistics import compute_statistics
from molequi.errors import ConfigError, DatasetError, MissingE0Error
from molequi.train.e0s import is_isolated_atom, prepare_e0s
from molequi.train.run import train

TRUE_E0 = {1: -13.6, 6: -1029.8, 8: -2041.3}
ISOLATED = {1: -13.5, 6: -1030.2, 8: -2040.9}  # not the least-squares values, so the two are told apart
TINY = {"name": "mace", "r_max": 3.0, "num_bessel": 4, "max_ell": 1, "hidden_irreps": "4x0e+4x1o",
        "correlation": 2, "num_interactions": 1, "MLP_irreps": "4x0e", "radial_MLP": [8]}


def _frames(isolated=(1, 6, 8)):
    rng = np.random.default_rng(0)
    frames = []
    for name in (["H2O", "CH4", "CO2", "CH3OH", "H2", "C2H6", "CH3CHO", "H2O2"] * 2):
        a = molecule(name)
        a.positions += rng.normal(scale=0.02, size=a.positions.shape)
        a.info["REF_energy"] = sum(TRUE_E0[z] for z in a.numbers) + rng.normal(scale=0.3)
        a.arrays["REF_forces"] = rng.normal(scale=0.5, size=(len(a), 3))
        a.info["config_type"] = "molecule"
        frames.append(a)
    for z in isolated:
        a = molecule({1: "H", 6: "C", 8: "O"}[z])
        a.info.update(REF_energy=ISOLATED[z], config_type="IsolatedAtom")
        a.arrays["REF_forces"] = np.zeros((1, 3))
        frames.insert(3 * len(frames) // 4, a)  # anywhere in the file
    return frames


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("e0s") / "train.xyz"
    write(path, _frames(), format="extxyz")
    return read_extxyz(path)


def _lstsq(records):
    zs = [1, 6, 8]
    a = np.array([[int((r.numbers == z).sum()) for z in zs] for r in records], dtype=float)
    b = np.array([float(r.energy) for r in records])
    return dict(zip(zs, np.linalg.lstsq(a, b, rcond=None)[0]))


def _e0s(setting, records):
    splits, given = prepare_e0s(setting, {"train": records, "valid": [], "test": []})
    stats = compute_statistics(splits["train"], 3.0, e0s=given)
    return splits["train"], stats.e0s


def test_average_is_mace_torch_least_squares_without_isolated_atoms(records):
    assert sum(map(is_isolated_atom, records)) == 3
    train_set, e0s = _e0s("average", records)
    molecules = [r for r in records if not is_isolated_atom(r)]
    assert len(train_set) == len(molecules) == 16
    ref = _lstsq(molecules)
    for z in (1, 6, 8):
        assert e0s[z] == pytest.approx(ref[z], abs=1e-9)
    # fit (molequi's default) keeps every frame, the isolated atoms included: another least squares
    kept, fit = _e0s("fit", records)
    assert len(kept) == 19
    ref_all = _lstsq(records)
    for z in (1, 6, 8):
        assert fit[z] == pytest.approx(ref_all[z], abs=1e-9)
    assert max(abs(fit[z] - e0s[z]) for z in (1, 6, 8)) > 1e-3


def test_isolated_atoms_and_given_values(records):
    train_set, e0s = _e0s("isolated_atoms", records)
    assert e0s == pytest.approx(ISOLATED, rel=1e-7)  # the records hold float32 energies
    assert len(train_set) == 16 and not any(map(is_isolated_atom, train_set))
    _, given = _e0s({"H": -1.0, 6: -2.0, "8": -3.0}, records)
    assert given == {1: -1.0, 6: -2.0, 8: -3.0}


def test_missing_e0_is_a_named_error(records, tmp_path):
    cfg = {"model": TINY, "task": {"E0s": {1: -13.6, 8: -2041.3}},
           "trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 1, "output": str(tmp_path / "a"),
                       "progress_bar": False}}
    with pytest.raises(MissingE0Error, match=r"no E0 for C \(Z=6\)"):
        train(Config.from_dict(cfg), splits={"train": records, "valid": [], "test": []})
    path = tmp_path / "no_carbon_atom.xyz"
    write(path, _frames(isolated=(1, 8)), format="extxyz")
    cfg["task"]["E0s"] = "isolated_atoms"
    cfg["trainer"]["output"] = str(tmp_path / "b")
    with pytest.raises(MissingE0Error, match=r"no E0 for C \(Z=6\)"):
        train(Config.from_dict(cfg), splits={"train": read_extxyz(path), "valid": [], "test": []})
    write(path, _frames(isolated=()), format="extxyz")
    with pytest.raises(MissingE0Error, match="no single-atom frame with config_type=IsolatedAtom"):
        prepare_e0s("isolated_atoms", {"train": read_extxyz(path)})
    with pytest.raises(ConfigError, match="'Xx' is not a chemical symbol"):
        prepare_e0s({"Xx": 1.0}, {"train": []})
    with pytest.raises(ConfigError, match="E0s must be one of fit, average, isolated_atoms"):
        Config.from_dict({"task": {"E0s": "mean"}})
    bad = [r.clone() for r in records]
    iso = next(i for i, r in enumerate(bad) if is_isolated_atom(r))
    del bad[iso].energy
    with pytest.raises(DatasetError, match=f"train frame {iso}: config_type=IsolatedAtom"):
        prepare_e0s("average", {"train": bad})


def test_training_run_uses_isolated_atoms(records, tmp_path):
    """A whole run from MACE-convention records (strings in the batches): E0s from the IsolatedAtom frames,
    which are not trained on (the statistics count 16 structures)."""
    from molequi.checkpoint import read_checkpoint

    cfg = Config.from_dict({"model": TINY, "task": {"E0s": "isolated_atoms"},
                            "optim": {"scheduler": "none", "ema_decay": None},
                            "trainer": {"max_steps": 2, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                                        "output": str(tmp_path / "run"), "progress_bar": False}})
    result = train(cfg, splits={"train": records, "valid": records[:4], "test": []}, enable_summary=False)
    stats = read_checkpoint(result.model_path)["statistics"]
    assert stats["e0s"] == pytest.approx(ISOLATED, rel=1e-7) and stats["n_structures"] == 16
    assert read_checkpoint(result.model_path)["config"]["task"]["E0s"] == "isolated_atoms"
