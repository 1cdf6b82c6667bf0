"""The force-field interface (``ForceField``) and the pieces force fields share: the element table and the
per-atom energy head.

    E_i = E0[z_i] + scale * y_i + shift          (eV)

with y_i the model's dimensionless per-atom readout, E0 the per-element reference energies, and
scale / shift the std / mean of the per-atom residual energy, all from ``Statistics`` (eV, eV/atom).
They are buffers, so a state dict restores them; the element list comes from the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from ase.data import chemical_symbols
from torch import nn

from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ModelError
from molequi.response import energy_response, functional_energy_response, num_graphs


def is_tracing() -> bool:
    """True while ``torch.compile``, ``torch.export`` or ``make_fx`` (``molequi.interop.export``) trace a model:
    code that would sync with the host (``bool(tensor)``) must not run then."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def without_duck_sizing(compiled, size_oblivious: bool = True):
    """``compiled`` (a ``torch.compile``'d callable) traced without duck sizing. Dynamo's default gives sizes
    that are equal at the first trace ONE symbol: a first batch of 2 or 3 structures ties the structure count
    to the edge index's 2 rows or the cell's 3 columns, and the next batch size recompiles. The setting
    (``torch.fx.experimental._config.use_duck_shape``) is read when a trace starts, so it is set around each
    call, for molequi's compiled functions only. ``size_oblivious`` (``backed_size_oblivious``) also keeps a
    size of 1 symbolic rather than specialised, so a first batch of ONE structure does not recompile at 2
    (code that branches on such a size uses ``statically_known_true``); left off for compiled inference of a
    single structure, whose one-cell fast path (``edge_vectors``) it would turn off."""
    import functools

    from torch.fx.experimental import _config

    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with _config.patch(use_duck_shape=False, backed_size_oblivious=size_oblivious):
            return compiled(*args, **kwargs)

    return call


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


@runtime_checkable
class ForceField(Protocol):
    """What the calculator, MD, prediction and the trainer may use of a force-field model.

    Attributes and method::

        r_max         cutoff radius of the neighbour graph the model reads (Å)
        elements      atomic numbers the model was built for (an unknown element is a ModelError)
        conservative  True when forces = -dE/dx by autograd (MD is allowed); False for direct-force heads
        forward(data, compute_forces, compute_stress) -> {"energy" (B,) eV, "energies" (n,) eV,
                                                          "forces" (n, 3) eV/Å?, "stress" (B, 3, 3) eV/Å^3?}
    """

    r_max: float
    elements: list[int]
    conservative: bool

    def forward(self, data, compute_forces: bool = True,
                compute_stress: bool = False) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class GenerativeModel(Protocol):
    """What the diffusion task and ``molequi generate`` use of a generative model
    (edm, eqgat_diff, egnn_categorical).

    config                     the model's ``Config`` (elements, sampling settings)
    training_loss(batch)       -> (scalar loss, {name: logged value})
    sample(n, ...)             -> n generated molecules
    """

    config: object

    def training_loss(self, batch, generator=None) -> tuple[torch.Tensor, dict]: ...

    def sample(self, n: int, **kwargs) -> list: ...


