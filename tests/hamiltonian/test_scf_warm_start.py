"""SCF warm start from a PREDICTED Hamiltonian (issue 18 item 5): a tiny model trained here (~25 CPU s) on the
training records of the shipped random-split water sample predicts H for held-out (test) geometries; PySCF
started from it converges to the PySCF label energy stored with the data (1e-8 Ha) in fewer cycles than
PySCF's own ``minao`` guess. ``molequi scf-guess`` runs the same checkpoint end to end."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "hamiltonian" / "water_random_sample"
N_HELD_OUT = 3
STEPS = 400  # full-batch Adam steps (~25 CPU s); 150 steps left H MAE ~5 mHa and more cycles than minao


def fast_model_class():
    """The cheap Hamiltonian model (registered as ``hamiltonian_conv`` once the reference QHNet took the
    name ``qhnet``)."""
    from molequi.models import MODELS

    return MODELS.load("hamiltonian_conv" if "hamiltonian_conv" in MODELS else "qhnet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, store, test indices, checkpoint path) of a model trained on the sample's training records."""
    from torch_geometric.data import Batch

    from molequi.checkpoint import make_payload, save_model
    from molequi.config import to_plain
    from molequi.data.hamiltonian import HamiltonianStore, record_to_data
    from molequi.models import MODELS
    from molequi.tasks.hamiltonian import HamiltonianTask

    store = HamiltonianStore(SAMPLE)
    split = store.split()
    cls = fast_model_class()
    name = next(k for k in MODELS if MODELS.load(k) is cls)
    config = cls.Config(channels=16, num_layers=2, num_radial=16, radial_hidden=32, elements=[1, 8])
    torch.manual_seed(0)
    model = cls(config).float()
    task = HamiltonianTask(model)
    batch = Batch.from_data_list([record_to_data(store[i], dtype=torch.float32) for i in split["train"]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS, eta_min=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(STEPS):
            loss, _ = task.loss(batch, task(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = tmp_path_factory.mktemp("scf_warm") / "model.pt"
    save_model(make_payload(config={"model": {"name": name, **to_plain(config)},
                                    "task": {"name": "hamiltonian"}},
                            statistics={"elements": [1, 8]}, model_state=model.state_dict(),
                            dtype=torch.float32), path)
    return model, store, split["test"][:N_HELD_OUT], path


@pytest.mark.qm
@pytest.mark.slow
def test_predicted_h_starts_scf_at_the_label_energy_in_fewer_cycles_than_minao(trained):
    from molequi.qc.scf import predict_fock, run_scf

    model, store, held_out, _ = trained
    assert not set(held_out) & set(store.split()["train"])
    pred_cycles, minao_cycles = [], []
    for i in held_out:
        rec = store[i]
        fock = predict_fock(model, rec.numbers, rec.pos)
        # a prediction, not the label: it differs from the converged Fock matrix by far more than SCF noise
        assert np.abs(fock - rec.fock).mean() > 1e-5
        settings = dict(xc=store.xc, basis=store.basis, conv_tol=1e-10)
        pred = run_scf(rec.numbers, rec.pos, fock=fock, **settings)
        ref = run_scf(rec.numbers, rec.pos, init_guess="minao", **settings)
        assert pred["converged"] and ref["converged"]
        assert abs(pred["e_tot"] - rec.energy) < 1e-8  # the label PySCF stored with the data
        assert abs(ref["e_tot"] - rec.energy) < 1e-8
        pred_cycles.append(pred["cycles"])
        minao_cycles.append(ref["cycles"])
    assert all(p <= m for p, m in zip(pred_cycles, minao_cycles)), (pred_cycles, minao_cycles)
    assert sum(pred_cycles) < sum(minao_cycles), (pred_cycles, minao_cycles)


@pytest.mark.qm
@pytest.mark.slow
def test_scf_guess_cli_with_the_trained_model(trained, tmp_path, capsys):
    from molequi.cli.main import main

    _, store, held_out, path = trained
    rec = store[held_out[0]]
    ase.io.write(tmp_path / "water.xyz", Atoms(numbers=rec.numbers, positions=rec.pos))
    assert main(["scf-guess", str(path), str(tmp_path / "water.xyz"), "--xc", store.xc, "--basis",
                 store.basis, "--conv-tol", "1e-10", "--reference-guess", "huckel", "--json",
                 str(tmp_path / "scf.json")]) == 0
    assert "predicted guess" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "scf.json").read_text())
    assert row["predicted"]["e_tot"] == pytest.approx(rec.energy, abs=1e-8)
    assert row["reference"]["e_tot"] == pytest.approx(rec.energy, abs=1e-8)
    assert row["reference"]["guess"] == "huckel"


@pytest.mark.slow
def test_scf_guess_refuses_a_basis_the_model_does_not_predict(trained, tmp_path, capsys):
    from molequi.cli.main import main

    _, store, held_out, path = trained
    rec = store[held_out[0]]
    ase.io.write(tmp_path / "water.xyz", Atoms(numbers=rec.numbers, positions=rec.pos))
    assert main(["scf-guess", str(path), str(tmp_path / "water.xyz"), "--basis", "sto-3g"]) != 0
    assert "ConfigError: the model predicts def2-svp matrices, --basis is sto-3g" in capsys.readouterr().err
