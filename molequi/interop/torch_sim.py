"""molequi force fields inside torch-sim (``torch-sim-atomistic``): batched MD and relaxation of many
systems::

    import torch_sim as ts
    from molequi.interop.torch_sim import MolequiTorchSimModel

    model = MolequiTorchSimModel("runs/mace/model.pt", dtype=torch.float64)
    final = ts.integrate(system=[atoms1, atoms2, ...], model=model, integrator=ts.nvt_langevin,
                         n_steps=1000, temperature=300, timestep=0.001)      # torch-sim: ps, K, eV

``MolequiTorchSimModel`` follows torch-sim's ``ModelInterface``: ``forward(state)`` returns ``energy``
(n_systems,) eV, ``forces`` (n_atoms, 3) eV/Å and, for periodic states with ``compute_stress``, ``stress``
(n_systems, 3, 3) eV/Å^3 in ASE's sign convention, which torch-sim's MACE wrapper and integrators use. All
systems of a state go through the model as one batch; each system gets its own Verlet-skin neighbour list
(``molequi.calculators.calculator.NeighborCache``, the calculator's: built with ``r_max + skin`` and rebuilt
only when an atom of that system moved more than ``skin / 2``, or its cell, pbc, elements or size changed;
``skin=0`` rebuilds every call). Forces are the model's own (-dE/dx by autograd for
conservative models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from molequi import keys as K
from molequi.calculators.calculator import DEFAULT_SKIN, NeighborCache
from molequi.errors import InputError, ModelError
from molequi.response import frozen_parameters

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - the message is the point
    raise InputError("molequi.interop.torch_sim needs torch-sim",
                     hint="pip install torch-sim-atomistic (or molequi[torch-sim])") from exc


class MolequiTorchSimModel(ModelInterface):
    """A molequi force field (a model, or a checkpoint path loaded with ``molequi.checkpoint.load_model``)
    as a torch-sim model."""

    def __init__(self, model: torch.nn.Module | str | Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64, compute_forces: bool = True,
                 compute_stress: bool = True, skin: float = DEFAULT_SKIN):
        super().__init__()
        if isinstance(model, (str, Path)):
            from molequi.checkpoint import load_model

            model = load_model(model, device=device, dtype=dtype)
        from molequi.models.base import ForceField

        if not isinstance(model, ForceField):
            raise ModelError(f"{type(model).__name__} is not a molequi force field (molequi.models.base.ForceField)")
        self._device = torch.device(device)
        self._dtype = dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"
        self.model = model.to(device=self._device, dtype=dtype).eval()
        self.r_max = float(model.r_max)
        self._elements = {int(z) for z in model.elements}
        self.skin = float(skin)
        self.neighbor_caches: list[NeighborCache] = []  # one per system of the last state

    def _batch(self, positions, cell, pbc, numbers, system_idx, n_systems):
        from torch_geometric.data import Batch, Data

        pbc3 = np.broadcast_to(np.asarray(pbc.cpu() if torch.is_tensor(pbc) else pbc, dtype=bool), (3,))
        counts = torch.bincount(system_idx, minlength=n_systems).tolist()
        pos_np = positions.detach().cpu().double().numpy()
        cell_np = cell.detach().cpu().double().numpy()
        numbers_np = numbers.cpu().numpy()
        if len(self.neighbor_caches) != n_systems:
            self.neighbor_caches = [NeighborCache(self.skin) for _ in range(n_systems)]
        graphs, start = [], 0
        for b, n in enumerate(counts):
            [(edge_index, unit_shifts)] = self.neighbor_caches[b].get(
                pos_np[start:start + n], cell_np[b], pbc3, numbers_np[start:start + n], [self.r_max])
            shifts = unit_shifts.astype(np.float64) @ cell_np[b]
            d = Data()
            d[K.NUMBERS] = numbers[start:start + n]
            d[K.POS] = positions[start:start + n]
            d[K.CELL] = cell[b].reshape(1, 3, 3)
            d[K.PBC] = torch.as_tensor(pbc3.copy(), device=self._device).reshape(1, 3)
            d[K.EDGE_INDEX] = torch.as_tensor(edge_index, dtype=torch.long, device=self._device)
            d[K.UNIT_SHIFTS] = torch.as_tensor(unit_shifts, dtype=torch.long, device=self._device)
            d[K.SHIFTS] = torch.as_tensor(shifts, dtype=self._dtype, device=self._device)
            d.num_nodes = n
            graphs.append(d)
            start += n
        return Batch.from_data_list(graphs), bool(pbc3.all())

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):
            import torch_sim as ts

            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        numbers = state.atomic_numbers.to(self._device)
        unknown = sorted({int(z) for z in numbers.unique().tolist()} - self._elements)
        if unknown:
            raise ModelError(f"the model was not trained on elements {unknown}; it knows "
                             f"{sorted(self._elements)}")
        system_idx = state.system_idx.to(self._device)
        n_systems = int(state.n_systems)
        batch, periodic = self._batch(state.positions.to(self._device, self._dtype),
                                      state.row_vector_cell.to(self._device, self._dtype), state.pbc, numbers,
                                      system_idx, n_systems)
        want_stress = self._compute_stress and periodic
        with torch.enable_grad(), frozen_parameters([self.model]):
            out = self.model(batch, compute_forces=self._compute_forces, compute_stress=want_stress)
        results = {"energy": out[K.ENERGY].detach().reshape(n_systems)}
        if self._compute_forces:
            results["forces"] = out[K.FORCES].detach()
        if want_stress:
            results["stress"] = out[K.STRESS].detach().reshape(n_systems, 3, 3)
        return results


__all__ = ["MolequiTorchSimModel"]
