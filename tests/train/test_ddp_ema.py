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


def run_config(d, data, **trainer):
    """``d/config.yaml``: the tiny model on ``data`` in float64, EMA 0.8, fixed data order."""
    d.mkdir()
    raw = {"model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
           "data": {"name": "xyz", "root": str(data), "n_valid": 0, "shuffle": False},
           "optim": {"ema_decay": 0.8, "grad_clip": None, "scheduler": "none", "lr": 0.01},
           "trainer": {"accelerator": "cpu", "progress_bar": False, "output": str(d / "run"),
                       "log_every": 1, "precision": "float64", **trainer}}
    (d / "config.yaml").write_text(yaml.safe_dump(raw))
    return d


def tiny_module(records):
    from molequi.config import Config
    from molequi.data.statistics import compute_statistics
    from molequi.train.data import with_graphs
    from molequi.train.module import TaskModule
    from molequi.train.run import build_task

    cfg = Config.from_dict({"model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
                            "optim": {"ema_decay": 0.9}})
    stats = compute_statistics(with_graphs(records, 4.0), 4.0)
    return TaskModule(build_task(cfg, stats), cfg, stats)


def test_ema_shadows_are_not_module_buffers(morse_five):
    module = tiny_module(morse_five)
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
        d = run_config(tmp_path / name, data, max_steps=6, **trainer)
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


def test_checkpoint_with_ema_as_state_dict_entries_still_loads(morse_five):
    """Checkpoints written while the EMA was a submodule hold it as ``ema.shadow_i`` state_dict entries."""
    import torch

    module = tiny_module(morse_five)
    old = {f"ema.{k}": torch.full_like(v, 3.0) if v.is_floating_point() else v + 7
           for k, v in module.ema.state_dict().items()}
    checkpoint = {"state_dict": {**module.state_dict(), **old}}
    module.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(module.state_dict())  # strict loading sees no ema.* keys
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    assert int(module.ema.num_updates) == 7 and torch.equal(module.ema.shadow_0,
                                                               torch.full_like(module.ema.shadow_0, 3.0))


@pytest.mark.slow
def test_two_nodes_simulated_with_node_rank_match_one_process(tmp_path):
    """Two 'nodes' on this machine: the same command twice with MASTER_ADDR=127.0.0.1, NODE_RANK 0 / 1,
    trainer.num_nodes=2, one device each (gloo), equals one process with the global batch."""
    import socket

    import torch
    from ase.io import write

    from molequi.data.records import data_to_atoms

    data = tmp_path / "morse.xyz"
    write(data, [data_to_atoms(r) for r in morse_structures(8, seed=4)], format="extxyz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    one = run_config(tmp_path / "one", data, max_steps=4, devices=1, batch_size=4)
    run = subprocess.run(CLI + ["train", str(one / "config.yaml")], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    two = run_config(tmp_path / "two", data, max_steps=4, devices=1, num_nodes=2, batch_size=2,
                     strategy="ddp")
    clean = {k: v for k, v in ENV.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "RANK",
                                                                 "WORLD_SIZE", "MASTER_"))}
    procs = [subprocess.Popen(CLI + ["train", str(two / "config.yaml")], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**clean, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "NODE_RANK": str(rank)}) for rank in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    a, b = read_checkpoint(one / "run" / "model.pt"), read_checkpoint(two / "run" / "model.pt")
    assert a["step"] == b["step"] == 4
    for part in ("model_state", "ema_state"):
        for key in a[part]:
            assert torch.allclose(a[part][key], b[part][key], rtol=1e-10, atol=1e-12), (part, key)
