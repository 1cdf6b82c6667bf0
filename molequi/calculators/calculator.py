"""``MolequiCalculator``: a thin ASE adapter over an injected model (or a committee of models).

    calc = MolequiCalculator(model)                          # any molequi model (MACE, EGNN, LennardJones...)
    calc = MolequiCalculator.from_checkpoint("model.pt")    # the same, from a checkpoint
    calc = MolequiCalculator.from_mace("mace.model")         # a mace-torch model file, imported
    calc = MolequiCalculator(models=[m1, m2, m3])            # committee: mean + spread
    atoms.calc = calc; atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()

Properties (ASE units): ``energy`` / ``free_energy`` (eV), ``energies`` (n,) eV per atom, ``forces`` (n, 3)
eV/Å and, for structures that are periodic in some direction with a full-rank cell, ``stress`` as ASE's
Voigt 6-vector (xx, yy, zz, yz, xz, xy) in eV/Å^3. Constraints (``FixAtoms``...) are applied by ASE on top
of these raw results, so they work unchanged, as do cell filters (``FrechetCellFilter``).

Committee (``models=[...]``): every property is the mean over members, and ``results`` also holds::

    ``energy_std``       eV, population standard deviation (ddof=0) of the members' energies
    ``forces_std``       (n, 3) eV/Å, per atom and Cartesian component
    ``forces_std_norm``  (n,) eV/Å, per atom: sqrt(sum_c var_c) = RMS distance of members' force vectors
                         from the mean force (the quantity ``BlowUpGuard(max_uncertainty=...)`` watches)
    ``stress_std``       (6,) eV/Å^3, per Voigt component (periodic structures)
    ``committee_energy`` (M,) eV, every member's energy

Identical members give exactly zero spreads.

Neighbour list (Verlet skin): the list is built with cutoff ``max(r_max) + skin`` and cached together with
the positions it was built from. Each call computes the current edge lengths from the current positions and
the stored integer cell shifts (vectorised) and keeps the edges within each member's ``r_max``. The list is
rebuilt when any atom has moved more than ``skin / 2`` since it was built (then no pair can have entered the
cutoff unseen) and whenever the cell, pbc, atomic numbers or the number of atoms change. An atom put back
into the cell by whole lattice vectors (``atoms.wrap()``, torch-sim's integrators) is followed: its
displacement is counted without the lattice vectors and the cell shifts of its edges are corrected, so
wrapping alone causes no rebuild. ``skin=0`` builds a fresh list every call. Results are identical to a
rebuild (same edges, same order) until an atom is wrapped; after that the same edges, in the order of the
last build, so sums can differ from a fresh list's at round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from torch_geometric.data import Data

from molequi import keys as K
from molequi.errors import ModelError, ValueRangeError
from molequi.graph.neighbors import neighbor_list
from molequi.models.base import EnergyModel, ForceField
from molequi.response import frozen_parameters

DEFAULT_SKIN = 0.5  # Å


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a model's first floating parameter or buffer (default dtype if it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def check_elements(numbers: Sequence[int], elements: Sequence[int] | None, where: str = "") -> None:
    """Raise ``ModelError`` naming every element in ``numbers`` that is not in ``elements``."""
    if elements is None:
        return
    unknown = sorted(set(int(z) for z in np.unique(numbers)) - set(int(z) for z in elements))
    if unknown:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
        known = (
            ", ".join(chemical_symbols[int(z)] for z in sorted(elements))
            if len(elements) < 40
            else f"{len(elements)} elements"
        )
        raise ModelError(
            f"{where + ': ' if where else ''}the structure contains {names}, which the model was "
            f"not trained on; it knows {known}. Use a model trained on these elements"
        ) from None


def _as_paths(path) -> list:
    """One checkpoint path, or a list of them (a committee), as a list."""
    return [path] if isinstance(path, (str, Path)) else list(path)


def load_models(paths, device="cpu", dtype=None, use_ema: bool = True) -> list[torch.nn.Module]:
    """Load one checkpoint or a list of checkpoints with ``molequi.checkpoint.load_model``."""
    from molequi.checkpoint import load_model

    return [load_model(p, device=device, dtype=dtype, use_ema=use_ema) for p in _as_paths(paths)]


class NeighborCache:
    """A Verlet-skin neighbour list for one structure (see the module docstring)."""

    def __init__(self, skin: float = DEFAULT_SKIN):
        if skin < 0:
            raise ValueRangeError(f"skin must be >= 0 Å, got {skin}")
        self.skin = float(skin)
        self.key = None
        self.ref_positions = None
        self.edge_index = None  # (2, E) int64 within cutoff + skin
        self.unit_shifts = None  # (E, 3) int64
        self.n_builds = 0
        self.n_calls = 0
        self.last_n_edges: list[int] | None = None  # edges within each cutoff at the last call
        self.n_wraps = 0  # atoms followed across the cell's faces without a rebuild

    def _needs_rebuild(self, positions, key) -> bool:
        if self.skin == 0 or self.key is None:
            return True
        if len(key[0]) != len(self.key[0]) or any(not np.array_equal(a, b) for a, b in zip(key, self.key)):
            return True
        self._follow_wraps(positions, key[1], key[2])
        disp = positions - self.ref_positions
        return bool(np.einsum("ij,ij->i", disp, disp).max(initial=0.0) > (0.5 * self.skin) ** 2)

    def _follow_wraps(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
        """Atoms put back into the cell by whole lattice vectors since the build (torch-sim's integrators and
        ``atoms.wrap()`` do that): move their reference positions by the same vectors and correct the cell
        shifts of their edges (r = pos[receiver] - pos[sender] + shift @ cell stays the same vector), so that
        wrapping alone never forces a rebuild."""
        if not pbc.any() or abs(np.linalg.det(cell)) < 1e-8:
            return
        jumps = np.rint((positions - self.ref_positions) @ np.linalg.inv(cell))
        jumps = np.where(pbc, jumps, 0.0).astype(np.int64)
        moved = jumps.any(axis=1)
        if not moved.any():
            return
        self.ref_positions = self.ref_positions + jumps @ cell
        sender, receiver = self.edge_index
        touched = np.flatnonzero(moved[sender] | moved[receiver])
        self.unit_shifts = self.unit_shifts.copy()  # arrays handed out earlier keep their values
        self.unit_shifts[touched] += jumps[sender[touched]] - jumps[receiver[touched]]
        self.n_wraps += int(moved.sum())

    def get(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        numbers: np.ndarray,
        cutoffs: Sequence[float],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Edges ``(edge_index (2, E), unit_shifts (E, 3))`` within each of ``cutoffs`` at ``positions``."""
        self.n_calls += 1
        key = (
            np.asarray(numbers).copy(),
            np.asarray(cell, dtype=np.float64).copy(),
            np.asarray(pbc, dtype=bool).copy(),
            np.asarray([self.skin, *cutoffs]),
        )
        rc = max(cutoffs)
        if self._needs_rebuild(positions, key):
            self.edge_index, self.unit_shifts, _ = neighbor_list(positions, cell, pbc, rc + self.skin)
            self.ref_positions = np.array(positions, dtype=np.float64, copy=True)
            self.key = key
            self.n_builds += 1
        i, j = self.edge_index
        vec = positions[j] - positions[i]
        if self.unit_shifts.size:
            vec += self.unit_shifts @ np.asarray(cell, dtype=np.float64)
        d2 = np.einsum("ij,ij->i", vec, vec)
        out = []
        for c in cutoffs:
            keep = (d2 <= c * c) & (d2 > 0)
            if keep.all():
                out.append((self.edge_index, self.unit_shifts))
            else:
                out.append((self.edge_index[:, keep], self.unit_shifts[keep]))
        self.last_n_edges = [e.shape[1] for e, _ in out]
        return out


