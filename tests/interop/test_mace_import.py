"""Importing mace-torch models: basis change, named refusals, and numbers against mace-torch itself.

Without mace-torch installed, the reference numbers come from ``data/mace_tiny.pt``: the export of a
random two-head ScaleShiftMACE and the energies / forces / stress mace-torch's ``MACECalculator`` computed
for it (written by ``scripts/parity/make_mace_fixture.py``). With the peer venv of
``scripts/bench/setup_peers.sh`` present, the full parity check and the CLI run too; otherwise those tests
are skipped and say why.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3

from molequi.calculators.calculator import MolequiCalculator
from molequi.errors import ConfigError, ForeignModelError, UnsupportedModelError
from molequi.interop.mace import import_mace, inspect_model_file, mace_config, peer_python
from molequi.nn.symmetric_contraction import change_of_basis, symmetric_basis

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).with_name("data") / "mace_tiny.pt"


def _peer() -> str | None:
    try:
        return peer_python()
    except ForeignModelError:
        return None


PEER = _peer()
NEEDS_PEER = pytest.mark.skipif(
    PEER is None,
    reason="mace-torch peer venv absent: run `bash scripts/bench/setup_peers.sh mace` (or set "
    "MOLEQUI_MACE_PYTHON) to run the parity check against mace-torch",
)


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


# ------------------------------------------------------------------------------------- change of basis
def _e3nn_symmetric_maps(irreps: str, nu: int, target: tuple[int, int]) -> np.ndarray:
    """Equivariant symmetric nu-linear maps onto ``target`` built by e3nn's ReducedTensorProducts."""
    formula = {2: "ij=ji", 3: "ijk=jik=ikj"}[nu]
    indices = formula.split("=")[0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds it in the default dtype
    try:
        rtp = o3.ReducedTensorProducts(formula, **{i: irreps for i in indices})
    finally:
        torch.set_default_dtype(previous)
    q = rtp.change_of_basis.double().numpy()  # [dim_out, dim, ..., dim]
    maps, start = [], 0
    for mul, ir in rtp.irreps_out:
        for _ in range(mul):
            if (ir.l, ir.p) == target:
                maps.append(q[start : start + ir.dim])
            start += ir.dim
    return np.stack(maps)  # [K', 2L+1, dim^nu]


@pytest.mark.parametrize("irreps,nu,target", [("0e+1o+2e", 2, (0, 1)), ("0e+1o+2e", 2, (2, 1)),
                                              ("0e+1o", 3, (1, -1)), ("0e+1o", 3, (0, 1))])
def test_change_of_basis_reproduces_e3nn_maps_on_random_inputs(irreps, nu, target):
    irr = tuple((ir.l, ir.p) for _, ir in o3.Irreps(irreps))
    foreign = _e3nn_symmetric_maps(irreps, nu, target)
    r = change_of_basis(irr, target, nu, foreign)  # [K', K]
    basis = symmetric_basis(irr, target, nu)
    assert r.shape == (foreign.shape[0], basis.shape[0])
    rng = np.random.default_rng(0)
    w = rng.normal(size=foreign.shape[0])
    letters = "abc"[:nu]
    for _ in range(5):
        x = rng.normal(size=foreign.shape[2])
        args = [x] * nu
        want = np.einsum(f"km{letters},k," + ",".join(letters) + "->m", foreign, w, *args)
        got = np.einsum(f"km{letters},k," + ",".join(letters) + "->m", basis, w @ r, *args)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max()))


def test_change_of_basis_of_float32_rounded_maps_needs_the_looser_tolerance():
    irr = ((0, 1), (1, -1))
    exact = _e3nn_symmetric_maps("0e+1o", 3, (1, -1))
    rounded = exact.astype(np.float32).astype(np.float64)
    with pytest.raises(ConfigError, match="not in the span"):
        change_of_basis(irr, (1, -1), 3, rounded)
    r = change_of_basis(irr, (1, -1), 3, rounded, tol=1e-6)
    np.testing.assert_allclose(r, change_of_basis(irr, (1, -1), 3, exact), rtol=0, atol=1e-6)


def test_change_of_basis_refuses_maps_that_are_not_equivariant():
    irr = ((0, 1), (1, -1))
    junk = np.random.default_rng(1).normal(size=(2, 3, 4, 4))
    with pytest.raises(ConfigError, match="not in the span"):
        change_of_basis(irr, (1, -1), 2, junk)


# ------------------------------------------------------------------------------ against mace-torch's numbers
def test_imported_fixture_matches_mace_torch(fixture):
    model = import_mace("mace_tiny.model", head=fixture["head"], export=copy.deepcopy(fixture["export"]))
    calc = MolequiCalculator(model, dtype=torch.float64, skin=0.0)
    for s, ref in zip(fixture["structures"], fixture["reference"]):
        atoms = Atoms(numbers=s["numbers"].numpy(), positions=s["positions"].numpy(), cell=s["cell"].numpy(),
                      pbc=s["pbc"])
        atoms.calc = calc
        e = atoms.get_potential_energy()
        assert abs(e - float(ref["energy"])) <= 1e-9 * max(1.0, abs(float(ref["energy"])))
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy(), rtol=0, atol=1e-9)
        if "stress" in ref:
            np.testing.assert_allclose(atoms.get_stress(), ref["stress"].numpy(), rtol=0, atol=1e-10)


