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

from molequi import keys as K
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


#: the key under which ``structure_of`` finds a batch's pair structure computed ahead (``prepare_batch``)
STRUCTURE_KEY = "pair_structure"


def structure_of(data, layout: AOBlockLayout) -> dict[str, torch.Tensor]:
    """The pair structure (``AOBlockLayout.pair_structure``) of ``data``: the one ``prepare_batch`` stored
    in it, else computed here (integer work with host syncs on a GPU)."""
    ready = data.get(STRUCTURE_KEY) if isinstance(data, dict) else getattr(data, STRUCTURE_KEY, None)
    if ready is not None:
        return ready
    z = data[K.NUMBERS]
    return layout.pair_structure(z, batch_ptr(data, z))


def prepare_batch(data, layout: AOBlockLayout):
    """``data`` with its pair structure stored under ``STRUCTURE_KEY``: called on the CPU batch before it
    moves to the GPU (``HamiltonianTask.on_before_batch_transfer``), so the model's step has no host sync."""
    data[STRUCTURE_KEY] = structure_of(data, layout)
    return data


def sizes_dynamic(z: torch.Tensor, pos: torch.Tensor, structure: dict[str, torch.Tensor]) -> None:
    """Mark the atom, pair and AO sizes dynamic for ``torch.compile`` before the first compiled call, so one
    graph serves every batch. (``dynamic=True`` would also make the modules' float attributes symbolic,
    e.g. nn.Embedding's ``norm_type``, which Dynamo then specialises by restarting its analysis: twice the
    time.)"""
    for t in (z, pos, *structure.values()):
        torch._dynamo.maybe_mark_dynamic(t, 0)


class CompiledPredict:
    """Mixin of the Hamiltonian models, whose ``predict(z, pos, structure)`` is all their tensor work and
    whose ``layout`` is their ``AOBlockLayout``: structure computed ahead, ``predict`` under torch.compile."""

    def prepare_batch(self, data):
        """``data`` with its pair structure computed ahead (``prepare_batch``; the trainer calls this on the
        CPU batch before it moves to the device)."""
        return prepare_batch(data, self.layout)

    def compile_forward(self, backend: str = "inductor", dynamic: bool | None = None):
        """Run ``predict`` through ``torch.compile(fullgraph=True)`` from now on, training included
        (``trainer.compile``; the loss needs only first derivatives). Returns ``self``."""
        from molequi.models.base import without_duck_sizing

        self._compiled_predict = without_duck_sizing(torch.compile(self.predict, fullgraph=True, dynamic=dynamic,
                                                                   backend=backend))
        return self

    def run_predict(self, z, pos, structure):
        """``predict``, compiled once ``compile_forward`` was called."""
        predict = getattr(self, "_compiled_predict", None)
        if predict is None:
            return self.predict(z, pos, structure)
        sizes_dynamic(z, pos, structure)
        return predict(z, pos, structure)


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

    def pair_structure(self, z: torch.Tensor, ptr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every integer index a Hamiltonian model needs, from the atomic numbers and molecule offsets only
        (no positions, no parameters), so that the model's tensor computation has no data-dependent size
        and no host sync (``torch.compile(fullgraph=True)``); ModelError for elements outside the basis.

        Returns long tensors: ``pair_i``, ``pair_j`` (E,) the ordered pairs i != j (receiver i, sender j);
        ``off`` (E,) / ``diag`` (n,) their positions among all pairs of ``molecule_pairs`` (diagonal pairs
        in atom order); ``reverse`` (Pn,) the position of pair (j, i); ``ao`` (sum nao^2,) the position in
        the flattened (Pn, P, P) blocks of every entry of the concatenated AO matrices (each entry lies in
        exactly one pair block, so the matrices are a gather of the blocks); ``nao`` (B,)."""
        self.check(z)
        i, j, mol, reverse = molecule_pairs(ptr)
        off = torch.nonzero(i != j).squeeze(1)
        flat, valid, nao, total = self.scatter_index(z, ptr, i, j, mol)
        ao = torch.empty(total, dtype=torch.long, device=z.device)
        ao[flat[valid]] = torch.nonzero(valid.reshape(-1)).squeeze(1)
        return {"pair_i": i[off], "pair_j": j[off], "off": off, "diag": torch.nonzero(i == j).squeeze(1),
                "reverse": reverse, "ao": ao, "nao": nao}


__all__ = ["molecule_pairs", "batch_ptr", "AOBlockLayout", "structure_of", "prepare_batch", "STRUCTURE_KEY",
           "sizes_dynamic", "CompiledPredict"]
