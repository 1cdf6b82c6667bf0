"""Hamiltonian (Fock / Kohn-Sham matrix) datasets: labelling with PySCF, an on-disk store, public readers.

Stored quantities, per geometry (all matrices in **PySCF AO order** and **Hartree**):
    numbers   (n,) int           atomic numbers
    pos       (n, 3) float64     positions, Å
    fock      (nao, nao) float64 converged Kohn-Sham matrix ``mf.get_fock()``, Hartree
    overlap   (nao, nao) float64 AO overlap ``mf.get_ovlp()`` (dimensionless)
    energy    float              total energy ``mf.e_tot``, Hartree
    forces    (n, 3) float64     -dE/dR, Hartree/Bohr
    mo_energy (nao,) float64     converged orbital energies, Hartree
    n_elec    int                number of electrons
Conversion into molequi's eV / Å happens once, in ``HamiltonianDataset`` (energies, forces); H stays in
Hartree because every Hamiltonian metric in the literature is in (micro-)Hartree.

On-disk layout (``HamiltonianStore``), a directory::

    index.json                       {"format": "molequi-hamiltonian/1", "basis", "xc", "shards": [...], ...}
    shard_00000/numbers.npy          (sum n,) int64        all atoms of the shard, concatenated
    shard_00000/pos.npy              (sum n, 3)
    shard_00000/forces.npy           (sum n, 3)
    shard_00000/atom_ptr.npy         (m + 1,) offsets into the atom arrays
    shard_00000/fock.npy             (sum nao^2,) flattened matrices
    shard_00000/overlap.npy          (sum nao^2,)
    shard_00000/mo_energy.npy        (sum nao,)
    shard_00000/nao.npy, mat_ptr.npy, orb_ptr.npy, energy.npy, n_elec.npy
Arrays are opened with ``np.load(mmap_mode="r")``, so a record is read by slicing without loading the
shard. Every shard is written to a temporary directory and renamed into place; ``index.json`` is written
to a temporary file and renamed, so an interrupted run leaves a readable store of the finished shards.

Samplers: ``xtb-md`` (GFN2-xTB Langevin MD with tblite + ASE, 500 K like MD17) and ``normal-modes``
(random displacements along GFN2-xTB normal modes, Boltzmann-weighted at temperature T).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molequi.errors import DatasetError, FormatError, InputError, MissingKeyError
from molequi.io import atomic_write_text
from molequi.units import HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV

FORMAT = "molequi-hamiltonian/1"
_ATOM_FIELDS = ("numbers", "pos", "forces")


# --------------------------------------------------------------------------------------------------
# one labelled geometry
@dataclass
class HamiltonianRecord:
    """One labelled geometry. Matrices in PySCF AO order, Hartree; positions Å; forces Hartree/Bohr."""

    numbers: np.ndarray
    pos: np.ndarray
    fock: np.ndarray
    overlap: np.ndarray
    energy: float = float("nan")
    forces: np.ndarray | None = None
    mo_energy: np.ndarray | None = None
    n_elec: int = -1
    cycles: int = -1

    def __post_init__(self):
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        n = len(self.numbers)
        self.pos = np.asarray(self.pos, dtype=np.float64).reshape(n, 3)
        self.fock = np.asarray(self.fock, dtype=np.float64)
        self.overlap = np.asarray(self.overlap, dtype=np.float64)
        nao = self.fock.shape[0]
        if self.fock.shape != (nao, nao) or self.overlap.shape != (nao, nao):
            raise FormatError(
                f"fock {self.fock.shape} and overlap {self.overlap.shape} must be equal squares"
            )
        if self.forces is None:
            self.forces = np.full((n, 3), np.nan)
        self.forces = np.asarray(self.forces, dtype=np.float64).reshape(n, 3)
        if self.mo_energy is None:
            self.mo_energy = np.full(nao, np.nan)
        self.mo_energy = np.asarray(self.mo_energy, dtype=np.float64).reshape(nao)
        if self.n_elec < 0:
            self.n_elec = int(self.numbers.sum())

    @property
    def nao(self) -> int:
        return self.fock.shape[0]


# --------------------------------------------------------------------------------------------------
# PySCF labels
def pyscf_label(
    numbers: Sequence[int],
    pos_angstrom: np.ndarray,
    *,
    xc: str = "pbe",
    basis: str = "def2-svp",
    charge: int = 0,
    forces: bool = True,
    conv_tol: float = 1e-10,
    dm0: np.ndarray | None = None,
    grids_level: int = 3,
) -> HamiltonianRecord:
    """Run PySCF RKS at one geometry and return its converged Fock (Hartree) and overlap matrices.

    ``fock = mf.get_fock()`` at the converged density, so ``eigh(fock, overlap)`` reproduces
    ``mf.mo_energy``. Forces from ``mf.nuc_grad_method()`` (Hartree/Bohr, sign -dE/dR).
    Raises ``InputError`` if the SCF does not converge.
    """
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, np.asarray(pos_angstrom))],
        basis=basis,
        charge=charge,
        unit="Angstrom",
        verbose=0,
    )
    mf = dft.RKS(mol)
    mf.xc = xc
    mf.conv_tol = conv_tol
    mf.grids.level = grids_level
    e = mf.kernel(dm0=dm0)
    if not mf.converged:
        raise InputError(f"PySCF {xc}/{basis} SCF did not converge", hint="check the geometry")
    grad = mf.nuc_grad_method().kernel() if forces else None
    return HamiltonianRecord(
        numbers=np.asarray(numbers),
        pos=np.asarray(pos_angstrom),
        fock=mf.get_fock(),
        overlap=mf.get_ovlp(),
        energy=float(e),
        forces=None if grad is None else -np.asarray(grad),
        mo_energy=mf.mo_energy,
        n_elec=int(mol.nelectron),
        cycles=int(getattr(mf, "cycles", -1)),
    )


# --------------------------------------------------------------------------------------------------
# samplers
def _xtb_calc():
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # pragma: no cover - environment problem
        raise InputError("the xtb samplers need tblite (pip install tblite)") from exc
    return TBLite(method="GFN2-xTB", verbosity=0)


def sample_xtb_md(
    atoms,
    n: int,
    *,
    temperature: float = 500.0,
    timestep: float = 0.5,
    interval: int = 10,
    equilibration: int = 200,
    friction: float = 0.02,
    seed: int = 0,
):
    """``n`` snapshots of GFN2-xTB Langevin MD (ASE, tblite) at ``temperature`` K, every ``interval`` steps.

    timestep in fs; the first ``equilibration`` steps are discarded. Returns a list of ``ase.Atoms``.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = _xtb_calc()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(
        atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs, rng=rng
    )
    dyn.run(equilibration)
    frames = []
    for _ in range(n):
        dyn.run(interval)
        frames.append(atoms.copy())
    for f in frames:
        f.calc = None
    return frames


