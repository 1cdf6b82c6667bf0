"""OrbitalBasis: shells from PySCF, AO layout, padding, and the PySCF <-> e3nn rotation convention."""

import numpy as np
import pytest
import torch
from e3nn import o3

from molequi.errors import ModelError
from molequi.so3.basis import OrbitalBasis, pyscf_to_e3nn

pytestmark = pytest.mark.qm  # shells and AO conventions come from PySCF


def test_def2svp_shells_and_layout():
    b = OrbitalBasis("def2-svp")
    assert b.describe(1) == "2s1p" and b.nao(1) == 5
    for z in (6, 7, 8, 9):
        assert b.describe(z) == "3s2p1d" and b.nao(z) == 14
    assert b.padded_shells == (0, 0, 0, 1, 1, 2) and b.padded_dim == 14
    assert b.padded_index(1).tolist() == [0, 1, 3, 4, 5]
    assert b.molecule_nao([8, 1, 1]) == 24
    assert [s.start for s in b.ao_slices([8, 1, 1])] == [0, 14, 19]
    assert str(b.pair_irreps(1, 2)) == "1x1o+1x2o+1x3o"


def test_layout_matches_pyscf_ao_labels():
    from pyscf import gto

    b = OrbitalBasis("def2-svp")
    mol = gto.M(atom="C 0 0 0; O 0 0 1.2; H 0 1 -0.5; H 0 -1 -0.5", basis="def2-svp", verbose=0)
    ls = ["spdf".index(lab[2][-1]) for lab in mol.ao_labels(fmt=False)]
    ours = [l for z in (6, 8, 1, 1) for l in b.shells(z) for _ in range(2 * l + 1)]
    assert ours == ls
    assert b.ao_offsets([6, 8, 1, 1]).tolist() == [0, 14, 28, 33, 38]
    # another basis from PySCF's data
    assert OrbitalBasis("6-31g", elements=(1, 8)).describe(8) == "3s2p"


def test_p_and_d_conventions():
    # e3nn 0.6: l=1 is (x, y, z) like PySCF's (px, py, pz); l=2 is a fixed rotation, not a permutation
    assert np.allclose(pyscf_to_e3nn(1), np.eye(3))
    t2 = pyscf_to_e3nn(2)
    assert np.allclose(t2 @ t2.T, np.eye(5), atol=1e-10)
    assert not np.allclose(np.abs(t2), np.round(np.abs(t2)))


def test_overlap_rotates_with_block_wigner_d():
    """S(R x) = D(R) S(x) D(R)^T with D from e3nn's Wigner-D through the fitted change of basis (float64)."""
    from pyscf import gto

    b = OrbitalBasis("def2-svp")
    z = [6, 8, 1, 1]
    x = np.array([[0, 0, 0], [0.1, 0.2, 1.2], [0, 0.95, -0.5], [0.1, -0.9, -0.6]])
    torch.manual_seed(1)
    r = o3.rand_matrix(dtype=torch.float64).numpy()

    def ovlp(p):
        return gto.M(atom=list(zip(z, map(tuple, p))), basis="def2-svp", verbose=0).intor("int1e_ovlp")

    d = b.wigner_D(z, r)
    assert np.abs(ovlp(x @ r.T) - d @ ovlp(x) @ d.T).max() < 1e-10


def test_unknown_element_is_named():
    b = OrbitalBasis("def2-svp")
    with pytest.raises(ModelError, match="not in the orbital basis"):
        b.nao(17)
    with pytest.raises(ModelError):
        b.check_numbers([8, 1, 17])


def test_orca_permutation_is_a_permutation():
    b = OrbitalBasis("def2-svp")
    perm, sign = b.orca_to_pyscf([8, 1])
    assert sorted(perm.tolist()) == list(range(19)) and np.all(sign == 1)
    assert perm[3:6].tolist() == [
        4,
        5,
        3,
    ]  # PySCF px, py, pz = ORCA entries 1, 2, 0 of the (pz, px, py) shell
