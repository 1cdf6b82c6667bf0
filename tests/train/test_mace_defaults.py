"""MACE's defaults are ``mace_run_train``'s (mace-torch 0.3.16: non-residual first interaction, envelope on
the radial basis, readout scaled by the RMS force and not shifted), and checkpoints written before keep the
model they were trained as.

References: ``data/mace_v1_model.pt`` and ``data/mace_v1_predictions.json`` were written by molequi at commit
9fadf61 (the last one with the old defaults; its model section lacks the keys an older molequi did not know)
-- the migration must reproduce that program's predictions. The statistics of a default run are checked
against numpy on the training frames (RMS of the force components, 0 shift, least-squares E0s).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from molequi.checkpoint import VERSION, load_model, read_checkpoint, save_model
from molequi.config import Config
from molequi.data.rmd17_npz import read_rmd17_npz
from molequi.errors import CheckpointError
from molequi.resources import rmd17_ethanol
from molequi.train.evaluate import predict
from molequi.train.run import model_keys_from_run, train

DATA = Path(__file__).parent / "data"
TINY = {"name": "mace", "r_max": 4.0, "num_bessel": 4, "max_ell": 1, "hidden_irreps": "4x0e+4x1o",
        "correlation": 2, "num_interactions": 2, "MLP_irreps": "4x0e", "radial_MLP": [8]}


@pytest.fixture(scope="module")
def ethanol():
    return read_rmd17_npz(str(rmd17_ethanol("train")))


def test_format_1_checkpoint_predicts_as_the_old_molequi(ethanol, tmp_path):
    payload = read_checkpoint(DATA / "mace_v1_model.pt")
    assert payload["version"] == 1 < VERSION
    model = payload["config"]["model"]
    assert (model["first_interaction"], model["envelope"]) == ("residual", "weights")  # migrated
    ref = json.loads((DATA / "mace_v1_predictions.json").read_text())
    loaded = load_model(DATA / "mace_v1_model.pt")
    assert loaded.layers[0].residual and loaded.config.envelope == "weights"
    pred = predict(loaded, ethanol[100:103], 4.0)
    np.testing.assert_allclose(pred.energy_pred, ref["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(pred.forces_pred), np.asarray(ref["forces"]), rtol=0, atol=1e-9)
    # without the migration the file describes another model (today's defaults), whose weights do not fit
    raw = torch.load(DATA / "mace_v1_model.pt", weights_only=True)
    save_model({**raw, "version": VERSION}, tmp_path / "as_v2.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "as_v2.pt")
    # an explicit key of a format-1 file is kept, not replaced by the old default
    explicit = {**raw, "config": {"model": {**raw["config"]["model"], "envelope": "basis"}}}
    save_model(explicit, tmp_path / "explicit.pt")
    assert read_checkpoint(tmp_path / "explicit.pt")["config"]["model"]["envelope"] == "basis"


def _run(tmp_path, name, records, model):
    cfg = Config.from_dict({"model": model, "optim": {"scheduler": "none", "ema_decay": None},
                            "trainer": {"max_steps": 1, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                                        "output": str(tmp_path / name), "progress_bar": False}})
    return train(cfg, splits={"train": records, "valid": [], "test": []}, enable_summary=False)


def test_default_run_builds_mace_run_train_model(ethanol, tmp_path):
    records = ethanol[:24]
    forces = np.concatenate([r.forces.double().numpy() for r in records])
    counts = np.array([[int((r.numbers == z).sum()) for z in (1, 6, 8)] for r in records], dtype=float)
    energies = np.array([float(r.energy) for r in records])
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    residual = (energies - counts @ e0) / counts.sum(1)

    result = _run(tmp_path, "default", records, TINY)
    payload = read_checkpoint(result.model_path)
    stats = payload["statistics"]
    assert stats["energy_scale"] == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-6)  # rms_forces_scaling
    assert stats["energy_shift"] == 0.0  # --model MACE: atomic_inter_shift 0
    np.testing.assert_allclose([stats["e0s"][z] for z in (1, 6, 8)], e0, rtol=1e-9)
    model = load_model(result.model_path)
    assert not model.layers[0].residual and model.layers[1].residual  # RealAgnosticInteractionBlock first
    assert model.config.envelope == "basis"  # --apply_cutoff True
    assert float(model.head.scale) == pytest.approx(stats["energy_scale"]) and float(model.head.shift) == 0.0

    old = _run(tmp_path, "old", records, {**TINY, "scaling": "std", "shift": "mean"})
    stats = read_checkpoint(old.model_path)["statistics"]
    assert stats["energy_scale"] == pytest.approx(np.std(residual), rel=1e-6)
    assert stats["energy_shift"] == pytest.approx(np.mean(residual), abs=1e-9)
    none = _run(tmp_path, "none", records, {**TINY, "scaling": "none"})
    assert read_checkpoint(none.model_path)["statistics"]["energy_scale"] == 1.0


def test_resume_keeps_the_run_own_model_keys(ethanol, tmp_path):
    """A run begun with the old defaults, resumed from a YAML that does not name them, continues as the model
    it was (today's defaults would build another model: a different first block, the envelope elsewhere)."""
    old_keys = {"first_interaction": "residual", "envelope": "weights", "scaling": "std", "shift": "mean"}
    records = ethanol[:12]

    def cfg(model, steps):
        return Config.from_dict({"model": model, "optim": {"scheduler": "none", "ema_decay": None},
                                 "trainer": {"max_steps": steps, "batch_size": 4, "accelerator": "cpu",
                                             "devices": 1, "output": str(tmp_path / "run"),
                                             "progress_bar": False, "checkpoint_every": 1}})

    splits = {"train": records, "valid": [], "test": []}
    train(cfg({**TINY, **old_keys}, 1), splits=splits, enable_summary=False)
    resumed = train(cfg(TINY, 2), resume=True, splits=splits, enable_summary=False)
    assert resumed.global_step == 2
    model = read_checkpoint(resumed.model_path)["config"]["model"]
    assert {k: model[k] for k in old_keys} == old_keys
    # keys the YAML gives win
    merged = model_keys_from_run(cfg({**TINY, "max_edges_per_chunk": 1000}, 3),
                                 read_checkpoint(resumed.model_path))
    assert merged.model.config.max_edges_per_chunk == 1000 and merged.model.config.envelope == "weights"
