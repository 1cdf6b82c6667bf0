"""Every shipped model family through ``train()`` at a tiny size for a few dozen steps: the training loss
falls (mean of the first three logged steps against the mean of the last three; for QHNet the Hamiltonian
MAE, the part of its loss the task logs).

Energy/forces models (MACE, molequi's EquiformerV2-style variant, frame averaging) fit Morse-labelled H4O2
clusters (ASE's ``MorsePotential``); QHNet fits PySCF PBE/def2-SVP Fock matrices of the shipped water store; EDM and the
categorical diffusion (EQGAT-diff) fit the shipped QM9 molecules. Each run repeats a small training set, so
a working optimiser, loss and trainer wiring must bring the loss down; the ratio asked of each family is
loose enough for its noise (diffusion losses are sampled over random noise levels).
"""

from pathlib import Path

import pytest
from conftest import morse_structures

from molequi.config import Config
from molequi.train.evaluate import read_run_metrics
from molequi.train.run import train

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, model, *, splits=None, data=None, task=None, steps=40, batch_size=4, lr=0.01,
        key="train/loss_step", **trainer):
    raw = {"model": model,
           "optim": {"lr": lr, "scheduler": "none", "ema_decay": None, "grad_clip": 10.0},
           "trainer": {"max_steps": steps, "batch_size": batch_size, "accelerator": "cpu", "devices": 1,
                       "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1, **trainer}}
    if data is not None:
        raw["data"] = data
    if task is not None:
        raw["task"] = task
    result = train(Config.from_dict(raw), splits=splits, enable_summary=False)
    assert result.global_step == steps
    losses = [r[key] for r in read_run_metrics(result.output) if key in r]
    assert len(losses) == steps
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    return first, last


@pytest.fixture(scope="module")
def morse():
    return {"train": morse_structures(8, seed=5), "valid": [], "test": []}


def test_mace_loss_falls(tmp_path, morse):
    first, last = run(tmp_path, {"name": "mace", "r_max": 4.0, "num_bessel": 4, "max_ell": 1,
                                 "hidden_irreps": "8x0e+8x1o", "correlation": 2, "num_interactions": 1,
                                 "MLP_irreps": "8x0e", "radial_MLP": [8]}, splits=morse, steps=80, lr=0.02)
    assert last < 0.1 * first, (first, last)  # measured 0.009


@pytest.mark.slow  # the slowest of the six: 3 s idle (120 steps)
def test_equiformer_v2_molequi_loss_falls(tmp_path, morse):
    first, last = run(tmp_path, {"name": "equiformer_v2_molequi", "r_max": 4.0, "num_bessel": 4, "lmax": 1, "mmax": 1,
                                 "channels": 8, "num_layers": 1, "num_heads": 1, "hidden_channels": 8,
                                 "attn_channels": 4, "value_channels": 4, "ffn_channels": 8,
                                 "radial_hidden": 8, "element_channels": 8, "readout_hidden": 8},
                      splits=morse, steps=120, lr=0.01)
    # measured 0.015; was 60 steps at lr 0.02, which gave 0.21 on one CPU and 0.59 on another (its per-step
    # losses of 4-structure batches jump tenfold, so the last three steps at 60 were a matter of rounding luck)
    assert last < 0.5 * first, (first, last)


def test_frame_averaging_loss_falls(tmp_path, morse):
    first, last = run(tmp_path, {"name": "frame_averaging", "r_max": 4.0,
                                 "backbone": {"r_max": 4.0, "channels": 16, "num_layers": 2,
                                              "num_bessel": 4}},
                      splits=morse, steps=100)
    assert last < 0.5 * first, (first, last)  # measured 0.17


@pytest.mark.qm
def test_hamiltonian_conv_loss_falls(tmp_path):
    pytest.importorskip("pyscf")
    first, last = run(tmp_path, {"name": "hamiltonian_conv", "basis": "def2-svp", "elements": [1, 8],
                                 "channels": 8, "lmax": 4, "num_layers": 1, "num_radial": 8, "radial_hidden": 8},
                      data={"name": "hamiltonian", "root": str(ROOT / "data" / "hamiltonian" / "water"),
                            "n_train": 4, "n_valid": 0},
                      task={"name": "hamiltonian", "orbital_metrics": False},
                      key="train/h_mae_uha_step")  # the task logs the MAE and RMSE parts of its loss
    assert last < 0.5 * first, (first, last)


@pytest.fixture(scope="module")
def qm9():
    from molequi.data.qm9 import read_qm9_xyz

    return {"train": read_qm9_xyz(ROOT / "data" / "qm9" / "crescendo")[:4], "valid": [], "test": []}


def test_edm_loss_falls(tmp_path, qm9):
    first, last = run(tmp_path, {"name": "edm", "hidden": 16, "layers": 2, "timesteps": 50},
                      splits=qm9, task={"name": "diffusion"}, steps=60, lr=2e-3)
    assert last < 0.7 * first, (first, last)


def test_eqgat_diff_loss_falls(tmp_path, qm9):
    first, last = run(tmp_path, {"name": "eqgat_diff", "hidden": 16, "edge_hidden": 8, "layers": 2,
                                 "timesteps": 50},
                      splits=qm9, task={"name": "diffusion"}, steps=60, lr=2e-3)
    assert last < 0.7 * first, (first, last)
