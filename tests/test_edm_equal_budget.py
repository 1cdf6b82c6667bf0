"""scripts/bench/edm_equal_budget.py: the data it writes for EDM's code and the model config it gives molequi,
checked against EDM's own code (its QM9 loader and its model builder), from EDM's source tree at
../shared/peers/edm (github.com/ehoogeboom/e3_diffusion_for_molecules, commit in
../shared/peers/README.md)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PEER = (REPO / ".." / "shared" / "peers" / "edm").resolve()
needs_peer = pytest.mark.skipif(
    not (PEER / "qm9" / "dataset.py").is_file(), reason=f"EDM's source tree is not at {PEER}"
)
sys.path.insert(0, str(REPO / "scripts" / "bench"))

import edm_equal_budget as bench  # noqa: E402


@pytest.fixture
def peer_imports(monkeypatch):
    """EDM's tree on sys.path and the stub wandb / imageio modules, both removed after the test (a stub left
    in sys.modules would hide a missing wandb from the trainer's logger checks)."""
    monkeypatch.syspath_prepend(str(PEER))
    before = set(sys.modules)
    yield
    for name in ("wandb", "imageio"):
        if (
            name not in before
            and isinstance(sys.modules.get(name), type(sys))
            and getattr(sys.modules[name], "__getattr__", None) is bench._stub_attribute
        ):
            del sys.modules[name]


def _xyz(numbers, positions) -> bytes:
    symbols = {1: "H", 6: "C", 7: "N", 8: "O"}
    rows = "".join(f"{symbols[int(z)]} {x:.6f} {y:.6f} {w:.6f}\n" for z, (x, y, w) in zip(numbers, positions))
    return f"{len(numbers)}\n\n{rows}".encode()  # the ppqm layout: empty second line


