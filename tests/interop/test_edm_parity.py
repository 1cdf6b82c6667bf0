"""molequi's EDM against EDM's own code (``scripts/parity/check.py edm``) and the round trip of an EDM run
folder through ``molequi import edm`` and ``molequi generate``. Needs EDM's source tree next to the clone
(``../shared/peers/edm``); skipped with that reason otherwise."""

import argparse
import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PEER = (REPO / ".." / "shared" / "peers" / "edm").resolve()
pytestmark = pytest.mark.skipif(not (PEER / "equivariant_diffusion" / "en_diffusion.py").is_file(),
                                reason=f"EDM's source tree (e3_diffusion_for_molecules) is not at {PEER}")


def _parity_module():
    spec = importlib.util.spec_from_file_location("edm_parity", REPO / "scripts" / "parity" / "edm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(*extra):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "parity" / "check.py"), "edm", "--peer-code",
                           str(PEER), "--nf", "32", "--n-layers", "2", "--molecules", "4", *extra],
                          capture_output=True, text=True, cwd=REPO)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("run", [None, "exp_35_conditional_nf192_9l_alpha", "edm_geom_drugs"])
def test_parity_with_edm_code(run):
    extra = ["--args", str(PEER / "outputs" / run / "args.pickle")] if run else []
    rc, out, err = _check(*extra)
    assert rc == 0, (out, err[-2000:])
    assert out["peer"] == "edm" and out["ok"] is True
    assert out["max_rel_err_denoiser"] < 1e-6 and out["max_abs_err_nll"] < 1e-4
    assert out["max_abs_denoiser"] > 1.0  # a network whose outputs are not ~0, so the comparison means something
    assert len(out["nll_edm"]) == 4 and min(out["t"]) == 1 and max(out["t"]) == 1000


def test_parity_check_fails_on_a_wrong_likelihood(monkeypatch):
    """The check can fail: a noise schedule whose precision s is 1 % off (so gamma_0 and the Gaussian
    constants of p(x | z_0) shift) is caught (ok False), while the denoiser still agrees."""
    import molequi.models.generative.schedules as schedules

    real = schedules.polynomial_alphas2
    monkeypatch.setattr(schedules, "polynomial_alphas2", lambda T, s=1e-5, power=2.0: real(T, s * 1.01, power))
    result = _parity_module().run(PEER, nf=16, n_layers=1, n_molecules=3)
    assert result["ok"] is False and result["max_abs_err_nll"] > 1e-2
    assert result["max_rel_err_denoiser"] < 1e-6


def _edm_run_folder(tmp_path, run="exp_35_conditional_nf192_9l_alpha", nf=16, n_layers=1):
    """An EDM run folder written as EDM writes it (args.pickle, torch.save of the state dict as *.npy)."""
    parity = _parity_module()
    options = vars(pickle.load(open(PEER / "outputs" / run / "args.pickle", "rb")))
    options.update(nf=nf, n_layers=n_layers)
    peer, _, _ = parity.build_peer(PEER, options, None, seed=0)
    folder = tmp_path / run
    folder.mkdir()
    with open(folder / "args.pickle", "wb") as f:
        pickle.dump(argparse.Namespace(**options), f)
    torch.save(peer.float().state_dict(), folder / "generative_model_ema.npy")
    return folder


def test_import_cli_generate_and_context_errors(tmp_path, capsys):
    from molequi.checkpoint import load_model
    from molequi.cli.main import main
    from molequi.errors import ModelError

    folder = _edm_run_folder(tmp_path)
    out = tmp_path / "cond.pt"
    assert main(["import", "edm", str(folder), "--out", str(out), "--edm-code", str(PEER)]) == 0
    assert "conditioned on ['alpha']" in capsys.readouterr().out
    model = load_model(out)
    assert model.config.condition_on == ["alpha"] and float(model.size_counts.sum()) > 0
    with pytest.raises(ModelError, match="conditioned on alpha: give context"):
        model.sample(2, steps=2)
    with pytest.raises(ModelError, match="--context-norm"):  # EDM's normalisation is not in the run folder
        model.sample(2, steps=2, context=torch.tensor([[70.0], [80.0]]))
    assert main(["import", "edm", str(folder), "--out", str(out), "--edm-code", str(PEER),
                 "--context-norm", "alpha=75.3,6.28"]) == 0
    sdf = tmp_path / "mols.sdf"
    assert main(["generate", str(out), "--n", "3", "--steps", "4", "--out", str(sdf), "--context", "75.0"]) == 0
    assert sdf.read_text().count("$$$$") == 3
    assert main(["generate", str(out), "--n", "3", "--steps", "4", "--out", str(sdf)]) == 1  # no --context
    capsys.readouterr()
    (folder / "generative_model_ema.npy").rename(folder / "generative_model_ema_50.npy")
    assert main(["import", "edm", str(folder), "--out", str(out)]) == 1
    assert "MissingEDMWeightsError" in capsys.readouterr().err


def test_imported_weights_give_edm_denoiser_in_float32(tmp_path):
    """The checkpoint holds EDM's float32 weights exactly: the denoiser agrees with EDM's at float32 rounding."""
    from molequi.interop.edm import import_edm_run
    from molequi.models.generative.graph import fully_connected_edges

    parity = _parity_module()
    folder = _edm_run_folder(tmp_path, run="edm_qm9", nf=32, n_layers=2)
    model = import_edm_run(folder, tmp_path / "m.pt", edm_code=PEER)
    options = vars(pickle.load(open(folder / "args.pickle", "rb")))
    peer, _, info = parity.build_peer(PEER, options, torch.load(folder / "generative_model_ema.npy",
                                                                weights_only=True), seed=0)
    peer = peer.float()
    numbers, positions, decoder = parity.random_molecules(info, 3, 5, True)
    _, _, node_mask, edge_mask = parity.padded(numbers, positions, decoder, True)
    node_mask, edge_mask = node_mask.float(), edge_mask.float()
    z = parity.padded_noise(node_mask.double(), 6, torch.Generator().manual_seed(1)).float()
    t = torch.full((3, 1), 0.3)
    mask = node_mask.squeeze(2).bool()
    with torch.no_grad():
        ref = peer.phi(z, t, node_mask, edge_mask, None)[mask]
        b = torch.repeat_interleave(torch.arange(3), mask.sum(1))
        vx, vh = model.dynamics(z[mask][:, :3], z[mask][:, 3:], t[:, 0], b, fully_connected_edges(b, 3))
    assert torch.allclose(torch.cat([vx, vh], -1), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_parity_check_on_a_run_folder(tmp_path):
    """--checkpoint RUN_DIR: EDM's code loads the folder's weights, molequi imports the same folder."""
    folder = _edm_run_folder(tmp_path, run="edm_qm9", nf=16, n_layers=2)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "parity" / "check.py"), "edm", "--peer-code",
                           str(PEER), "--checkpoint", str(folder), "--molecules", "3"],
                          capture_output=True, text=True, cwd=REPO)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and out["ok"] and out["weights"] == "run folder" and out["nf"] == 16
    assert out["max_rel_err_denoiser"] < 1e-6 and out["max_abs_err_nll"] < 1e-4