def sample_normal_modes(atoms, n: int, *, temperature: float = 500.0, seed: int = 0):
    """``n`` geometries displaced along GFN2-xTB normal modes of the relaxed structure.

    Each mode i with force constant k_i gets a Gaussian amplitude of variance k_B T / k_i (classical
    harmonic Boltzmann distribution at ``temperature`` K). Returns a list of ``ase.Atoms``.
    """
    from ase import units
    from ase.optimize import BFGS
    from ase.vibrations import VibrationsData

    atoms = atoms.copy()
    atoms.calc = _xtb_calc()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=500)
    hessian = _finite_difference_hessian(atoms)
    vib = VibrationsData.from_2d(atoms, hessian)
    k, modes = np.linalg.eigh(vib.get_hessian_2d())  # eV/Å^2, mass-unweighted, ascending
    # drop the translations and rotations (the 6, or 5 for a linear molecule, softest modes; finite
    # differences leave them slightly positive, and sqrt(kT / k) would blow them up) and any soft mode
    n_rigid = 5 if _is_linear(atoms.positions) else 6
    k, modes = k[n_rigid:], modes[:, n_rigid:]
    keep = k > 0.05
    k, modes = k[keep], modes[:, keep]
    rng = np.random.default_rng(seed)
    base = atoms.positions.copy()
    frames = []
    for _ in range(n):
        amp = rng.normal(size=len(k)) * np.sqrt(units.kB * temperature / k)
        new = atoms.copy()
        new.calc = None
        new.positions = base + (modes @ amp).reshape(-1, 3)
        frames.append(new)
    return frames