def _tiny_tarball(path: Path, rng) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Two molecules of each EDM split (each with H, C, N and O, as EDM's loader wants every species in
    every split) plus one outside the split; returns id -> (numbers, positions)."""
    from molequi.interop.edm import edm_qm9_split

    split = edm_qm9_split()
    ids = [int(split[k][j]) for k in ("train", "valid", "test") for j in (0, 1)]
    mols = {}
    with tarfile.open(path, "w:gz") as tar:
        for k, i in enumerate(ids):
            z = np.array([6, 7, 8] + [1] * (k + 1) + [6] * (k % 3))
            x = rng.normal(scale=1.5, size=(len(z), 3))
            mols[i] = (z, x)
            data = _xyz(z, x)
            info = tarfile.TarInfo(f"xyz/dsgdb9nsd_{i:06d}.xyz")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return mols


@needs_peer
def test_edm_loader_reads_the_prepared_split(tmp_path, peer_imports):
    """EDM's own ``retrieve_dataloaders`` reads the npz files ``prepare`` writes and returns the tarball's
    molecules of each split (positions to float32, atom types, masks), with the absent ones counted."""
    mols = _tiny_tarball(tmp_path / "xyz.tar.gz", np.random.default_rng(0))
    counts = bench.prepare(tmp_path / "xyz.tar.gz", tmp_path / "work")
    assert counts["tarball_molecules"] == 6
    assert [counts[k]["kept"] for k in ("train", "valid", "test")] == [2, 2, 2]
    assert counts["train"]["dropped_absent"] == 100000 - 2 and counts["test"]["edm_split"] == 13083

    bench._stub_modules()
    with contextlib.redirect_stdout(io.StringIO()):
        from qm9 import dataset as edm_dataset
    args = bench.edm_options(tmp_path / "work", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        loaders, _ = edm_dataset.retrieve_dataloaders(argparse.Namespace(**{**vars(args), "batch_size": 8}))
    with np.load(tmp_path / "work" / "edm_data" / "qm9" / "test.npz") as f:
        order = f["index"].tolist()
    for name in ("train", "valid", "test"):
        ds = loaders[name].dataset
        ds.perm = None  # EDM's dataset shuffles with torch.randperm; the split's own order here
        batch = loaders[name].collate_fn([ds[j] for j in range(len(ds))])
        with np.load(tmp_path / "work" / "edm_data" / "qm9" / f"{name}.npz") as f:
            ids = f["index"].tolist()
        for b, i in enumerate(ids):
            z, x = mols[i]
            mask = batch["atom_mask"][b]
            assert int(mask.sum()) == len(z)
            np.testing.assert_allclose(batch["positions"][b][mask].numpy(), x, atol=1e-6)
            decoded = np.array(bench.ELEMENTS)[batch["one_hot"][b][mask].int().argmax(-1).numpy()]
            assert decoded.tolist() == z.tolist()  # EDM's one-hot over the data's species = our H C N O order
            assert batch["charges"][b][mask][:, 0].tolist() == z.tolist()
    assert bench.load_split(tmp_path / "work", "test")[0][0].tolist() == mols[order[0]][0].tolist()


@needs_peer
def test_molequi_config_is_edms_model(tmp_path, peer_imports):
    """The ``molequi train`` config of the comparison builds EDM's own network: the weights of EDM's
    ``get_model`` with the comparison's options load into it (every tensor used, every shape equal) and
    give the same denoiser output."""
    from molequi.config import load_config
    from molequi.interop.edm import edm_state_to_molequi
    from molequi.models.generative.edm import EDM

    bench._stub_modules()
    with contextlib.redirect_stdout(io.StringIO()):
        from qm9.models import get_model
    (tmp_path / "edm_data" / "qm9").mkdir(parents=True)
    np.savez(tmp_path / "edm_data" / "qm9" / "train.npz", num_atoms=np.array([3, 5, 5]))
    sys.modules.pop("configs", None)  # molequi's own configs/ folder may have been imported as a namespace
    info = bench.edm_dataset_info(tmp_path)
    assert info["atom_decoder"] == ["H", "C", "N", "O"] and info["n_nodes"] == {3: 1, 5: 2}
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        peer, _, _ = get_model(bench.edm_options(tmp_path, 0), torch.device("cpu"), info, None)
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    (tmp_path / "m.yaml").write_text(bench.molequi_yaml(tmp_path / "run", 0))
    cfg = load_config(tmp_path / "m.yaml")
    ours = EDM(cfg.model.config)
    ours.load_state_dict(edm_state_to_molequi(peer.state_dict(), ours))
    peer, ours = peer.double().eval(), ours.double().eval()
    B, N, F = 2, 5, 5
    gen = torch.Generator().manual_seed(1)
    node_mask = torch.ones(B, N, 1, dtype=torch.float64)
    node_mask[0, 3:] = 0
    edge = node_mask[:, :, 0].unsqueeze(1) * node_mask[:, :, 0].unsqueeze(2) * (1 - torch.eye(N))
    z = torch.randn(B, N, 3 + F, generator=gen, dtype=torch.float64) * node_mask
    z[:, :, :3] -= z[:, :, :3].sum(1, keepdim=True) / node_mask.sum(1, keepdim=True) * node_mask
    t = torch.tensor([[0.3], [0.7]], dtype=torch.float64)
    with torch.no_grad():
        ref = peer.phi(z, t, node_mask, edge.view(B * N * N, 1), None)
    mask = node_mask[:, :, 0].bool()
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    from molequi.models.generative.graph import fully_connected_edges

    with torch.no_grad():
        vx, vh = ours.dynamics(
            z[mask][:, :3], z[mask][:, 3:], t[:, 0], batch, fully_connected_edges(batch, B)
        )
    np.testing.assert_allclose(torch.cat([vx, vh], -1).numpy(), ref[mask].numpy(), rtol=1e-9, atol=1e-9)
    assert (cfg.optim.lr, cfg.optim.ema_decay, cfg.trainer.batch_size, cfg.optim.optimizer) == (
        1e-4,
        0.999,
        64,
        "adamw",
    )


def test_partial_saves_keep_every_finished_batch(tmp_path):
    """What a side saves after its NLL (no samples yet) and after each batch is what finish reads back: the
    molecules as given (numbers, positions, per-molecule sizes), n_samples and the complete flag."""
    rng = np.random.default_rng(0)
    mols = [(rng.integers(1, 9, n), rng.normal(size=(n, 3))) for n in (3, 9, 1, 29)]
    out = {"code": "EDM"}
    bench.save_side(tmp_path, "edm", out, [], complete=False)
    assert bench.load_samples(tmp_path / "edm_samples.npz") == []
    for k in (2, 4):
        bench.save_side(tmp_path, "edm", out, mols[:k], complete=k == 4)
        back = bench.load_samples(tmp_path / "edm_samples.npz")
        assert len(back) == k
        for (z, x), (z2, x2) in zip(mols[:k], back):
            np.testing.assert_array_equal(z, z2)
            np.testing.assert_array_equal(x, x2)
    saved = json.loads((tmp_path / "edm_side.json").read_text())
    assert saved["n_samples"] == 4 and saved["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edm_samples.npz", "edm_side.json"]  # no temp left


def test_saved_predicted_bonds_and_charges_read_back(tmp_path):
    """Samples of a model that predicts bonds and charges (EQGAT-diff, generation_compare.py) keep both
    through save_side / load_samples: each molecule's charges and its own n x n bond-order matrix."""
    rng = np.random.default_rng(1)
    mols = [
        (rng.integers(1, 9, n), rng.normal(size=(n, 3)), rng.integers(-1, 2, n), rng.integers(0, 5, (n, n)))
        for n in (3, 9, 1, 29)
    ]
    bench.save_side(tmp_path, "eqgat_diff", {"code": "molequi eqgat_diff"}, mols, complete=True)
    back = bench.load_samples(tmp_path / "eqgat_diff_samples.npz")
    assert len(back) == 4
    for a, b in zip(mols, back):
        assert len(b) == 4
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def _fake(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_finished_side_leaves_its_core_to_a_sampling_helper_of_the_other(tmp_path, monkeypatch):
    """wait_with_helpers: molequi's side ends, EDM's has trained (its side JSON exists) and samples; a helper
    is started for EDM once, and both EDM processes are stopped (not counted as failures) when their saved
    molecules reach --samples. Processes are stand-ins (python -c) writing the side files the real ones
    write."""
    import subprocess

    edm = _fake(
        "import json, sys, time; from pathlib import Path; w = Path(sys.argv[1]); "
        "(w / 'edm_side.json').write_text(json.dumps({'n_samples': 30})); time.sleep(60)"
    ) + [str(tmp_path)]
    started = []
    real_popen = subprocess.Popen

    def popen(cmd, *a, **k):
        if cmd[2:4] == ["samples", "edm"]:  # the helper: writes 20 more molecules, then keeps sampling
            started.append(cmd)
            cmd = _fake(
                "import json, sys, time; from pathlib import Path; w = Path(sys.argv[1]); "
                "(w / 'edm_part1_side.json').write_text(json.dumps({'n_samples': 20})); time.sleep(60)"
            ) + [str(tmp_path)]
        return real_popen(cmd, *a, **k)

    monkeypatch.setattr(bench.subprocess, "Popen", popen)
    procs = {
        "edm": (real_popen(edm), open(tmp_path / "edm.log", "w")),
        "molequi": (real_popen(_fake("pass")), open(tmp_path / "molequi.log", "w")),
    }
    args = argparse.Namespace(samples=50, seed=0)
    failed = bench.wait_with_helpers(args, tmp_path, tmp_path / "peer", procs, env=None, poll_s=0.2)
    assert failed == []
    assert len(started) == 1 and started[0][started[0].index("--samples") + 1] == "50"
    assert procs["edm"][0].returncode < 0  # stopped by a signal, not left running
    assert bench.saved_samples(tmp_path, "edm") == 50


def test_a_failed_side_stops_the_other_and_is_reported(tmp_path):
    procs = {
        "edm": (subprocess_popen(_fake("import time; time.sleep(60)")), open(tmp_path / "edm.log", "w")),
        "molequi": (subprocess_popen(_fake("raise SystemExit(3)")), open(tmp_path / "molequi.log", "w")),
    }
    failed = bench.wait_with_helpers(
        argparse.Namespace(samples=50, seed=0), tmp_path, tmp_path / "peer", procs, env=None, poll_s=0.2
    )
    assert len(failed) == 1 and failed[0].startswith("molequi failed (exit 3)")
    assert procs["edm"][0].returncode < 0


def subprocess_popen(cmd):
    import subprocess

    return subprocess.Popen(cmd)


def test_thin_curve_keeps_block_means_and_the_last_step():
    curve = [[float(i), 2.0 * i, float(i % 3)] for i in range(10)]
    assert bench.thin_curve(curve, points=20) == (curve, 1)
    thin, k = bench.thin_curve(curve, points=4)  # blocks of 3: [0,1,2] [3,4,5] [6,7,8] [9]
    assert k == 3
    assert thin == [[2.0, 4.0, 1.0], [5.0, 10.0, 1.0], [8.0, 16.0, 1.0], [9.0, 18.0, 0.0]]


def test_generation_compare_refuses_an_edm_run_of_another_budget(tmp_path):
    import generation_compare

    (tmp_path / "molequi_side.json").write_text(json.dumps({"cpu_budget_s": 300.0}))
    assert generation_compare._edm_side(tmp_path, 5.0) == {"cpu_budget_s": 300.0}
    with pytest.raises(SystemExit, match="trained for 300.0 CPU s, not the 3000"):
        generation_compare._edm_side(tmp_path, 50.0)
    with pytest.raises(SystemExit, match="missing"):
        generation_compare._edm_side(tmp_path / "absent", 5.0)
