"""Orbital basis specifications: which shells each element has, where its AOs sit, and how they rotate.

``OrbitalBasis("def2-svp")`` is an immutable value: it reads the shells of each element once from PySCF's
basis data (``pyscf.gto.basis.load``; def2-SVP gives H 2s1p, C/N/O/F 3s2p1d) and derives everything else:

* ``shells(Z)``          angular momenta l of the element's shells, in PySCF AO order (l, then shell, then m)
* ``nao(Z)``, ``ao_offsets(numbers)`` / ``ao_slices(numbers)``   AO layout of a molecule (PySCF order)
* ``padded_shells``      the union layout (per l, the maximum shell count over elements); every element's
                         orbitals are a subset of it, ``padded_mask(Z)`` marks which. Used to batch
                         molecules of different elements through one set of dense atom blocks.
* ``pair_irreps(l1, l2)`` irreps of an l1 x l2 orbital block: |l1 - l2| .. l1 + l2, parity (-1)^(l1+l2)
* ``pyscf_to_e3nn(l)``   the orthogonal (2l+1, 2l+1) matrix T_l with  v_e3nn = T_l v_pyscf.

Orientation conventions (verified numerically, see ``tests/hamiltonian/test_basis.py``)::

    PySCF real spherical AOs are ordered m = -l..l with z the polar axis; p shells are (px, py, pz).
    e3nn 0.6 spherical harmonics have **y** as the polar axis and its l = 1 basis is (x, y, z)
    (``o3.Irrep("1o").D_from_matrix(R) == R``). Hence for e3nn 0.6:
        p: T_1 is the identity (the often-quoted permutation [1, 2, 0] is for the older (y, z, x) convention)
        d and higher: T_l is not a permutation but a fixed rotation (the D^l of the frame change z -> y).
    ``pyscf_to_e3nn`` computes T_l by fitting PySCF's AO values to e3nn's harmonics on points of the unit
    sphere, so it stays right whatever either library's convention is; the fit is exact (residual ~1e-14).
    Then, for a rotation R, a PySCF-ordered matrix M of a molecule transforms as
        M(R x) = D(R) M(x) D(R)^T,   D = blockdiag over shells of  T_l^T D^l_e3nn(R) T_l.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from molequi.errors import ConfigError, ModelError, suggest

DEFAULT_ELEMENTS = (1, 6, 7, 8, 9)
L_LETTERS = "spdfghi"


@functools.cache
def _element_shells(basis: str, z: int) -> tuple[int, ...]:
    """Angular momenta of the shells of element ``z`` in ``basis``, in PySCF's AO order."""
    from pyscf import gto
    from pyscf.data.elements import ELEMENTS

    symbol = ELEMENTS[z]
    try:
        gto.basis.load(basis, symbol)
    except Exception as exc:  # PySCF raises bare Exceptions / KeyErrors / RuntimeErrors for unknown names
        raise ConfigError(
            f"PySCF has no basis '{basis}' for {symbol}: {exc}",
        ) from exc
    mol = gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=basis, spin=z % 2, verbose=0)
    ls = []
    for b in range(mol.nbas):
        ls.extend([int(mol.bas_angular(b))] * int(mol.bas_nctr(b)))
    # PySCF writes an atom's AOs shell by shell in _bas order; check that this is sorted by l as documented
    ao_l = [L_LETTERS.index(_label_l(lab)) for lab in mol.ao_labels(fmt=False)]
    expanded = [l for l in ls for _ in range(2 * l + 1)]
    if ao_l != expanded:
        raise ConfigError(f"unexpected AO layout for {symbol} in {basis}: {ao_l} vs shells {ls}")
    return tuple(ls)


def _label_l(label) -> str:
    # label = (atom index, symbol, 'nl', 'm-part'), e.g. (0, 'O', '2p', 'x')
    return label[2][-1]


@functools.cache
def pyscf_to_e3nn(l: int) -> np.ndarray:
    """Orthogonal (2l+1, 2l+1) T_l with v_e3nn = T_l @ v_pyscf for real spherical harmonics of degree l.

    Fitted on 200 random unit vectors: PySCF AO values of a single primitive (radial part constant on the
    sphere) against ``e3nn.o3.spherical_harmonics(l, normalize=True)``; rows are renormalised to unit length.
    """
    if l == 0:
        return np.ones((1, 1))
    import torch
    from e3nn import o3
    from pyscf import gto

    rng = np.random.default_rng(1234)
    r = rng.normal(size=(200, 3))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    mol = gto.M(atom=[("Ne", (0.0, 0.0, 0.0))], basis={"Ne": [[l, (1.0, 1.0)]]}, verbose=0)
    ao = mol.eval_gto("GTOval_sph", r)  # (200, 2l+1), PySCF m order
    y = o3.spherical_harmonics(l, torch.as_tensor(r), normalize=True).double().numpy()  # (200, 2l+1)
    # ao = y @ A  ->  pyscf function k = sum_m y_m A[m, k]; v_e3nn = A v_pyscf (up to scale)
    a, res, *_ = np.linalg.lstsq(y, ao, rcond=None)
    a /= np.linalg.norm(a, axis=0, keepdims=True)
    if not np.allclose(a.T @ a, np.eye(2 * l + 1), atol=1e-8):
        raise RuntimeError(f"PySCF and e3nn l={l} harmonics are not related by a rotation")
    # exact permutation-with-signs where one exists: snap the tiny fit noise
    snapped = np.round(a)
    if np.allclose(a, snapped, atol=1e-8):
        a = snapped
    return a