def _is_linear(pos: np.ndarray) -> bool:
    centred = pos - pos.mean(0)
    return len(pos) < 3 or np.linalg.svd(centred, compute_uv=False)[1] < 1e-3


def _finite_difference_hessian(atoms, delta: float = 5e-3) -> np.ndarray:
    pos0 = atoms.positions.copy()
    n3 = pos0.size
    h = np.zeros((n3, n3))
    for i in range(n3):
        for sign in (1, -1):
            p = pos0.copy().reshape(-1)
            p[i] += sign * delta
            atoms.positions = p.reshape(-1, 3)
            h[i] -= sign * atoms.get_forces().reshape(-1) / (2 * delta)
    atoms.positions = pos0
    return 0.5 * (h + h.T)


SAMPLERS = {"xtb-md": sample_xtb_md, "normal-modes": sample_normal_modes}


# --------------------------------------------------------------------------------------------------
# store
class HamiltonianStore:
    """Random-access reader over a store directory (see module docstring). ``len``, ``store[i]``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.exists():
            raise DatasetError(
                f"no index.json in {self.root}", hint="create the store with `molequi data hamiltonian`"
            )
        self.meta = json.loads(index.read_text())
        if self.meta.get("format") != FORMAT:
            raise FormatError(f"{index}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.shards = list(self.meta["shards"])
        counts = [s["count"] for s in self.shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    @property
    def basis(self) -> str:
        return self.meta["basis"]

    @property
    def xc(self) -> str:
        return self.meta["xc"]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._cache:
            d = self.root / self.shards[s]["name"]
            self._cache[s] = {f.stem: np.load(f, mmap_mode="r") for f in d.glob("*.npy")}
        return self._cache[s]

    def __getitem__(self, i: int) -> HamiltonianRecord:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[s])
        a = self._shard(s)
        a0, a1 = int(a["atom_ptr"][j]), int(a["atom_ptr"][j + 1])
        m0, m1 = int(a["mat_ptr"][j]), int(a["mat_ptr"][j + 1])
        o0, o1 = int(a["orb_ptr"][j]), int(a["orb_ptr"][j + 1])
        nao = int(a["nao"][j])
        return HamiltonianRecord(
            numbers=np.array(a["numbers"][a0:a1]),
            pos=np.array(a["pos"][a0:a1]),
            forces=np.array(a["forces"][a0:a1]),
            fock=np.array(a["fock"][m0:m1]).reshape(nao, nao),
            overlap=np.array(a["overlap"][m0:m1]).reshape(nao, nao),
            mo_energy=np.array(a["mo_energy"][o0:o1]),
            energy=float(a["energy"][j]),
            n_elec=int(a["n_elec"][j]),
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class HamiltonianStoreWriter:
    """Append records, flushed into shards of ``shard_size`` records, each written atomically."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        basis: str,
        xc: str,
        shard_size: int = 100,
        extra_meta: dict | None = None,
        overwrite: bool = False,
    ):
        self.root = Path(root)
        if (self.root / "index.json").exists() and not overwrite:
            raise DatasetError(
                f"{self.root} already holds a store", hint="choose another --out or pass --overwrite"
            )
        if overwrite and self.root.exists():
            for p in self.root.glob("shard_*"):
                shutil.rmtree(p)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = {
            "format": FORMAT,
            "basis": basis,
            "xc": xc,
            "units": {
                "fock": "Hartree",
                "overlap": "1",
                "energy": "Hartree",
                "forces": "Hartree/Bohr",
                "pos": "Angstrom",
                "mo_energy": "Hartree",
            },
            "ao_order": "pyscf",
            "shards": [],
            **(extra_meta or {}),
        }
        self.shard_size = int(shard_size)
        self._buffer: list[HamiltonianRecord] = []
        self._write_index()

    def append(self, rec: HamiltonianRecord) -> None:
        self._buffer.append(rec)
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def extend(self, recs: Iterable[HamiltonianRecord]) -> None:
        for r in recs:
            self.append(r)

    def flush(self) -> None:
        if not self._buffer:
            return
        recs, self._buffer = self._buffer, []
        name = f"shard_{len(self.meta['shards']):05d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        natoms = [len(r.numbers) for r in recs]
        naos = [r.nao for r in recs]
        arrays = {
            "numbers": np.concatenate([r.numbers for r in recs]),
            "pos": np.concatenate([r.pos for r in recs]),
            "forces": np.concatenate([r.forces for r in recs]),
            "atom_ptr": np.concatenate([[0], np.cumsum(natoms)]).astype(np.int64),
            "nao": np.asarray(naos, dtype=np.int64),
            "mat_ptr": np.concatenate([[0], np.cumsum(np.square(naos))]).astype(np.int64),
            "orb_ptr": np.concatenate([[0], np.cumsum(naos)]).astype(np.int64),
            "fock": np.concatenate([r.fock.reshape(-1) for r in recs]),
            "overlap": np.concatenate([r.overlap.reshape(-1) for r in recs]),
            "mo_energy": np.concatenate([r.mo_energy for r in recs]),
            "energy": np.asarray([r.energy for r in recs], dtype=np.float64),
            "n_elec": np.asarray([r.n_elec for r in recs], dtype=np.int64),
        }
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        os.replace(tmp, self.root / name)
        self.meta["shards"].append({"name": name, "count": len(recs)})
        self._write_index()

    def close(self) -> None:
        self.flush()
        self._write_index()  # metadata set after the last flush (timings) must reach index.json too

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write_index(self) -> None:
        self.meta["n_records"] = int(sum(s["count"] for s in self.meta["shards"]))
        atomic_write_text(self.root / "index.json", json.dumps(self.meta, indent=1))