def test_default_head_is_the_one_named_default(fixture):
    cfg_default, stats_default = mace_config(copy.deepcopy(fixture["export"]))
    cfg_other, stats_other = mace_config(copy.deepcopy(fixture["export"]), head="other")
    heads = fixture["export"]["hyper"]["heads"]
    e0 = fixture["export"]["hyper"]["atomic_energies"]
    z = fixture["export"]["hyper"]["atomic_numbers"]
    assert stats_default.e0s[z[0]] == pytest.approx(float(e0[heads.index("default"), 0]), abs=0)
    assert stats_other.e0s[z[0]] == pytest.approx(float(e0[heads.index("other"), 0]), abs=0)


# ----------------------------------------------------------------------------------------- named refusals
def test_missing_head_is_named(fixture):
    with pytest.raises(ForeignModelError, match=r"no head 'r2scan'.*\['default', 'other'\]"):
        mace_config(copy.deepcopy(fixture["export"]), head="r2scan")


def test_unsupported_options_are_all_listed(fixture):
    export = copy.deepcopy(fixture["export"])
    export["hyper"]["use_so3"] = True
    export["layers"][1]["class"] = "RealAgnosticDensityResidualInteractionBlock"
    export["classes"].append("mace.modules.blocks.RealAgnosticDensityResidualInteractionBlock")
    export["source"], export["origin"] = "x.model", "mace-torch model file"
    with pytest.raises(UnsupportedModelError) as info:
        mace_config(export)
    text = str(info.value)
    assert "x.model" in text and "mace-torch model file" in text
    assert any("use_so3" in o for o in info.value.options)
    assert any("interaction block 1: RealAgnosticDensityResidualInteractionBlock" in o for o in info.value.options)
    assert any("RealAgnosticDensityResidualInteractionBlock" in o and o.startswith("modules") for o in
               info.value.options)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ForeignModelError, match=r"broken\.model.*corrupt"):
        inspect_model_file(path)
    with pytest.raises(ForeignModelError, match="does not exist"):
        inspect_model_file(tmp_path / "absent.model")


def test_truncated_archive_is_named(tmp_path):
    good = tmp_path / "lin.pt"
    torch.save(torch.nn.Linear(2, 2), good)
    cut = tmp_path / "cut.model"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ForeignModelError, match=r"cut\.model"):
        inspect_model_file(cut)


def test_torchscript_and_state_dict_are_refused_with_origin(tmp_path):
    scripted = tmp_path / "m_compiled.model"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(ForeignModelError, match="TorchScript"):
        inspect_model_file(scripted)
    sd = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), sd)
    with pytest.raises(ForeignModelError, match="state dict"):
        inspect_model_file(sd)


def test_legacy_serialisation_is_named(tmp_path):
    path = tmp_path / "old.model"
    torch.save(torch.nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)
    with pytest.raises(ForeignModelError, match=r"old\.model \(legacy torch.save file\).*save it again"):
        inspect_model_file(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_naming_os_system_is_refused_unexecuted(tmp_path):
    path = tmp_path / "evil.model"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(ForeignModelError, match=r"globals outside.*system"):
        inspect_model_file(path)


def test_library_layer_does_not_import_trainer_or_cli():
    sys.path.insert(0, str(ROOT / "tests"))
    from test_layering import import_map, layer_violations

    assert layer_violations(import_map(), library=("interop",)) == []


# ------------------------------------------------------------------------------------- with mace-torch
@NEEDS_PEER
@pytest.mark.slow
def test_parity_with_mace_torch_small_and_options(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "parity" / "check.py"), "mace",
                           "--peer-python", PEER, "--models", "small,options"],
                          capture_output=True, text=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["ok"], result
    assert result["max_abs_err_forces"] < 1e-8


@NEEDS_PEER
@pytest.mark.slow
def test_cli_import_writes_a_checkpoint_every_verb_loads(tmp_path):
    from molequi.checkpoint import load_model
    from molequi.cli.main import main

    spec = dict(json.loads(json.dumps({
        "model": "ScaleShiftMACE", "seed": 4, "r_max": 4.0, "num_bessel": 6, "num_polynomial_cutoff": 5,
        "max_ell": 2, "interaction_cls": "RealAgnosticResidualInteractionBlock",
        "interaction_cls_first": "RealAgnosticInteractionBlock", "num_interactions": 2,
        "hidden_irreps": "4x0e+4x1o", "MLP_irreps": "4x0e", "avg_num_neighbors": 3.0,
        "atomic_numbers": [1, 8], "correlation": 2, "radial_MLP": [8]})))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    model_file = tmp_path / "m.model"
    subprocess.run([PEER, str(ROOT / "scripts" / "parity" / "_mace_peer.py"), "build", str(tmp_path / "spec.json"),
                    str(model_file)], check=True, capture_output=True)
    out = tmp_path / "m.pt"
    assert main(["import", "mace", str(model_file), "--out", str(out), "--peer-python", PEER]) == 0
    loaded = load_model(out, dtype=torch.float64)
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.calc = MolequiCalculator(loaded)
    e_ckpt = atoms.get_potential_energy()
    atoms.calc = MolequiCalculator.from_mace(model_file, python=PEER)
    assert atoms.get_potential_energy() == pytest.approx(e_ckpt, abs=1e-12)
    assert main(["import", "mace", str(model_file), "--out", str(out), "--peer-python", PEER,
                 "--head", "nope"]) == 1