@dataclass(frozen=True)
class OrbitalBasis:
    """Shells and AO layout of a Gaussian basis for a set of elements (see module docstring).

    Parameters: ``name`` a PySCF basis name (case-insensitive, e.g. "def2-svp", "6-31g", "cc-pvdz");
    ``elements`` the atomic numbers the basis must cover (default H, C, N, O, F).
    """

    name: str = "def2-svp"
    elements: tuple[int, ...] = DEFAULT_ELEMENTS
    _shells: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "name", self.name.lower())
        elements = tuple(sorted(set(int(z) for z in self.elements)))
        if not elements:
            raise ConfigError("an orbital basis needs at least one element")
        object.__setattr__(self, "elements", elements)
        object.__setattr__(self, "_shells", tuple(_element_shells(self.name, z) for z in elements))

    # ---- per element
    def _index(self, z: int) -> int:
        try:
            return self.elements.index(int(z))
        except ValueError:
            raise ModelError(
                f"element Z={int(z)} is not in the orbital basis (elements {list(self.elements)})",
            ) from None

    def shells(self, z: int) -> tuple[int, ...]:
        """Angular momenta of the shells of element ``z`` (PySCF order), e.g. (0, 0, 1) for H in def2-SVP."""
        return self._shells[self._index(z)]

    def nao(self, z: int) -> int:
        """Number of (spherical) AOs of element ``z``."""
        return sum(2 * l + 1 for l in self.shells(z))

    def describe(self, z: int) -> str:
        """Shell summary such as '3s2p1d'."""
        ls = self.shells(z)
        return "".join(f"{ls.count(l)}{L_LETTERS[l]}" for l in sorted(set(ls)))

    def irreps(self, z: int):
        """e3nn Irreps of the element's AOs, shell by shell (e.g. 1x0e+1x0e+1x1o for H)."""
        from e3nn import o3

        return o3.Irreps([(1, (l, (-1) ** l)) for l in self.shells(z)])

    @property
    def lmax(self) -> int:
        return max(max(s) for s in self._shells)

    # ---- padded (union) layout for batching
    @functools.cached_property
    def padded_shells(self) -> tuple[int, ...]:
        """Per l (ascending), the maximum number of shells over elements, expanded: e.g. (0,0,0,1,1,2)."""
        counts = [max(s.count(l) for s in self._shells) for l in range(self.lmax + 1)]
        return tuple(l for l in range(self.lmax + 1) for _ in range(counts[l]))

    @functools.cached_property
    def padded_dim(self) -> int:
        return sum(2 * l + 1 for l in self.padded_shells)

    def padded_index(self, z: int) -> np.ndarray:
        """(nao(z),) positions of the element's AOs (PySCF order) inside the padded layout."""
        starts, off = [], 0
        for l in self.padded_shells:
            starts.append(off)
            off += 2 * l + 1
        taken: dict[int, int] = {}
        idx = []
        for l in self.shells(z):
            k = taken.get(l, 0)
            taken[l] = k + 1
            shell_pos = [i for i, ll in enumerate(self.padded_shells) if ll == l][k]
            idx.extend(range(starts[shell_pos], starts[shell_pos] + 2 * l + 1))
        return np.asarray(idx, dtype=np.int64)

    def padded_mask(self, z: int) -> np.ndarray:
        """(padded_dim,) bool: which padded orbitals element ``z`` has."""
        m = np.zeros(self.padded_dim, dtype=bool)
        m[self.padded_index(z)] = True
        return m

    @functools.cached_property
    def padded_mask_table(self) -> np.ndarray:
        """(max Z + 1, padded_dim) bool mask indexed by atomic number (all False for absent elements)."""
        t = np.zeros((max(self.elements) + 1, self.padded_dim), dtype=bool)
        for z in self.elements:
            t[z] = self.padded_mask(z)
        return t

    # ---- molecules
    def ao_offsets(self, numbers: Sequence[int]) -> np.ndarray:
        """(n + 1,) AO offsets of each atom in a molecule's PySCF-ordered AO matrix."""
        return np.concatenate([[0], np.cumsum([self.nao(z) for z in np.asarray(numbers).tolist()])]).astype(
            np.int64
        )

    def ao_slices(self, numbers: Sequence[int]) -> list[slice]:
        off = self.ao_offsets(numbers)
        return [slice(int(a), int(b)) for a, b in zip(off[:-1], off[1:])]

    def molecule_nao(self, numbers: Sequence[int]) -> int:
        return int(self.ao_offsets(numbers)[-1])

    def ao_transform(self, numbers: Sequence[int]) -> np.ndarray:
        """(nao, nao) orthogonal block-diagonal U with  M_e3nn = U M_pyscf U^T  (per shell T_l)."""
        nao = self.molecule_nao(numbers)
        u = np.zeros((nao, nao))
        off = 0
        for z in np.asarray(numbers).tolist():
            for l in self.shells(z):
                d = 2 * l + 1
                u[off : off + d, off : off + d] = pyscf_to_e3nn(l)
                off += d
        return u

    def wigner_D(self, numbers: Sequence[int], rotation) -> np.ndarray:
        """(nao, nao) matrix D with M(R x) = D M(x) D^T for PySCF-ordered AO matrices; ``rotation`` (3, 3)."""
        import torch
        from e3nn import o3

        r = torch.as_tensor(np.asarray(rotation, dtype=np.float64))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # e3nn builds its generators in the default dtype
        try:
            return self._wigner_D(numbers, r, o3)
        finally:
            torch.set_default_dtype(previous)

    def _wigner_D(self, numbers, r, o3) -> np.ndarray:
        nao = self.molecule_nao(numbers)
        dm = np.zeros((nao, nao))
        off = 0
        cache = {}
        for z in np.asarray(numbers).tolist():
            for l in self.shells(z):
                if l not in cache:
                    de = o3.Irrep(l, (-1) ** l).D_from_matrix(r).double().numpy()
                    t = pyscf_to_e3nn(l)
                    cache[l] = t.T @ de @ t
                d = 2 * l + 1
                dm[off : off + d, off : off + d] = cache[l]
                off += d
        return dm

    def atom_permutation(self, numbers: Sequence[int], perm: Sequence[int]) -> np.ndarray:
        """AO index array P such that permuting atoms by ``perm`` (new atom i = old atom perm[i]) maps an
        AO matrix M to M[P][:, P]."""
        sl = self.ao_slices(numbers)
        return np.concatenate([np.arange(sl[p].start, sl[p].stop) for p in perm]).astype(np.int64)

    def orca_to_pyscf(self, numbers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(perm, sign) with  M_pyscf = (M_orca * outer(sign, sign))[perm][:, perm]  (s, p, d shells).

        ORCA orders p as (pz, px, py) and d as (dz2, dxz, dyz, dx2-y2, dxy); PySCF as (px, py, pz) and
        (dxy, dyz, dz2, dxz, dx2-y2). No sign changes for l <= 2 (ORCA flips some f and g functions,
        which this reader refuses).
        """
        per_l = {0: [0], 1: [1, 2, 0], 2: [4, 2, 0, 1, 3]}
        perm, off = [], 0
        for z in np.asarray(numbers).tolist():
            for l in self.shells(z):
                if l not in per_l:
                    raise ModelError(f"ORCA {L_LETTERS[l]} functions need sign conventions this reader lacks")
                perm.extend(off + i for i in per_l[l])
                off += 2 * l + 1
        return np.asarray(perm, dtype=np.int64), np.ones(off)

    def pair_irreps(self, l1: int, l2: int):
        """Irreps of an (l1, l2) orbital block: L = |l1-l2|..l1+l2, parity (-1)^(l1+l2)."""
        from e3nn import o3

        p = (-1) ** (l1 + l2)
        return o3.Irreps([(1, (L, p)) for L in range(abs(l1 - l2), l1 + l2 + 1)])

    def check_numbers(self, numbers: Sequence[int]) -> None:
        bad = sorted(set(int(z) for z in np.asarray(numbers).tolist()) - set(self.elements))
        if bad:
            raise ModelError(
                f"elements {bad} are not in the orbital basis {self.name} (covers {list(self.elements)})",
            )


def basis_names_hint(name: str) -> str:
    from pyscf.gto.basis import ALIAS

    return suggest(name.lower().replace("-", "").replace("_", ""), ALIAS)


__all__ = ["OrbitalBasis", "pyscf_to_e3nn", "DEFAULT_ELEMENTS"]
