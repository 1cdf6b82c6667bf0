"""The EMA is no buffer of the DDP-wrapped module (DDP would broadcast it every step), yet 2-process DDP with
EMA ends with the same weights and EMA weights as one process on the same global batches."""

import os
import subprocess
import sys

import pytest
import yaml
from conftest import morse_structures

from molequi.checkpoint import read_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLI = [sys.executable, os.path.join(HERE, "run_cli.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_ema_shadows_are_not_module_buffers(morse_five):
    from molequi.config import Config
    from molequi.data.statistics import compute_statistics
    from molequi.train.data import with_graphs
    from molequi.train.module import TaskModule
    from molequi.train.run import build_task

    cfg = Config.from_dict({"model": {"name": "tiny", "r_max": 4.0, "hidden": 8}, "optim": {"ema_decay": 0.9}})
    stats = compute_statistics(with_graphs(morse_five, 4.0), 4.0)
    module = TaskModule(build_task(cfg, stats), cfg, stats)
    shadows = {id(t) for t in module.ema.buffers()}
    assert shadows and not shadows & {id(t) for t in module.buffers()}
    assert not any(name.startswith("ema") for name in module.state_dict())


@pytest.mark.slow
def test_two_process_ddp_with_ema_matches_one_process(tmp_path):
    from ase.io import write

    from molequi.data.records import data_to_atoms

    data = tmp_path / "morse.xyz"
    write(data, [data_to_atoms(r) for r in morse_structures(8, seed=2)], format="extxyz")
    payloads = []
    for name, trainer in (("one", {"devices": 1, "batch_size": 4}),
                          ("ddp", {"devices": 2, "batch_size": 2, "strategy": "ddp"})):
        d = tmp_path / name
        d.mkdir()
        raw = {"model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
               "data": {"name": "xyz", "root": str(data), "n_valid": 0, "shuffle": False},
               "optim": {"ema_decay": 0.8, "grad_clip": None, "scheduler": "none", "lr": 0.01},
               "trainer": {"accelerator": "cpu", "progress_bar": False, "output": str(d / "run"),
                           "log_every": 1, "max_steps": 6, "precision": "float64", **trainer}}
        (d / "config.yaml").write_text(yaml.safe_dump(raw))
        run = subprocess.run(CLI + ["train", str(d / "config.yaml")], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        payloads.append(read_checkpoint(d / "run" / "model.pt"))
    one, ddp = payloads
    import torch

    assert one["step"] == ddp["step"] == 6
    for part in ("model_state", "ema_state"):
        for key in one[part]:
            assert torch.allclose(one[part][key], ddp[part][key], rtol=1e-10, atol=1e-12), (part, key)
    # the EMA is not the live weights (it averaged six different steps)
    assert any(not torch.equal(one["model_state"][k], one["ema_state"][k]) for k in one["ema_state"])
