"""The trainer can drive a small model's loss down on five structures; model.pt reproduces it exactly."""

import pytest
import torch

from molequi.config import Config
from molequi.checkpoint import load_model, read_checkpoint
from molequi.train.evaluate import read_run_metrics
from molequi.train.run import train


def tiny_config(tmp_path, **trainer):
    return Config.from_dict({
        "model": {"name": "tiny", "r_max": 4.0, "hidden": 16},
        "optim": {"lr": 0.01, "scheduler": "none", "ema_decay": 0.9, "grad_clip": None},
        "trainer": {"max_steps": 150, "batch_size": 5, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1, **trainer},
    })


@pytest.mark.slow
def test_five_structure_overfit_and_checkpoint_round_trip(tmp_path, morse_five):
    five = morse_five
    cfg = tiny_config(tmp_path, val_every_steps=50)
    result = train(cfg, splits={"train": five, "valid": five, "test": []}, enable_summary=False)
    rows = read_run_metrics(result.output)
    first = next(r["train/loss_step"] for r in rows if "train/loss_step" in r)
    val_steps = [r["step"] for r in rows if "val/loss" in r]
    assert val_steps[:3] == [49.0, 99.0, 149.0]  # every 50 optimiser steps (logged at the step index)
    last = [r["val/loss"] for r in rows if "val/loss" in r][-1]
    assert result.global_step == 150
    assert last < first / 100, (first, last)

    # model.pt: EMA weights by default, raw weights on request; predictions identical to the live module
    module = result.module
    from torch_geometric.data import Batch

    from molequi.train.data import with_graphs

    batch = Batch.from_data_list(with_graphs(five, 4.0))
    module.task.model.eval()
    with module.ema.swapped_into(module.task.model):
        ref_ema = module.task.model(batch)[("forces")].detach()
    ref_raw = module.task.model(batch)["forces"].detach()
    for path in (result.model_path, result.output / "checkpoints" / "last.ckpt"):
        payload = read_checkpoint(path)
        assert payload["elements"] == [1, 8] and payload["config"]["model"]["name"] == "tiny"
        assert payload["step"] == 150
        ema_model = load_model(path)
        raw_model = load_model(path, use_ema=False)
        assert torch.equal(ema_model(batch)["forces"].detach(), ref_ema)
        assert torch.equal(raw_model(batch)["forces"].detach(), ref_raw)
    assert not torch.equal(ref_ema, ref_raw)
    f64 = load_model(result.model_path, dtype=torch.float64)
    assert next(f64.parameters()).dtype == torch.float64
    assert (result.output / "config.yaml").exists() and (result.output / "metrics.json").exists()
