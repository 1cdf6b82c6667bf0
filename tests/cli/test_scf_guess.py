"""``molequi scf-guess`` end to end: a (tiny, untrained) Hamiltonian checkpoint's Fock matrix starts PySCF, and
both runs, the predicted guess and minao, reach the energy PySCF reaches on its own. A trained model's
prediction is exercised in tests/hamiltonian/test_scf_warm_start.py."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from molequi.checkpoint import make_payload, save_model
from molequi.cli.main import main
from molequi.config import to_plain

WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])  # Å


@pytest.mark.qm
@pytest.mark.slow
def test_scf_guess_reaches_pyscfs_own_energy(tmp_path, capsys):
    from pyscf import dft, gto

    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig

    # saved under the old name 'qhnet' with the old model's fields: loads as hamiltonian_conv
    config = HamiltonianConvConfig(channels=6, num_layers=1, num_radial=8, radial_hidden=8, elements=[1, 8])
    torch.manual_seed(0)
    model = HamiltonianConv(config).double()
    save_model(make_payload(config={"model": {"name": "qhnet", **to_plain(config)},
                                    "task": {"name": "hamiltonian"}},
                            statistics={"elements": [1, 8]}, model_state=model.state_dict(),
                            dtype=torch.float64), tmp_path / "qhnet.pt")
    ase.io.write(tmp_path / "water.xyz", Atoms("OH2", positions=WATER))

    assert main(["scf-guess", str(tmp_path / "qhnet.pt"), str(tmp_path / "water.xyz"), "--xc", "pbe",
                 "--basis", "def2-svp", "--json", str(tmp_path / "scf.json")]) == 0
    out = capsys.readouterr().out
    assert "frame 0: predicted guess" in out and "minao" in out
    (row,) = json.loads((tmp_path / "scf.json").read_text())

    mol = gto.M(atom=[("O", WATER[0]), ("H", WATER[1]), ("H", WATER[2])], basis="def2-svp", unit="Angstrom")
    mf = dft.RKS(mol)
    mf.xc, mf.conv_tol, mf.verbose = "pbe", 1e-9, 0
    reference = mf.kernel()
    assert mf.converged
    assert row["predicted"]["e_tot"] == pytest.approx(reference, abs=1e-6)
    assert row["reference"]["e_tot"] == pytest.approx(reference, abs=1e-6)
    assert row["predicted"]["cycles"] > 0 and row["reference"]["cycles"] > 0


def test_cycles_change_says_more_when_the_predicted_guess_is_worse():
    from molequi.cli.scf_guess import cycles_change

    assert cycles_change([9, 9], [7, 7]) == "29% more in total"  # 18 vs 14 cycles: (18 - 14) / 14
    assert cycles_change([5, 5], [8, 8]) == "38% fewer in total"  # 10 vs 16: 6 / 16
    assert cycles_change([7], [7]) == "the same in total"
