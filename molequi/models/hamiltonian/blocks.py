"""Atom-pair orbital blocks <-> the flattened AO matrices of a batch (shared by the Hamiltonian models).

A Hamiltonian model predicts one padded (P, P) block per ordered atom pair (i, j) of a molecule, i == j
included (``molecule_pairs``): rows are atom i's orbitals, columns atom j's, in the padded PySCF layout of
``molequi.so3.basis.OrbitalBasis`` (every element's shells placed in the union of shells, ascending l).
``AOBlockLayout`` scatters those blocks into the batch's (sum nao^2,) row-major AO matrices, the layout of
the labels (``molequi.data.hamiltonian.record_to_data``), dropping the padded orbitals an element lacks.
"""

from __future__ import annotations

import torch
from torch import nn

from molequi.errors import ModelError


def molecule_pairs(ptr: torch.Tensor):
    """All ordered atom pairs (i, j), i == j included, of every molecule of a batch.

    ptr: (B+1,) atom offsets. Returns (i (Pn,), j (Pn,), molecule (Pn,), reverse (Pn,)) where
    ``reverse[p]`` is the index of the pair (j, i).
    """
    n = ptr[1:] - ptr[:-1]
    counts = n * n
    mol = torch.repeat_interleave(torch.arange(len(n), device=ptr.device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum()), device=ptr.device) - start[mol]
    nm = n[mol]
    li, lj = local // nm, local % nm
    reverse = start[mol] + lj * nm + li
    return ptr[mol] + li, ptr[mol] + lj, mol, reverse


def batch_ptr(data, z: torch.Tensor) -> torch.Tensor:
    """The batch's (B+1,) atom offsets (one molecule when the data is not a batch)."""
    ptr = getattr(data, "ptr", None)
    return ptr if ptr is not None else torch.tensor([0, len(z)], device=z.device)


class AOBlockLayout(nn.Module):
    """Where every padded block entry goes in the batch's concatenated AO matrices (module docstring).

    Buffers are not saved with the weights (they follow from the basis)."""

    def __init__(self, basis):
        super().__init__()
        self.basis = basis
        zmax = max(basis.elements)
        P = basis.padded_dim
        table = torch.full((zmax + 1, P), -1, dtype=torch.long)  # padded slot -> local AO index, -1 absent
        nao = torch.zeros(zmax + 1, dtype=torch.long)
        for z in basis.elements:
            idx = basis.padded_index(z)
            table[z, torch.as_tensor(idx)] = torch.arange(len(idx))
            nao[z] = len(idx)
        known = torch.zeros(zmax + 1, dtype=torch.bool)
        known[list(basis.elements)] = True
        self.register_buffer("slot_table", table, persistent=False)
        self.register_buffer("atom_nao", nao, persistent=False)
        self.register_buffer("known", known, persistent=False)

    def check(self, z: torch.Tensor) -> None:
        """ModelError naming the elements the basis does not cover."""
        if int(z.max()) >= len(self.known) or not bool(self.known[z].all()):
            bad = sorted(set(z.tolist()) - set(self.basis.elements))
            raise ModelError(
                f"elements {bad} are not in this model's basis (elements {list(self.basis.elements)})"
            )

    def scatter_index(self, z, ptr, i, j, mol):
        """Flat positions of every padded pair-block entry in the concatenated (sum nao^2,) AO matrices.

        Returns (flat (Pn, P, P) long, valid (Pn, P, P) bool, nao (B,), total)."""
        atom_nao = self.atom_nao[z]  # (n,)
        cum = torch.cumsum(atom_nao, 0) - atom_nao  # AO offset of each atom inside the batch
        nmol = len(ptr) - 1
        mol_of_atom = torch.repeat_interleave(torch.arange(nmol, device=z.device), ptr[1:] - ptr[:-1])
        first = cum[ptr[:-1].clamp(max=len(z) - 1)]
        atom_off = cum - first[mol_of_atom]
        nao = torch.zeros(nmol, dtype=torch.long, device=z.device).index_add_(0, mol_of_atom, atom_nao)
        base = torch.cumsum(nao * nao, 0) - nao * nao
        rows = self.slot_table[z[i]]  # (Pn, P)
        cols = self.slot_table[z[j]]
        valid = (rows >= 0).unsqueeze(2) & (cols >= 0).unsqueeze(1)
        r = (atom_off[i].unsqueeze(1) + rows).unsqueeze(2)
        c = (atom_off[j].unsqueeze(1) + cols).unsqueeze(1)
        flat = base[mol].view(-1, 1, 1) + r * nao[mol].view(-1, 1, 1) + c
        total = int((nao * nao).sum())
        return flat, valid, nao, total

    @staticmethod
    def assemble(blocks: torch.Tensor, index) -> torch.Tensor:
        """(Pn, P, P) blocks of ``molecule_pairs`` order -> (sum nao^2,) flattened AO matrices."""
        flat, valid, _, total = index
        return blocks.new_zeros(total).index_put_((flat[valid],), blocks[valid])


__all__ = ["molecule_pairs", "batch_ptr", "AOBlockLayout"]
