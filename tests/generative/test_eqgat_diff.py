"""EQGAT-diff (``model.name: eqgat_diff``): the denoiser's symmetries, parity with the reference code
(github.com/jule-c/eqgat_diff, ../shared/peers/eqgat_diff or $MOLEQUI_EQGAT_DIFF_CODE), import of its
checkpoints, refusal of bad ones, and the old name of the EGNN-based model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from molequi.errors import CheckpointError
from molequi.interop.eqgat_diff import (
    REFERENCE_CHARGES,
    UnsupportedEQGATOptionError,
    import_eqgat_diff,
    read_eqgat_checkpoint,
)
from molequi.models.generative.categorical import CategoricalDiffusion, EQGATDiffusion, edge_lookup
from molequi.models.generative.eqgat import EQGATDenoiser
from molequi.models.generative.graph import fully_connected_edges

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(os.environ.get("MOLEQUI_EQGAT_DIFF_CODE") or ROOT.parent / "shared" / "peers" / "eqgat_diff")
needs_peer = pytest.mark.skipif(
    not (PEER / "eqgat_diff" / "e3moldiffusion").is_dir(),
    reason=f"EQGAT-diff reference code not at {PEER}: clone github.com/jule-c/eqgat_diff at 98dce2f there "
           "or set MOLEQUI_EQGAT_DIFF_CODE")


def _inputs(gen, sizes=(5, 7), K=5, C=3):
    sizes = torch.tensor(sizes)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    n = int(sizes.sum())
    ei = fully_connected_edges(batch, len(sizes))
    rev = edge_lookup(ei, n, ei.flip(0))
    onehot = torch.nn.functional.one_hot
    b = torch.randint(0, 5, (ei.shape[1],), generator=gen)
    upper = ei[0] < ei[1]
    b[rev[upper]] = b[upper]
    return dict(x=1.5 * torch.randn(n, 3, generator=gen, dtype=torch.float64),
                a=onehot(torch.randint(0, K, (n,), generator=gen), K).double(),
                q=onehot(torch.randint(0, C, (n,), generator=gen), C).double(), b=onehot(b, 5).double(),
                t=torch.rand(len(sizes), generator=gen, dtype=torch.float64), batch=batch, edge_index=ei, rev=rev)


def _orthogonal(gen, proper: bool):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) > 0) != proper:
        q = -q
    return q


def _run(net, inp, x):
    return net(x, inp["a"], inp["q"], inp["b"], inp["t"], inp["batch"], inp["edge_index"], inp["rev"])


def _symmetry_errors(net, gen, proper: bool):
    inp = _inputs(gen)
    R, shift = _orthogonal(gen, proper), torch.randn(3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x0, la, lq, lb = _run(net, inp, inp["x"])
        y0, ma, mq, mb = _run(net, inp, inp["x"] @ R.T + shift)
    scale = max(float(x0.abs().max()), 1.0)
    return (float((x0 @ R.T - y0).abs().max()) / scale,
            max(float((u - v).abs().max()) / max(float(u.abs().max()), 1.0)
                for u, v in ((la, ma), (lq, mq), (lb, mb))))


@pytest.mark.parametrize("cross_product", [False, True])
def test_denoiser_is_rotation_and_translation_equivariant(cross_product):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    net = EQGATDenoiser(5, 3, 5, scalars=12, vectors=4, edge_dim=6, layers=3, cross_product=cross_product).double()
    x_err, logit_err = _symmetry_errors(net, gen, proper=True)
    assert x_err < 1e-10 and logit_err < 1e-10, (x_err, logit_err)


def test_reflections_without_cross_products_only():
    """E(3) without cross products; with them v_i x v_j is a pseudovector and a reflection changes the output
    (the reference's --use-cross-product model is SE(3)-, not E(3)-equivariant)."""
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    net = EQGATDenoiser(5, 3, 5, scalars=12, vectors=4, edge_dim=6, layers=3, cross_product=False).double()
    assert max(_symmetry_errors(net, gen, proper=False)) < 1e-10
    torch.manual_seed(0)
    net = EQGATDenoiser(5, 3, 5, scalars=12, vectors=4, edge_dim=6, layers=3, cross_product=True).double()
    assert max(_symmetry_errors(net, gen, proper=False)) > 1e-4


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """check.py eqgat_diff (tiny sizes, with and without cross products) as a user runs it: its JSON, exit
    status and the reference checkpoint it wrote with the reference's own classes."""
    if not (PEER / "eqgat_diff" / "e3moldiffusion").is_dir():
        pytest.skip(f"EQGAT-diff reference code not at {PEER}: clone github.com/jule-c/eqgat_diff at 98dce2f "
                    "there or set MOLEQUI_EQGAT_DIFF_CODE")
    out = {}
    for cross in (False, True):
        work = tmp_path_factory.mktemp(f"eqgat_cross{int(cross)}")
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "parity" / "check.py"), "eqgat_diff",
                               "--peer-code", str(PEER), "--size", "tiny", "--workdir", str(work),
                               *(["--cross-product"] if cross else [])],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        out[cross] = (json.loads(proc.stdout.strip().splitlines()[-1]), proc.returncode, work / "best_mol_stab.ckpt")
    return out