def write_store(
    root,
    records: Iterable[HamiltonianRecord],
    *,
    basis: str,
    xc: str,
    shard_size: int = 100,
    overwrite: bool = False,
    extra_meta: dict | None = None,
) -> Path:
    with HamiltonianStoreWriter(
        root, basis=basis, xc=xc, shard_size=shard_size, overwrite=overwrite, extra_meta=extra_meta
    ) as w:
        w.extend(records)
    return Path(root)


# --------------------------------------------------------------------------------------------------
# labelling run
def _label_one(args):
    i, numbers, pos, xc, basis, charge = args
    t = time.perf_counter()
    rec = pyscf_label(numbers, pos, xc=xc, basis=basis, charge=charge)
    return i, rec, time.perf_counter() - t


def _init_worker():
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from pyscf import lib

        lib.num_threads(1)
    except Exception:  # pragma: no cover
        pass


def generate(
    frames,
    out,
    *,
    xc: str = "pbe",
    basis: str = "def2-svp",
    charge: int = 0,
    workers: int = 1,
    shard_size: int = 100,
    overwrite: bool = False,
    progress: bool = True,
    extra_meta: dict | None = None,
) -> Path:
    """Label ``frames`` (list of ``ase.Atoms``) with PySCF and write a store at ``out``.

    ``workers`` processes run PySCF (one thread each); results are written in input order.
    """
    import multiprocessing as mp

    jobs = [(i, a.numbers.copy(), a.positions.copy(), xc, basis, charge) for i, a in enumerate(frames)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"PySCF {xc}/{basis}", unit="geom")
        except ImportError:  # pragma: no cover
            bar = None
    done: dict[int, HamiltonianRecord] = {}
    next_i = 0
    times = []
    with HamiltonianStoreWriter(
        out, basis=basis, xc=xc, shard_size=shard_size, overwrite=overwrite, extra_meta=extra_meta
    ) as writer:

        def consume(res):
            nonlocal next_i
            i, rec, dt = res
            done[i] = rec
            times.append(dt)
            while next_i in done:
                writer.append(done.pop(next_i))
                next_i += 1
            if bar is not None:
                bar.update(1)

        if workers <= 1:
            _init_worker()
            for job in jobs:
                consume(_label_one(job))
        else:
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for res in pool.imap_unordered(_label_one, jobs):
                    consume(res)
        writer.meta["seconds_per_geometry_median"] = float(np.median(times)) if times else None
    if bar is not None:
        bar.close()
    return Path(out)


