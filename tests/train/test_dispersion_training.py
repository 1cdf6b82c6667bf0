"""data.dispersion (issue 20 item 7): D3 is subtracted from the labels before training and added back by
MolequiCalculator.from_checkpoint, as MACE users train on DFT labels minus D3 and add D3 at inference."""

import numpy as np
import pytest
from ase.units import Bohr, Hartree
from dftd3.interface import DispersionModel, RationalDampingParam

from molequi import keys as K
from molequi.calculators import MolequiCalculator
from molequi.config import Config
from molequi.data.records import data_to_atoms
from molequi.errors import ConfigError
from molequi.train.data import apply_dispersion
from molequi.train.run import train

SPEC = {"method": "d3bj", "functional": "pbe", "three_body": False}


def _s_dftd3(atoms):
    """s-dftd3's reference D3(BJ)-PBE energy (eV) and forces (eV/Å) of a molecule."""
    res = DispersionModel(atoms.numbers, atoms.positions / Bohr).get_dispersion(
        RationalDampingParam(method="pbe"), grad=True)
    return res["energy"] * Hartree, -res["gradient"] * Hartree / Bohr


def config(tmp_path, **data):
    return Config.from_dict({
        "model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
        "data": data,
        "optim": {"lr": 0.01, "scheduler": "none"},
        "trainer": {"max_steps": 3, "batch_size": 2, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1},
    })


def test_labels_lose_d3_and_the_calculator_adds_it_back(tmp_path, morse_five):
    corrected = apply_dispersion({"train": morse_five}, SPEC)["train"]
    for before, after in zip(morse_five, corrected):  # float32 records: float32 round-off
        e, f = _s_dftd3(data_to_atoms(before))
        assert float(after[K.ENERGY]) == pytest.approx(float(before[K.ENERGY]) - e, abs=1e-6)
        np.testing.assert_allclose(after[K.FORCES].numpy(), before[K.FORCES].numpy() - f, atol=1e-6)
        assert abs(e) > 1e-3
    assert float(morse_five[0][K.ENERGY]) != float(corrected[0][K.ENERGY])  # the inputs are not modified

    train(config(tmp_path, dispersion=SPEC), splits={"train": morse_five, "valid": [], "test": []},
          enable_summary=False)
    ckpt = tmp_path / "run" / "model.pt"
    with_d3 = MolequiCalculator.from_checkpoint(str(ckpt))
    without = MolequiCalculator.from_checkpoint(str(ckpt), dispersion=None)
    assert with_d3.dispersion is not None and without.dispersion is None
    atoms = data_to_atoms(morse_five[0])
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = with_d3, without
    e, f = _s_dftd3(atoms)
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy() + e, abs=1e-9)
    np.testing.assert_allclose(a.get_forces(), b.get_forces() + f, atol=1e-9)


def test_bad_dispersion_fails_before_data_is_read(tmp_path):
    class Unread(dict):
        def __getitem__(self, key):
            raise AssertionError("the data was read before the dispersion check")

    with pytest.raises(ConfigError, match="not one of d3bj, d3zero"):
        train(config(tmp_path, dispersion="d4"), splits=Unread(), enable_summary=False)
