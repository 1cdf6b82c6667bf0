"""Compile readiness (issue 20 item 1): the per-atom energies of every shipped force field trace into ONE
graph (no graph break: ``torch._dynamo.explain`` and ``fullgraph=True``), and the compiled model gives the
eager energies, forces and stress. The tests use the ``aot_eager`` backend (same tracing, no code generation:
Inductor needs minutes on two cores; its speed is in scripts/bench/compile_speed.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from ase.build import bulk, molecule

from molequi import keys as K
from molequi.calculators import MolequiCalculator
from molequi.config import model_section_from_dict
from molequi.data.records import atoms_to_data
from molequi.data.statistics import Statistics
from molequi.graph.neighbors import RadiusGraph
from molequi.models import build_model

STATS = Statistics(elements=[1, 6, 8, 29], avg_num_neighbors=8.0)
NAMES = ["mace", "egnn", "equiformer_v2", "lj"]


def model(name):
    torch.manual_seed(0)
    small = {"mace": {"hidden_irreps": "8x0e+8x1o", "max_ell": 2, "correlation": 2, "radial_MLP": [8]},
             "egnn": {}, "equiformer_v2": {}, "lj": {}}[name]
    return build_model(model_section_from_dict({"name": name, "r_max": 4.0, **small}), STATS).double().eval()


def record(atoms):
    d = RadiusGraph(4.0)(atoms_to_data(atoms, dtype=torch.float64))
    d[K.BATCH] = torch.zeros(len(atoms), dtype=torch.long)
    return d


@pytest.mark.parametrize("name", NAMES)
def test_atomic_energies_trace_without_graph_breaks(name):
    m = model(name)
    d = record(molecule("CH3CH2OH"))
    dynamo.reset()
    explained = dynamo.explain(m.atomic_energies)(d, d[K.POS], d[K.CELL].view(-1, 3, 3))
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("name", ["mace", "egnn"])
def test_compiled_calculator_equals_eager(name):
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.05, seed=0)
    for atoms in (molecule("CH3CH2OH"), molecule("CH3COOH"), cu):  # new sizes: dynamic shapes, no recompile error
        eager, compiled = atoms.copy(), atoms.copy()
        eager.calc = MolequiCalculator(model(name))
        compiled.calc = MolequiCalculator(model(name), compile="aot_eager")
        assert compiled.get_potential_energy() == pytest.approx(eager.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(compiled.get_forces(), eager.get_forces(), atol=1e-10)
        if atoms.pbc.any():
            np.testing.assert_allclose(compiled.get_stress(), eager.get_stress(), atol=1e-10)


def test_training_mode_stays_eager():
    """A compiled graph has no double backward, so a model in training mode (force loss) runs eagerly."""
    m = model("mace").compile_energies(backend="aot_eager")
    m.train()
    d = record(molecule("H2O"))
    out = m(d, compute_forces=True)
    out[K.FORCES].pow(2).sum().backward()  # second derivative through the eager path
    assert any(p.grad is not None for p in m.parameters())