def molecule_from_smiles(smiles: str, seed: int = 0):
    """An ``ase.Atoms`` with hydrogens and an RDKit ETKDG + MMFF conformer for ``smiles``."""
    import ase
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InputError(f"cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise InputError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    return ase.Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=pos)


# --------------------------------------------------------------------------------------------------
# public layouts
def read_md17_hamiltonian(path: str | os.PathLike, *, indices: Sequence[int] | None = None):
    """Yield ``HamiltonianRecord`` s from a SchNOrb MD17-Hamiltonian ASE database (``*.db``).

    Layout (SchNOrb, Schütt et al. 2019, schnetpack 0.3 ``AtomsData``): each row is an ``ase.Atoms``
    (positions Å) with ``row.data`` holding ``hamiltonian`` and ``overlap`` (nao x nao, Hartree, ORCA AO
    order, def2-SVP), ``energy`` (Hartree) and ``forces`` (Hartree/Bohr). Matrices are converted to PySCF
    AO order with ``OrbitalBasis.orca_to_pyscf`` (ORCA differs in its p order (pz, px, py) and in the sign
    of some f/g functions; QHNet's ``convention_dict['pyscf_def2svp']`` does the same). Rows may also hold
    a flat matrix (nao*nao,), which is reshaped.
    """
    from ase.db import connect

    from molequi.so3.basis import OrbitalBasis

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", hint="download the SchNOrb MD17 database (*.db)")
    basis = OrbitalBasis("def2-svp")
    with connect(str(path)) as db:
        rows = db.select() if indices is None else (db.get(id=int(i) + 1) for i in indices)
        for row in rows:
            data = row.data
            for key in ("hamiltonian", "overlap"):
                if key not in data:
                    raise MissingKeyError(f"row {row.id} has no '{key}' in its data", source=str(path))
            numbers = np.asarray(row.numbers)
            h = _square(np.asarray(data["hamiltonian"], dtype=np.float64))
            s = _square(np.asarray(data["overlap"], dtype=np.float64))
            perm, sign = basis.orca_to_pyscf(numbers)
            h = (h * np.outer(sign, sign))[np.ix_(perm, perm)]
            s = (s * np.outer(sign, sign))[np.ix_(perm, perm)]
            energy = float(np.asarray(data.get("energy", np.nan)).reshape(-1)[0])
            forces = data.get("forces")
            yield HamiltonianRecord(
                numbers=numbers,
                pos=row.positions,
                fock=h,
                overlap=s,
                energy=energy,
                forces=None if forces is None else np.asarray(forces).reshape(-1, 3),
            )


def _square(m: np.ndarray) -> np.ndarray:
    m = np.squeeze(m)
    if m.ndim == 1:
        k = int(round(np.sqrt(m.size)))
        if k * k != m.size:
            raise FormatError(f"flat matrix of {m.size} elements is not square")
        m = m.reshape(k, k)
    return m


def read_qh9_lmdb(path: str | os.PathLike, *, indices: Sequence[int] | None = None):
    """Yield ``HamiltonianRecord`` s from a QH9 LMDB (``QH9Stable.lmdb`` / ``QH9Dynamic*.lmdb``).

    Layout (QH9, Yu et al. 2023, the PyG ``QH9Stable`` / ``QH9Dynamic`` ``get``): keys are
    ``int(i).to_bytes(length=4, byteorder='big')`` (an optional ``b'length'`` key holds the pickled count);
    each value is a pickled dict with ``id``, ``num_nodes`` (int), ``atoms`` (bytes of int32 Z), ``pos``
    (bytes of float64, (num_nodes, 3); Å -- QH9's own tools pass them unconverted to ``ase.Atoms``) and
    ``Ham`` (bytes of float64, nao x nao, Hartree, PySCF def2-SVP AO order, B3LYP). Some derived copies
    add ``overlap``; it is read when present, otherwise recomputed with PySCF from the geometry, as
    QH9's evaluation does. Assumption to check on the real files: no unit conversion of ``pos``.
    """
    import lmdb

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", hint="download QH9 (QH9Stable.lmdb) first")
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=path.is_dir(), readahead=False)
    try:
        with env.begin() as txn:
            if indices is None:
                raw = txn.get(b"length")
                n = pickle.loads(raw) if raw is not None else txn.stat()["entries"]
                indices = range(int(n))
            for i in indices:
                value = txn.get(int(i).to_bytes(length=4, byteorder="big"))
                if value is None:
                    raise MissingKeyError(f"no entry {i}", source=str(path))
                d = pickle.loads(value)
                for key in ("num_nodes", "atoms", "pos", "Ham"):
                    if key not in d:
                        raise MissingKeyError(f"entry {i} lacks '{key}'", source=str(path))
                n_at = int(d["num_nodes"])
                numbers = np.frombuffer(d["atoms"], np.int32).astype(np.int64)[:n_at]
                pos = np.frombuffer(d["pos"], np.float64).reshape(n_at, 3)
                h = _square(np.frombuffer(d["Ham"], np.float64).copy())
                if "overlap" in d:
                    s = _square(np.frombuffer(d["overlap"], np.float64).copy())
                else:
                    s = pyscf_overlap(numbers, pos, "def2-svp")
                yield HamiltonianRecord(numbers=numbers, pos=pos, fock=h, overlap=s)
    finally:
        env.close()


