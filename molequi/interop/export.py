"""A molequi force field as one self-contained ``torch.export`` file (``*.pt2``) that runs with torch alone.

    from molequi.interop.export import export_model
    export_model("runs/mace/model.pt", "model.pt2")          # or: molequi export runs/mace/model.pt --out model.pt2

The file holds the weights and ONE graph computing energy, per-atom energies, forces and stress (the
derivatives are part of the graph: ``make_fx`` traces the autograd of the energy, then ``torch.export``
saves that graph with dynamic numbers of atoms and edges). Loading it needs neither molequi nor e3nn nor
torch-geometric; it needs a torch of the same minor version as the one that wrote it (``torch.export``'s
format is not promised across versions).

**Input contract** (one structure per call; dtype ``D`` = the ``dtype`` in the file's metadata)::

    positions    (n, 3) D        Å
    numbers      (n,)   int64    atomic numbers, among the model's ``elements`` (metadata); an unknown
                                 element gives NaN energy, forces and stress (a graph cannot raise)
    cell         (3, 3) D        Å, lattice vectors as rows; zeros for a molecule (no stress then)
    edge_index   (2, E) int64    (source s, destination d) of every ordered pair closer than ``r_max``, both
                                 directions, periodic images included, no atom paired with itself unshifted
    unit_shifts  (E, 3) D        integer-valued image of each edge: r = pos[d] - pos[s] + unit_shifts @ cell
                                 (zeros for a molecule)

    -> energy () D eV, energies (n,) D eV, forces (n, 3) D eV/Å, stress (3, 3) D eV/Å^3 (ASE's sign;
       zero when the cell has zero volume)

The neighbour list is not in the graph: build it with any code with the cutoff ``r_max`` of the metadata
(ASE's ``neighbor_list("ijS", atoms, r_max)`` gives exactly s = i, d = j, unit_shifts = S; vesin and matscipy
give the same). Shapes: ``n >= 2`` atoms and ``E >= 2`` edges (``torch.export``'s dynamic dimensions). The
per-element energies, scale and shift are inside; a D3 correction that the training run subtracted from its
labels is not (metadata ``dispersion``): add it yourself.

**Reference loader (torch + ASE only)**::

    import json, torch
    from ase.neighborlist import neighbor_list
    extra = {"molequi.json": ""}
    program = torch.export.load("model.pt2", extra_files=extra)
    meta, fn = json.loads(extra["molequi.json"]), program.module()
    dtype = getattr(torch, meta["dtype"])
    i, j, S = neighbor_list("ijS", atoms, meta["r_max"])          # r = pos[j] - pos[i] + S @ cell
    energy, energies, forces, stress = fn(
        torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers),
        torch.tensor(atoms.cell[:], dtype=dtype),
        torch.tensor([i, j]), torch.tensor(S, dtype=dtype))

The stored metadata (``extra_files["molequi.json"]``): format, r_max, elements, dtype, model name, inputs,
outputs, torch version, dispersion.
"""

from __future__ import annotations

import copy
import json
import os
import time

import torch
from torch import nn

from molequi import keys as K
from molequi.errors import ModelError
from molequi.io import atomic_write
from molequi.response import strained, stress_from_virials

FORMAT = "molequi-export/1"
METADATA = "molequi.json"
INPUTS = ["positions", "numbers", "cell", "edge_index", "unit_shifts"]
OUTPUTS = ["energy", "energies", "forces", "stress"]


class _Record(dict):
    """The fields a model's ``atomic_energies`` reads, as items and attributes (``data.batch``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class ExportableForceField(nn.Module):
    """``(positions, numbers, cell, edge_index, unit_shifts) -> (energy, energies, forces, stress)`` of one
    structure from an ``EnergyModel`` (forces and stress by autograd of the energy, as
    ``molequi.response``: strain eps applied to positions and cell, stress = (1/V) dE/deps)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("elements", torch.tensor([int(z) for z in model.elements], dtype=torch.long))

    def forward(self, positions, numbers, cell, edge_index, unit_shifts):
        # an element the model does not know: evaluated as its first element, then every output is NaN (the
        # eager model raises ModelError; a graph cannot raise, and an index of -1 would abort the process)
        known = torch.isin(numbers, self.elements)
        numbers = torch.where(known, numbers, self.elements[0])
        positions = positions.detach().requires_grad_(True)
        strain = torch.zeros((1, 3, 3), dtype=positions.dtype, device=positions.device, requires_grad=True)
        batch = torch.zeros_like(numbers)
        pos, cells = strained(positions, cell.reshape(1, 3, 3), strain, batch)
        data = _Record({K.POS: pos, K.NUMBERS: numbers, K.EDGE_INDEX: edge_index, K.UNIT_SHIFTS: unit_shifts,
                        K.BATCH: batch, K.CELL: cells})
        energies = self.model.atomic_energies(data, pos, cells)
        energy = energies.sum()
        dpos, dstrain = torch.autograd.grad(energy, [positions, strain])
        stress = stress_from_virials(-dstrain, cell.reshape(1, 3, 3))[0]
        unknown = torch.where(known.all(), 0.0, float("nan"))
        return energy + unknown, energies + unknown, unknown - dpos, stress + unknown