@needs_peer
@pytest.mark.parametrize("cross_product", [False, True])
def test_parity_with_reference_denoiser_and_loss(parity, cross_product):
    res, rc, _ = parity[cross_product]
    assert res["cross_product"] is cross_product
    assert all(v <= 1e-6 for v in res["relative"].values()), res["relative"]  # x0, type/charge/bond logits
    assert all(v <= 1e-10 for v in res["loss_relative"].values()), res["loss_terms"]  # its DiffusionLoss
    assert res["ok"] and rc == 0


@needs_peer
def test_import_round_trip(parity, tmp_path):
    from molequi.cli.main import main
    from molequi.models.generative.io import load_generative

    ckpt = parity[True][2]
    out = tmp_path / "eqgat.pt"
    assert main(["import", "eqgat_diff", str(ckpt), "--out", str(out)]) == 0
    model = load_generative(out)
    direct = import_eqgat_diff(ckpt)
    assert isinstance(model, EQGATDiffusion) and model.config.cross_product
    assert model.config.charges == REFERENCE_CHARGES and len(model.config.elements) == 16
    state, _ = read_eqgat_checkpoint(ckpt)
    for ref, name in (("atoms_prior", "type"), ("charges_prior", "charge"), ("bonds_prior", "bond")):
        p = state[ref].double() / state[ref].double().sum()
        counts = getattr(model, f"{name}_counts") + 1.0  # the +1-smoothed marginal, in float64
        assert torch.allclose(counts / counts.sum(), p, rtol=0, atol=1e-10), name
    inp = _inputs(torch.Generator().manual_seed(3), K=16, C=6)
    with torch.no_grad():
        for u, v in zip(_run(model.net, inp, inp["x"]), _run(direct.net, inp, inp["x"])):
            assert torch.equal(u, v)
    mols = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert len(mols) == 2 and all(set(m.charges.tolist()) <= set(REFERENCE_CHARGES) for m in mols)


@needs_peer
def test_unsupported_reference_options_are_listed(parity, tmp_path):
    obj = torch.load(parity[False][2], weights_only=True)
    obj["hyper_parameters"] = {**obj["hyper_parameters"], "edge_mp": True, "context_mapping": True}
    bad = tmp_path / "bad.ckpt"
    torch.save(obj, bad)
    with pytest.raises(UnsupportedEQGATOptionError, match="edge_mp=True.*context_mapping=True"):
        import_eqgat_diff(bad)


def test_bad_checkpoints_raise_named_errors(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read as an EQGAT-diff checkpoint"):
        import_eqgat_diff(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        import_eqgat_diff(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}, "hyper_parameters": {}}, other)
    with pytest.raises(CheckpointError, match="not an EQGAT-diff"):
        import_eqgat_diff(other)
    pickled = tmp_path / "module.ckpt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled class: refused by weights_only, nothing executed
    with pytest.raises(CheckpointError, match="cannot be read"):
        import_eqgat_diff(pickled)


def test_old_eqgat_diff_checkpoints_load_as_egnn_categorical(tmp_path):
    """Checkpoints written when ``eqgat_diff`` named the EGNN-based model load as ``egnn_categorical``."""
    from molequi.checkpoint import load_model, make_payload, save_model

    model = CategoricalDiffusion(CategoricalDiffusion.Config(hidden=8, edge_hidden=4, layers=1, timesteps=10))
    import dataclasses

    cfg = {"model": {**dataclasses.asdict(model.config), "name": "eqgat_diff"}}
    del cfg["model"]["charges"]  # absent from those configs
    path = tmp_path / "old.pt"
    save_model(make_payload(config=cfg, statistics={"elements": [1, 6, 7, 8, 9]}, model_state=model.state_dict()),
               path)
    loaded = load_model(path)
    assert type(loaded) is CategoricalDiffusion and loaded.config.name == "egnn_categorical"