def stress_to_voigt(s: np.ndarray) -> np.ndarray:
    """(3, 3) -> ASE Voigt (xx, yy, zz, yz, xz, xy)."""
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def has_stress(cell: np.ndarray, pbc: np.ndarray) -> bool:
    """Stress is defined for structures periodic in some direction with a full-rank cell."""
    return bool(np.any(pbc)) and abs(np.linalg.det(np.asarray(cell, dtype=np.float64))) > 1e-8


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """None, a torch float dtype, or its name ('float32', 'float64', 'torch.float64') -> torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    found = {"float32": torch.float32, "float64": torch.float64}.get(str(dtype).removeprefix("torch."))
    if found is None:
        raise ModelError(f"dtype {dtype!r} is not one of 'float32', 'float64' (or a torch dtype)")
    return found


def checkpoint_dispersion(path) -> dict | None:
    """The D3 correction a run subtracted from its labels (``data.dispersion``), read from its checkpoint(s);
    the members of a committee must agree."""
    from molequi.checkpoint import read_checkpoint

    return _payload_dispersion([read_checkpoint(p) for p in _as_paths(path)])


def _payload_dispersion(payloads: list[dict]) -> dict | None:
    """``checkpoint_dispersion`` of payloads already read with ``read_checkpoint``."""
    specs = []
    for payload in payloads:
        data = (payload.get("config") or {}).get("data") or {}
        specs.append(data.get("dispersion") if isinstance(data, dict) else None)
    if any(s != specs[0] for s in specs):
        raise ModelError(f"the committee's checkpoints were trained with different dispersion corrections: "
                         f"{specs}")
    return specs[0]


class MolequiCalculator(Calculator):
    """ASE calculator over one molequi model or a committee (see the module docstring).

    Parameters:

    - ``model``: a model following molequi's interface (``r_max``, ``elements``, ``forward``); or
    - ``models``: a list of such models (committee). Give exactly one of ``model`` / ``models``.
    - ``device``, ``dtype``: where and in which precision to evaluate (default: the model's own dtype);
      ``dtype`` is a ``torch.dtype`` or ``"float32"`` / ``"float64"``. Given a dtype, the models are
      converted in place.
    - ``skin`` (Å): Verlet skin of the cached neighbour list; 0 rebuilds it every call.
    - ``stress``: ``"auto"`` (compute for periodic structures when the models are conservative, the default),
      ``True`` or ``False``.
    - ``dispersion``: ``None``, ``"d3bj"`` or
      ``{"method": "d3bj", "functional": "pbe", "three_body": False}``: Grimme's D3 correction added to
      the model's results (``molequi.calculators.dispersion``); ``from_checkpoint`` adds what the
      training run subtracted from its labels unless told otherwise.
    - ``compile``: ``True`` (Inductor) or a ``torch.compile`` backend name: the per-atom energies run as one
      compiled graph (``EnergyModel.compile_energies``); the first call of a new size pays the compilation.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict = {}

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        *,
        models: Sequence[torch.nn.Module] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        skin: float = DEFAULT_SKIN,
        stress: bool | str = "auto",
        dispersion=None,
        compile: bool | str = False,
        **kwargs,
    ):
        Calculator.__init__(self, **kwargs)
        from molequi.calculators.dispersion import D3

        self.dispersion = D3.from_spec(dispersion)
        if (model is None) == (models is None):
            raise ModelError("give exactly one of model=... or models=[...] to MolequiCalculator")
        members = [model] if model is not None else list(models)
        if not members:
            raise ModelError("MolequiCalculator(models=[]) needs at least one model")
        self.device = torch.device(device)
        self.dtype = as_dtype(dtype) or model_dtype(members[0])
        self.models = [m.to(device=self.device, dtype=self.dtype).eval() for m in members]
        for m in self.models:
            if not isinstance(m, ForceField):
                raise ModelError(f"{type(m).__name__} is not a force field: molequi models declare r_max "
                                 "(Å), elements and conservative (molequi.models.base.ForceField)")
        if compile:
            backend = compile if isinstance(compile, str) else "inductor"
            for m in self.models:
                if not isinstance(m, EnergyModel):
                    raise ModelError(f"{type(m).__name__} cannot be compiled by MolequiCalculator (it is not "
                                     "an EnergyModel with atomic_energies)")
                m.compile_energies(backend=backend)
        self.cutoffs = [float(m.r_max) for m in self.models]
        self.elements = sorted(set.intersection(*(set(int(z) for z in m.elements) for m in self.models)))
        self.conservative = all(m.conservative for m in self.models)
        if stress not in ("auto", True, False):
            raise ValueRangeError(f"stress must be 'auto', True or False, got {stress!r}")
        self.stress_mode = stress
        self.neighbors = NeighborCache(skin)
        self._checked_numbers = None  # numbers whose elements were last checked against the model

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        use_ema: bool = True,
        dispersion="checkpoint",
        **kwargs,
    ) -> MolequiCalculator:
        """Load a model from ``path`` (or a committee from a list of paths) and wrap it.

        ``dispersion="checkpoint"`` (the default) adds back the D3 correction that training subtracted from
        the labels (``data.dispersion`` of the run; none if it had none); ``None`` or a spec overrides it.
        """
        from molequi.checkpoint import model_from_payload, read_checkpoint

        dtype = as_dtype(dtype)  # 'float32' as the constructor and from_mace take it
        paths = _as_paths(path)
        payloads = [read_checkpoint(p) for p in paths]  # each file read once: model and dispersion
        models = [model_from_payload(pl, p, device=device, dtype=dtype, use_ema=use_ema)
                  for pl, p in zip(payloads, paths)]
        if dispersion == "checkpoint":
            dispersion = _payload_dispersion(payloads)
        if isinstance(path, (str, Path)):
            return cls(models[0], device=device, dtype=dtype, dispersion=dispersion, **kwargs)
        return cls(models=models, device=device, dtype=dtype, dispersion=dispersion, **kwargs)

    @classmethod
    def from_mace(cls, path: str | Path, head: str | None = None, python: str | Path | None = None,
                  device: str = "cpu", dtype: torch.dtype | str | None = "float64", **kwargs) -> MolequiCalculator:
        """Import a mace-torch ``*.model`` file (``molequi.interop.mace.import_mace``) and wrap it.

        ``head`` picks one head of a multi-head model; ``python`` is a python with mace-torch installed
        (default: $MOLEQUI_MACE_PYTHON or the venv of ``scripts/bench/setup_peers.sh``).
        """
        from molequi.interop.mace import import_mace

        return cls(import_mace(path, head=head, python=python), device=device, dtype=dtype, **kwargs)

    @property
    def model(self) -> torch.nn.Module:
        return self.models[0]

    @property
    def is_committee(self) -> bool:
        return len(self.models) > 1

    # ------------------------------------------------------------------ evaluation
    def _record(self, atoms, edges) -> Data:
        d = Data()
        d[K.NUMBERS] = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        d[K.POS] = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        d[K.CELL] = torch.as_tensor(cell, dtype=self.dtype, device=self.device).reshape(1, 3, 3)
        d[K.PBC] = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool), device=self.device).reshape(1, 3)
        edge_index, unit_shifts = edges
        d[K.EDGE_INDEX] = torch.as_tensor(edge_index, dtype=torch.long, device=self.device)
        d[K.UNIT_SHIFTS] = torch.as_tensor(unit_shifts, dtype=torch.long, device=self.device)
        d[K.SHIFTS] = torch.as_tensor(
            unit_shifts.astype(np.float64) @ cell, dtype=self.dtype, device=self.device
        )
        d[K.BATCH] = torch.zeros(len(atoms), dtype=torch.long, device=self.device)
        d.num_nodes = len(atoms)
        return d

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        atoms = self.atoms
        positions = np.asarray(atoms.positions, dtype=np.float64)
        if not np.all(np.isfinite(positions)):
            raise ValueRangeError("positions contain NaN or inf", hint="the simulation has probably exploded")
        if self._checked_numbers is None or not np.array_equal(atoms.numbers, self._checked_numbers):
            check_elements(atoms.numbers, self.elements)
            self._checked_numbers = np.array(atoms.numbers, copy=True)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        periodic = has_stress(cell, pbc)
        if self.stress_mode == "auto":  # a direct-force model (not conservative) has no stress
            want_stress = periodic and self.conservative
        else:
            want_stress = bool(self.stress_mode) and periodic
        edges = self.neighbors.get(positions, cell, pbc, atoms.numbers, self.cutoffs)
        outs = []
        for model, e in zip(self.models, edges):
            data = self._record(atoms, e)
            with frozen_parameters([model]):
                out = model(data, compute_forces=True, compute_stress=want_stress)
            outs.append(
                {
                    k: v.detach().to("cpu", torch.float64).numpy()
                    for k, v in out.items()
                    if k in (K.ENERGY, K.ENERGIES, K.FORCES, K.STRESS)
                }
            )
        self.results = self._combine(outs, want_stress)
        if self.dispersion is not None:
            from molequi.calculators.dispersion import add_dispersion

            self.results = add_dispersion(self.results, self.dispersion, atoms, want_stress)

    def _combine(self, outs: list[dict], want_stress: bool) -> dict:
        if len(outs) == 1:  # one model: no stacking
            o = outs[0]
            energy = float(o[K.ENERGY].reshape(-1)[0])
            results = {
                "energy": energy,
                "free_energy": energy,
                "energies": o[K.ENERGIES].reshape(-1),
                "forces": o[K.FORCES].reshape(-1, 3),
            }
            if want_stress:
                results["stress"] = stress_to_voigt(o[K.STRESS].reshape(3, 3))
            return results
        energy = np.array([float(o[K.ENERGY].reshape(-1)[0]) for o in outs])  # (M,)
        energies = np.stack([o[K.ENERGIES].reshape(-1) for o in outs])  # (M, n)
        forces = np.stack([o[K.FORCES].reshape(-1, 3) for o in outs])  # (M, n, 3)
        results = {
            "energy": float(energy.mean()),
            "free_energy": float(energy.mean()),
            "energies": energies.mean(0),
            "forces": forces.mean(0),
        }
        if want_stress:
            stress = np.stack([stress_to_voigt(o[K.STRESS].reshape(3, 3)) for o in outs])  # (M, 6)
            results["stress"] = stress.mean(0)
        if len(outs) > 1:
            results["committee_energy"] = energy
            results["energy_std"] = float(energy.std())
            results["forces_std"] = forces.std(0)
            results["forces_std_norm"] = np.sqrt((forces.var(0)).sum(-1))
            if want_stress:
                results["stress_std"] = stress.std(0)
        return results


__all__ = [
    "MolequiCalculator",
    "NeighborCache",
    "as_dtype",
    "check_elements",
    "load_models",
    "model_dtype",
    "stress_to_voigt",
    "DEFAULT_SKIN",
]