def example_inputs(atoms, r_max: float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The graph's inputs for an ``ase.Atoms`` (ASE's neighbour list, the loader snippet's convention)."""
    import numpy as np
    from ase.neighborlist import neighbor_list

    i, j, shifts = neighbor_list("ijS", atoms, float(r_max))
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers, dtype=torch.long),
            torch.tensor(np.asarray(atoms.cell[:]), dtype=dtype),
            torch.tensor(np.stack([i, j]), dtype=torch.long), torch.tensor(shifts, dtype=dtype))


def _default_example(elements: list[int], r_max: float):
    """A small periodic box of the model's elements, side r_max (every atom has neighbours), for tracing."""
    import numpy as np
    from ase import Atoms

    rng = np.random.default_rng(0)
    n = max(8, 2 * len(elements))
    numbers = [elements[k % len(elements)] for k in range(n)]
    side = max(float(r_max), 1.0)
    return Atoms(numbers=numbers, positions=rng.uniform(0, side, (n, 3)), cell=np.eye(3) * side, pbc=True)


def trace(model: nn.Module, atoms=None, dtype: torch.dtype = torch.float64) -> torch.export.ExportedProgram:
    """``torch.export`` program of ``model`` (an ``EnergyModel``; left unchanged: a copy is traced).

    ``make_fx`` first turns energy + autograd into one graph of aten operations (``torch.export`` cannot
    trace ``torch.autograd.grad`` itself: the tensors saved for the backward become fake constants), then
    ``torch.export`` makes its atom and edge counts dynamic. ``atoms`` is the tracing example (default: a
    random periodic box of the model's elements)."""
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    from molequi.models.base import EnergyModel

    if not isinstance(model, EnergyModel):
        raise ModelError(f"{type(model).__name__} cannot be exported: only EnergyModels (per-atom energies, "
                         "forces and stress by autograd) can; direct-force and generative models cannot")
    model = copy.deepcopy(model).to(dtype).eval()
    if hasattr(model, "set_max_edges_per_chunk"):
        model.set_max_edges_per_chunk(None)  # chunking is a Python loop over a data-dependent edge count
    model._compiled_energies = None
    for p in model.parameters():  # forces need the gradient of positions only: outputs without autograd history
        p.requires_grad_(False)
    wrapper = ExportableForceField(model)
    args = example_inputs(atoms if atoms is not None else _default_example(list(model.elements), model.r_max),
                          model.r_max, dtype)
    if args[0].shape[0] < 2 or args[3].shape[1] < 2:
        raise ModelError("the export example needs at least 2 atoms and 2 edges within r_max")
    with torch.enable_grad():
        graph = make_fx(wrapper, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
        atoms_dim, edges_dim = Dim("atoms", min=2), Dim("edges", min=2)
        return torch.export.export(graph, args, strict=False,
                                   dynamic_shapes=({0: atoms_dim}, {0: atoms_dim}, None, {1: edges_dim},
                                                   {0: edges_dim}))


def export_model(model: nn.Module | str | os.PathLike, out: str | os.PathLike, *, atoms=None,
                 dtype: torch.dtype = torch.float64, use_ema: bool = True) -> dict:
    """Export ``model`` (an ``EnergyModel`` or a checkpoint path) to ``out`` (``*.pt2``, written atomically)
    and return its metadata (also stored in the file, with the export's wall and CPU seconds)."""
    dispersion = None
    name = type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        from molequi.calculators.calculator import checkpoint_dispersion
        from molequi.checkpoint import load_model

        dispersion = checkpoint_dispersion(model)
        model = load_model(model, dtype=dtype, use_ema=use_ema)
        name = type(model).__name__
    wall, cpu = time.perf_counter(), time.process_time()
    program = trace(model, atoms, dtype)
    meta = {"format": FORMAT, "model": name, "r_max": float(model.r_max),
            "elements": [int(z) for z in model.elements], "dtype": str(dtype).removeprefix("torch."),
            "inputs": INPUTS, "outputs": OUTPUTS, "torch": torch.__version__, "dispersion": dispersion,
            "export_wall_s": round(time.perf_counter() - wall, 2),
            "export_cpu_s": round(time.process_time() - cpu, 2)}
    atomic_write(out, lambda fh: torch.export.save(program, fh, extra_files={METADATA: json.dumps(meta)}))
    return meta


def load_exported(path: str | os.PathLike):
    """``(callable, metadata)`` of an exported file (what the docstring's snippet does)."""
    extra = {METADATA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[METADATA]) if extra[METADATA] else {}
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not a molequi export (format {meta.get('format')!r}, expected {FORMAT!r}); "
                         "write one with `molequi export CKPT --out FILE.pt2`")
    return program.module(), meta


__all__ = ["ExportableForceField", "trace", "export_model", "load_exported", "example_inputs", "FORMAT"]
