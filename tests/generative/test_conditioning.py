"""Property-conditioned EDM (``condition_on``): properties read from real QM9 records, EDM's mean / MAD
normalisation set by the first training batch, raw values when sampling, through the trainer and the CLI."""

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from molequi.cli.main import main
from molequi.config import Config
from molequi.data.qm9 import read_qm9_xyz, target_index
from molequi.errors import ConfigError, MissingKeyError, ModelError
from molequi.models.generative.edm import EDM
from molequi.models.generative.io import load_generative

QM9 = Path(__file__).resolve().parents[2] / "data" / "qm9" / "crescendo"


@pytest.fixture(scope="module")
def molecules():
    return read_qm9_xyz(QM9)


def test_condition_on_reads_and_normalises_qm9_targets(molecules):
    torch.manual_seed(0)
    model = EDM(EDM.Config(hidden=8, layers=1, timesteps=10, condition_on=["alpha", "gap"]))
    assert model.config.context_dim == 2
    batch = Batch.from_data_list(molecules[:8])
    raw = batch.y[:, [target_index("alpha"), target_index("gap")]].double()
    model.train()
    loss, _ = model.training_loss(batch)
    loss.backward()
    mean = raw.mean(0)
    assert torch.allclose(model.context_shift, mean)
    assert torch.allclose(model.context_scale, (raw - mean).abs().mean(0))  # EDM: mean absolute deviation
    # the stored normalisation is what the denoiser sees, for training batches and raw sampling values alike
    seen = model.batch_context(batch)
    assert torch.allclose(seen.double(), (raw - mean) / model.context_scale, atol=1e-6)
    assert torch.allclose(model.normalise_context(raw[:2].float()).double(), seen[:2].double(), atol=1e-6)
    # a second batch does not move it
    model.training_loss(Batch.from_data_list(molecules[8:16]))
    assert torch.allclose(model.context_shift, mean)
    model.eval()
    mols = model.sample(3, steps=3, context=raw[:3], generator=torch.Generator().manual_seed(0))
    other = model.sample(3, steps=3, context=raw[:3] + 50.0, generator=torch.Generator().manual_seed(0))
    assert any(not (a.positions == b.positions).all() for a, b in zip(mols, other))  # the context matters
    with pytest.raises(ModelError, match="alpha"):
        model.sample(2, steps=2, context=torch.zeros(2, 1))
    with pytest.raises(ModelError):
        model.sample(2, steps=2)


def test_condition_on_named_errors(molecules):
    with pytest.raises(ConfigError):
        EDM(EDM.Config(context_dim=3, condition_on=["alpha"]))
    model = EDM(EDM.Config(hidden=8, layers=1, timesteps=10, condition_on=["no_such_property"])).train()
    with pytest.raises(MissingKeyError):
        model.training_loss(Batch.from_data_list(molecules[:2]))
    untrained = EDM(EDM.Config(hidden=8, layers=1, timesteps=10, condition_on=["alpha"]))
    untrained.size_counts[3:5] = 1.0
    with pytest.raises(ModelError, match="never trained"):
        untrained.sample(1, steps=2, context=torch.ones(1, 1))


def test_conditioned_edm_through_the_trainer_and_generate(tmp_path, molecules, capsys):
    from molequi.train.run import train

    cfg = Config.from_dict({
        "model": {"name": "edm", "hidden": 8, "layers": 1, "timesteps": 20, "condition_on": ["alpha"]},
        "task": {"name": "diffusion"},
        "optim": {"lr": 1e-3, "scheduler": "none", "ema_decay": 0.99, "grad_clip": 1.0},  # EMA export
        "trainer": {"max_steps": 4, "batch_size": 16, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 2},
    })
    train(cfg, splits={"train": molecules[:16], "valid": molecules[16:], "test": []}, enable_summary=False)
    ckpt = tmp_path / "run" / "model.pt"
    model = load_generative(ckpt)
    alpha = torch.stack([m.y[0, target_index("alpha")] for m in molecules[:16]]).double()
    assert model.config.condition_on == ["alpha"] and bool(model.context_ready)
    # the first training batch is all 16 molecules, so the normalisation is their mean, whatever the data order
    assert float(model.context_shift[0]) == pytest.approx(float(alpha.mean()), rel=1e-6)
    out = tmp_path / "m.sdf"
    assert main(["generate", str(ckpt), "--n", "2", "--steps", "3", "--context", "12.5", "--out", str(out)]) == 0
    assert main(["generate", str(ckpt), "--n", "2", "--steps", "3", "--out", str(out)]) == 1
    assert "conditioned on alpha" in capsys.readouterr().err
