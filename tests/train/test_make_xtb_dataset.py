"""scripts/make_xtb_dataset.py: 3 GFN2-xTB frames of water, read back by molequi's extxyz reader."""

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    spec = importlib.util.spec_from_file_location("make_xtb_dataset",
                                                  os.path.join(ROOT, "scripts", "make_xtb_dataset.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.qm
def test_three_water_frames(tmp_path):
    from molequi.data.readers import read_structures

    out = tmp_path / "water.xyz"
    assert load_script().main(["O", "-n", "3", "--every", "2", "--equilibrate", "2", "-o", str(out),
                               "--no-progress"]) == 0
    records = read_structures(out)
    assert len(records) == 3
    for r in records:
        assert r.numbers.tolist() == [8, 1, 1]
        # GFN2-xTB total energy of water is about -5.07 Hartree = -138 eV
        assert -140 < float(r.energy) < -136
        f = r.forces.numpy()
        assert np.abs(f.sum(0)).max() < 1e-3  # no net force on an isolated molecule
        assert np.abs(f).max() < 10
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