class EnergyModel(nn.Module):
    """A model defined by its per-atom energies; energy, forces and stress follow from ``molequi.response``.

    Subclasses implement ``atomic_energies(data, pos, cell) -> (n,)`` in eV. ``forward`` keeps the graph of
    the derivatives while training (force training needs second derivatives). Subclasses set ``r_max`` and
    ``elements`` in their constructor (``ForceField``).
    """

    r_max: float
    elements: list[int]
    conservative: bool = True
    #: why the model cannot run as one compiled graph (``compile_energies`` / ``compile_training`` raise a
    #: ConfigError saying so), or None
    compile_refusal: str | None = None

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_compilable(self) -> None:
        if self.compile_refusal:
            raise ConfigError(f"{type(self).__name__} cannot be compiled: {self.compile_refusal}; run it "
                              "eagerly (trainer.compile: false, MolequiCalculator without compile)")

    def compile_energies(self, backend: str = "inductor", dynamic: bool = True) -> EnergyModel:
        """Run ``atomic_energies`` through ``torch.compile(fullgraph=True)`` from now on (inference: forces
        and stress are the autograd of the compiled function; its backward is compiled too). Not for force
        training: a compiled graph has no double backward. ``backend="aot_eager"`` traces without
        generating code (quick; what the tests use). Returns ``self``."""
        self._check_compilable()
        self._compiled_energies = without_duck_sizing(torch.compile(self.atomic_energies, fullgraph=True,
                                                                    dynamic=dynamic, backend=backend),
                                                      size_oblivious=False)
        return self

    def compile_training(self, backend: str = "inductor", dynamic: bool = True) -> EnergyModel:
        """Run energy, forces and stress through ``torch.compile(fullgraph=True)`` from now on, training
        included (``trainer.compile``): the derivatives are taken by ``torch.func.grad`` inside the compiled
        function (``molequi.response.functional_energy_response``), so forces are outputs of the compiled
        forward and the force loss needs only its first-order backward. Returns ``self``."""
        self._check_compilable()
        self._compiled_response = without_duck_sizing(torch.compile(functional_energy_response, fullgraph=True,
                                                                    dynamic=dynamic, backend=backend))
        return self

    def forward(self, data, compute_forces: bool = True,
                compute_stress: bool = False) -> dict[str, torch.Tensor]:
        response = getattr(self, "_compiled_response", None)
        if response is not None:
            return response(self.atomic_energies, data, num_graphs(data), compute_forces=compute_forces,
                            compute_stress=compute_stress)
        fn = getattr(self, "_compiled_energies", None)
        if fn is None or self.training:
            fn = self.atomic_energies
        return energy_response(fn, data, compute_forces=compute_forces,
                               compute_stress=compute_stress, create_graph=self.training)


class ElementTable(nn.Module):
    """Atomic numbers (n,) -> element indices (n,) in [0, len(elements)); ModelError for unknown elements."""

    def __init__(self, elements: Sequence[int]):
        super().__init__()
        elements = [int(z) for z in elements]
        if not elements:
            raise ConfigError("a model needs at least one element")
        if len(set(elements)) != len(elements) or min(elements) < 1 or max(elements) >= len(chemical_symbols):
            raise ConfigError(f"elements must be distinct atomic numbers 1..118, got {elements}")
        self.elements = elements
        table = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        table[torch.tensor(elements)] = torch.arange(len(elements))
        self.register_buffer("table", table, persistent=False)

    def __len__(self) -> int:
        return len(self.elements)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.reshape(-1).long()
        valid = (numbers > 0) & (numbers < self.table.shape[0])
        index = self.table[numbers.clamp(0, self.table.shape[0] - 1)]
        if is_tracing():
            # no host sync in a compiled or exported graph: the calculator and the data readers check elements
            # before a compiled model sees them (check_elements), so only eager calls check here
            return index
        if not bool((valid & (index >= 0)).all()):
            bad = sorted(
                {
                    int(z)
                    for z, i, v in zip(numbers.tolist(), index.tolist(), valid.tolist())
                    if not v or i < 0
                }
            )
            raise ModelError(
                f"element(s) {', '.join(_symbol(z) for z in bad)} not among the model's elements "
                f"({', '.join(_symbol(z) for z in self.elements)}); train a model that includes "
                f"them"
            )
        return index


class AtomicEnergyHead(nn.Module):
    """(element index (n,), readout (n,)) -> per-atom energies E0[z] + scale * readout + shift (n,), eV."""

    def __init__(self, statistics: Statistics, elements: Sequence[int]):
        super().__init__()
        e0 = torch.tensor([float(statistics.e0s.get(int(z), 0.0)) for z in elements])
        self.register_buffer("e0", e0)
        self.register_buffer("scale", torch.tensor(float(statistics.energy_scale)))
        self.register_buffer("shift", torch.tensor(float(statistics.energy_shift)))

    def forward(self, element: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        return self.e0[element] + self.scale * readout + self.shift


__all__ = ["ForceField", "GenerativeModel", "EnergyModel", "ElementTable", "AtomicEnergyHead", "without_duck_sizing"]
