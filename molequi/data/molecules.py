"""Molecules for generative models: geometry-only sets (atomic numbers + positions, any size) and the
generated ``Molecule``; read from xyz tarballs or any ASE format, written as SDF (with bonds) or extended
XYZ.

``read_xyz_tarball`` reads a tarball of QM9 xyz files (e.g. ppqm/dataset-qm9's ``xyz.tar.gz``, geometry
only) with the datasets module's streaming reader and returns ``ase.Atoms``.

``GeometryDataset`` turns a list of ``ase.Atoms`` into PyG records (numbers, pos, optional per-molecule
context) without edges: generative models build per-molecule fully connected graphs themselves.

``write_sdf`` / ``write_extxyz`` write generated molecules atomically (temporary file in the same folder,
then ``os.replace``), so an interrupted run never leaves a truncated file behind.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
import torch
from torch_geometric.data import Data

from molequi import keys as K
from molequi.data.bonds import bond_order_matrix, build_rdkit_molecule
from molequi.errors import FormatError, InputError
from molequi.io import atomic_write_text


@dataclass
class Molecule:
    """One generated molecule: numbers (n,), positions (n, 3) Å, optional predicted bonds (n, n) / charges
    (n,)."""

    numbers: np.ndarray
    positions: np.ndarray
    bonds: np.ndarray | None = None
    charges: np.ndarray | None = None


def read_xyz_tarball(path: str, *, indices: Sequence[int] | None = None, limit: int | None = None,
                     ) -> list[ase.Atoms]:
    """Molecules of a QM9-style xyz tarball (figshare files or geometry-only copies), in archive order,
    through the datasets module's streaming reader ``molequi.data.qm9.iter_qm9_xyz``.

    ``indices`` selects records by their position in the archive; ``limit`` stops after that many molecules.
    Each Atoms gets ``info['name']`` = ``dsgdb9nsd_NNNNNN.xyz`` (the QM9 id) when the id is known.
    """
    from molequi.data.qm9 import iter_qm9_xyz

    wanted = None if indices is None else set(int(i) for i in indices)
    out = []
    for k, rec in enumerate(iter_qm9_xyz(path)):
        if wanted is not None and k not in wanted:
            continue
        atoms = ase.Atoms(numbers=rec.numbers, positions=rec.positions)
        if rec.index is not None:
            atoms.info["name"] = f"dsgdb9nsd_{int(rec.index):06d}.xyz"
        out.append(atoms)
        if (limit is not None and len(out) >= limit) or (wanted is not None and len(out) == len(wanted)):
            break
    return out


def count_tar_members(path: str) -> int:
    """Number of xyz members of a tarball (one pass)."""
    with tarfile.open(path, "r:*") as tar:
        return sum(1 for m in tar if m.isfile() and m.name.endswith(".xyz"))


def read_molecules(path: str, *, limit: int | None = None) -> list[ase.Atoms]:
    """Molecules from a tarball of xyz files or anything ``ase.io.read`` understands (extxyz, sdf, ...)."""
    p = str(path)
    if p.endswith((".tar", ".tar.gz", ".tgz")):
        return read_xyz_tarball(p, limit=limit)
    import ase.io

    try:
        frames = ase.io.read(p, index=":" if limit is None else f":{limit}")
    except Exception as exc:  # ase raises many types for unreadable files
        raise FormatError(f"cannot read molecules: {exc}", source=p) from exc
    return frames if isinstance(frames, list) else [frames]


def molecule_record(atoms: ase.Atoms, context: np.ndarray | None = None) -> Data:
    """PyG record with numbers (n,), pos (n, 3) Å and optional context (1, c) per molecule; no edges."""
    d = Data()
    d[K.NUMBERS] = torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.long)
    d[K.POS] = torch.as_tensor(np.asarray(atoms.positions), dtype=torch.get_default_dtype())
    if context is not None:
        d["context"] = torch.as_tensor(np.asarray(context, dtype=float), dtype=torch.get_default_dtype()
                                       ).reshape(1, -1)
    if "charges" in atoms.arrays:
        d[K.CHARGES] = torch.as_tensor(atoms.arrays["charges"]).round().long()
    d.num_nodes = len(atoms)
    return d


def perceive_bonds(numbers: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonds and formal charges of a neutral molecule from its geometry.

    RDKit ``DetermineBonds`` (xyz2mol: connectivity from covalent radii, then bond orders and charges that
    satisfy valences), Kekulé form; if it fails, EDM's distance bond orders with zero charges.
    Returns bond_index (2, nb) with i < j, bond_order (nb,) in {1, 2, 3}, charges (n,) int.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    z = np.asarray(numbers, dtype=int)
    pos = np.asarray(positions, dtype=float)
    mol = Chem.RWMol()
    for zi in z:
        mol.AddAtom(Chem.Atom(int(zi)))
    conf = Chem.Conformer(len(z))
    for i, p in enumerate(pos):
        conf.SetAtomPosition(i, [float(v) for v in p])
    mol.AddConformer(conf, assignId=True)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.Kekulize(mol, clearAromaticFlags=True)
        pairs, orders = [], []
        for bond in mol.GetBonds():
            i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
            pairs.append((i, j))
            orders.append(int(round(bond.GetBondTypeAsDouble())))
        charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=int)
    except (ValueError, RuntimeError):
        mat = bond_order_matrix(z, pos)
        ii, jj = np.nonzero(np.triu(mat, 1))
        pairs, orders = list(zip(ii.tolist(), jj.tolist())), mat[ii, jj].tolist()
        charges = np.zeros(len(z), dtype=int)
    bond_index = np.array(pairs, dtype=int).reshape(-1, 2).T
    return bond_index, np.array(orders, dtype=int), charges


def perceive_batch_bonds(numbers: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor):
    """``perceive_bonds`` for every molecule of a PyG batch -> bond_index (2, nb) global, bond_order, charges."""
    idx, orders, charges = [], [], []
    z, p, b = numbers.cpu().numpy(), pos.detach().double().cpu().numpy(), batch.cpu().numpy()
    starts = np.concatenate([[0], np.cumsum(np.bincount(b))])
    for k in range(len(starts) - 1):
        lo, hi = starts[k], starts[k + 1]
        bi, bo, q = perceive_bonds(z[lo:hi], p[lo:hi])
        idx.append(bi + lo)
        orders.append(bo)
        charges.append(q)
    dev = pos.device
    return (torch.as_tensor(np.concatenate(idx, 1), device=dev), torch.as_tensor(np.concatenate(orders), device=dev),
            torch.as_tensor(np.concatenate(charges), device=dev))


class GeometryDataset(torch.utils.data.Dataset):
    """In-memory list of molecule records; ``context_key`` names an ``atoms.info`` property to condition on;
    ``with_bonds`` adds ``bond_index`` (2, nb), ``bond_order`` (nb,) and integer ``charges`` (n,)."""

    def __init__(self, molecules: Sequence[ase.Atoms], context_key: str | None = None, with_bonds: bool = False):
        if len(molecules) == 0:
            raise InputError("empty molecule set", hint="give at least one molecule")
        self.context_key = context_key
        self.records = []
        for i, a in enumerate(molecules):
            ctx = None
            if context_key is not None:
                if context_key not in a.info:
                    raise InputError(f"molecule has no property '{context_key}' to condition on", frame=i)
                ctx = np.atleast_1d(a.info[context_key])
            rec = molecule_record(a, ctx)
            if with_bonds:  # for the categorical model: bonds and formal charges perceived once
                bi, bo, q = perceive_bonds(a.numbers, a.positions)
                rec["bond_index"] = torch.as_tensor(bi, dtype=torch.long)
                rec["bond_order"] = torch.as_tensor(bo, dtype=torch.long)
                rec[K.CHARGES] = torch.as_tensor(q, dtype=torch.long)
            self.records.append(rec)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Data:
        return self.records[i]


def to_rdkit(m: Molecule):
    """RDKit molecule with 3D conformer; bonds predicted (``m.bonds``) or from EDM's distance rule."""
    return build_rdkit_molecule(m.numbers, m.positions, bonds=m.bonds, charges=m.charges)