def pyscf_overlap(numbers, pos_angstrom, basis: str) -> np.ndarray:
    """AO overlap matrix (PySCF order) at one geometry."""
    from pyscf import gto

    mol = gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, np.asarray(pos_angstrom))],
        basis=basis,
        unit="Angstrom",
        verbose=0,
        spin=int(np.sum(numbers)) % 2,
    )
    return mol.intor("int1e_ovlp")


# --------------------------------------------------------------------------------------------------
# PyG dataset view
class HamiltonianDataset:
    """Map-style dataset of graph records over a ``HamiltonianStore`` (or any indexable of records).

    Each item is ``atoms_to_data(...)`` (pos Å, energy eV, forces eV/Å) plus, in PySCF AO order,
        ``fock``    (nao*nao,) Hartree, row-major flattened, so PyG batching concatenates molecules
        ``overlap`` (nao*nao,)
        ``nao``     (1,) long;  ``n_elec`` (1,) long
    ``molequi.tasks.hamiltonian.split_matrices`` turns a batch back into a list of (nao, nao) matrices.
    """

    def __init__(self, store, indices: Sequence[int] | None = None, dtype=None):
        self.store = HamiltonianStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.indices = list(range(len(self.store))) if indices is None else list(indices)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return record_to_data(self.store[self.indices[i]], dtype=self.dtype)


def build_hamiltonian_dataset(cfg) -> list:
    """``molequi.data.datasets`` entry ``hamiltonian``: every record of the store at ``cfg.root`` as graph
    records (``record_to_data``). ``cfg.options``: ``limit`` (first N records only)."""
    store = HamiltonianStore(cfg.root)
    n = len(store)
    limit = cfg.options.get("limit") if getattr(cfg, "options", None) else None
    if limit is not None:
        n = min(n, int(limit))
    return [record_to_data(store[i]) for i in range(n)]


def record_to_data(rec: HamiltonianRecord, dtype=None):
    """Graph record of one ``HamiltonianRecord`` (see ``HamiltonianDataset``)."""
    import ase
    import torch

    from molequi.data.records import atoms_to_data

    dtype = dtype or torch.get_default_dtype()
    atoms = ase.Atoms(numbers=rec.numbers, positions=rec.pos)
    energy = rec.energy * HARTREE_TO_EV if np.isfinite(rec.energy) else None
    forces = rec.forces * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM if np.all(np.isfinite(rec.forces)) else None
    d = atoms_to_data(atoms, energy=energy, forces=forces, dtype=dtype)
    d.fock = torch.as_tensor(rec.fock, dtype=dtype).reshape(-1)
    d.overlap = torch.as_tensor(rec.overlap, dtype=dtype).reshape(-1)
    d.nao = torch.tensor([rec.nao], dtype=torch.long)
    d.n_elec = torch.tensor([rec.n_elec], dtype=torch.long)
    return d


__all__ = [
    "HamiltonianRecord",
    "HamiltonianStore",
    "HamiltonianStoreWriter",
    "HamiltonianDataset",
    "write_store",
    "pyscf_label",
    "pyscf_overlap",
    "generate",
    "sample_xtb_md",
    "sample_normal_modes",
    "SAMPLERS",
    "molecule_from_smiles",
    "read_md17_hamiltonian",
    "read_qh9_lmdb",
    "record_to_data",
    "build_hamiltonian_dataset",
]
