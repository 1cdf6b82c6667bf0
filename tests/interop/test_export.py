"""``molequi export`` (issue 20 item 2): the exported file runs in a process where molequi (and e3nn,
torch-geometric, ASE) cannot be imported, and gives the ASE calculator's energy, forces and stress (float64,
1e-6 relative) for a molecule and a periodic cell whose atom and edge counts differ from the tracing example."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from molequi.calculators import MolequiCalculator
from molequi.checkpoint import make_payload, save_model
from molequi.cli.main import main
from molequi.config import to_plain
from molequi.data.statistics import Statistics
from molequi.interop.export import example_inputs
from molequi.models.mace import MACE

# run with torch only: any import of these raises (a meta-path finder ahead of every other)
TORCH_ONLY = r"""
import sys
BLOCKED = {"molequi", "e3nn", "torch_geometric", "ase", "lightning"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import json, torch
extra = {"molequi.json": ""}
fn = torch.export.load(sys.argv[1], extra_files=extra).module()
meta = json.loads(extra["molequi.json"])
results = []
with torch.no_grad():
    for inputs in torch.load(sys.argv[2], weights_only=True):
        results.append([t.detach() for t in fn(*inputs)])
torch.save({"results": results, "meta": meta,
            "blocked_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}, sys.argv[3])
"""


def structures():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 1, 1))  # 12 atoms (the example has 8)
    cu.rattle(0.05, seed=0)
    ethanol = molecule("CH3CH2OH")
    unknown = molecule("H2O")
    unknown.numbers[0] = 26  # Fe: not among the model's elements
    return ethanol, cu, unknown


def test_exported_file_runs_with_torch_only_and_equals_the_calculator(tmp_path):
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=4.0, max_ell=2, hidden_irreps="8x0e+8x1o", correlation=2, radial_MLP=[8],
                      MLP_irreps="4x0e", num_interactions=2)
    stats = Statistics(elements=[1, 6, 8, 29], avg_num_neighbors=8.0, e0s={1: -13.6, 6: -1029.0, 8: -2041.0,
                                                                        29: -45000.0})
    model = MACE.from_config(cfg, stats).double().eval()
    ckpt = tmp_path / "model.pt"
    save_model(make_payload(config={"model": {"name": "mace", **to_plain(cfg)}}, statistics=stats.to_dict(),
                            model_state=model.state_dict(), dtype=torch.float64), ckpt)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "model.pt2")]) == 0

    ethanol, cu, unknown = structures()
    inputs = [example_inputs(a, 4.0, torch.float64) for a in (ethanol, cu, unknown)]
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "run.py"
    script.write_text(TORCH_ONLY)
    subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "model.pt2"), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=300)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["blocked_loaded"] == []
    assert out["meta"]["r_max"] == 4.0 and out["meta"]["elements"] == [1, 6, 8, 29]

    for atoms, (energy, energies, forces, stress) in zip((ethanol, cu), out["results"]):
        atoms.calc = MolequiCalculator(model)
        ref_f = atoms.get_forces()
        assert energy.item() == pytest.approx(atoms.get_potential_energy(), rel=1e-6)
        np.testing.assert_allclose(energies.numpy(), atoms.get_potential_energies(), rtol=1e-6)
        np.testing.assert_allclose(forces.numpy(), ref_f, rtol=1e-6, atol=1e-6 * np.abs(ref_f).max())
        if atoms.pbc.any():
            ref_s = atoms.get_stress(voigt=False)
            np.testing.assert_allclose(stress.numpy(), ref_s, rtol=1e-6, atol=1e-6 * np.abs(ref_s).max())
            assert np.abs(ref_s).max() > 1e-4  # a stress worth comparing
        else:
            assert np.all(stress.numpy() == 0)
    assert all(torch.isnan(t).all() for t in out["results"][2])  # unknown element: NaN, not a wrong number


def test_export_with_an_example_larger_than_a_contraction_block(monkeypatch):
    """The symmetric contraction runs eagerly in blocks of atoms (``BLOCK_BYTES``); traced for export it
    must take all atoms as one piece, or the program's atom count is no longer dynamic (torch.export
    refuses it).
    Blocks of one atom here: the exported program still gives the calculator's energy and forces for
    structures of other sizes than the example's."""
    import molequi.nn.symmetric_contraction as contraction
    from molequi.interop.export import trace

    monkeypatch.setattr(contraction, "BLOCK_BYTES", 1)
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=4.0, max_ell=2, hidden_irreps="8x0e+8x1o", correlation=2, radial_MLP=[8],
                      MLP_irreps="4x0e", num_interactions=2)
    stats = Statistics(elements=[1, 6, 8, 29], avg_num_neighbors=8.0)
    model = MACE.from_config(cfg, stats).double().eval()
    fn = trace(model).module()
    for atoms in structures()[:2]:
        energy, _, forces, _ = fn(*example_inputs(atoms, 4.0, torch.float64))
        atoms.calc = MolequiCalculator(model)
        assert energy.item() == pytest.approx(atoms.get_potential_energy(), rel=1e-10)
        np.testing.assert_allclose(forces.detach().numpy(), atoms.get_forces(), rtol=1e-8, atol=1e-10)