def write_sdf(molecules: Sequence[Molecule], path: str | Path, names: Sequence[str] | None = None) -> int:
    """Write all molecules to one SDF (V2000, 3D, bonds included), atomically. Molecules that RDKit cannot
    sanitise are still written (unsanitised) with the SD property ``valid = 0``. Returns the count written."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    blocks = []
    for k, m in enumerate(molecules):
        mol = to_rdkit(m)
        try:
            Chem.SanitizeMol(mol)
            valid = 1
        except (ValueError, RuntimeError):
            valid = 0
        mol.SetProp("_Name", names[k] if names else f"generated_{k}")
        block = Chem.MolToMolBlock(mol, kekulize=False)
        blocks.append(f"{block}>  <valid>\n{valid}\n\n$$$$\n")
    atomic_write_text(path, "".join(blocks))
    return len(blocks)


def write_extxyz(molecules: Sequence[Molecule], path: str | Path, info: Sequence[dict] | None = None) -> int:
    """Write the molecules as extended XYZ (one frame each; formal charges as ``initial_charges``)."""
    lines = []
    for k, m in enumerate(molecules):
        from ase.data import chemical_symbols

        props = "species:S:1:pos:R:3" + (":charges:I:1" if m.charges is not None else "")
        extra = " ".join(f"{a}={b}" for a, b in (info[k] if info else {}).items())
        lines.append(str(len(m.numbers)))
        lines.append(f'Properties={props} index={k} pbc="F F F" {extra}'.rstrip())
        for i, (z, p) in enumerate(zip(m.numbers, np.asarray(m.positions, dtype=float))):
            row = f"{chemical_symbols[int(z)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}"
            if m.charges is not None:
                row += f" {int(m.charges[i])}"
            lines.append(row)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(molecules)


__all__ = ["Molecule", "read_xyz_tarball", "count_tar_members", "read_molecules", "molecule_record",
           "GeometryDataset", "perceive_bonds", "perceive_batch_bonds", "to_rdkit", "write_sdf", "write_extxyz"]
