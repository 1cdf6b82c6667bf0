"""Runs in subprocesses through the CLI: SIGKILL + --resume continues the run; 2-process DDP == 1 process."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import morse_structures

from molequi.checkpoint import read_checkpoint
from molequi.train.evaluate import read_run_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLI = [sys.executable, os.path.join(HERE, "run_cli.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def write_xyz(path, records):
    from ase.io import write

    from molequi.data.records import data_to_atoms

    write(path, [data_to_atoms(r) for r in records], format="extxyz")


def write_config(tmp_path, data_file, **sections):
    raw = {"model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
           "data": {"name": "xyz", "root": str(data_file)},
           "optim": {"lr": 0.01, "scheduler": "plateau", "ema_decay": 0.9},
           "trainer": {"batch_size": 2, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                       "output": str(tmp_path / "run"), "log_every": 1}}
    for name, values in sections.items():
        raw[name].update(values)
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_run(tmp_path):
    data = tmp_path / "morse.xyz"
    write_xyz(data, morse_structures(20, seed=1))
    cfg = write_config(tmp_path, data, trainer={"checkpoint_every": 5, "max_steps": 100000},
                       data={"n_valid": 2})
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(CLI + ["train", str(cfg)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        step = 0
        while time.time() < deadline and proc.poll() is None:
            if last.exists():
                step = read_checkpoint(last)["step"]
                if step >= 15:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # the checkpoint left behind is whole and loads with weights_only=True
    ckpt = torch.load(last, weights_only=True)
    killed_step = int(ckpt["global_step"])
    # last.ckpt is written every 5 steps and after each epoch's validation round (18 training structures in
    # batches of 2: 9 steps an epoch), so it holds one of those steps
    assert killed_step >= 15 and (killed_step % 5 == 0 or killed_step % 9 == 0), killed_step
    assert ckpt["molequi"]["step"] == killed_step and "optimizer_states" in ckpt and "rng" in ckpt
    # a fresh start over the existing run is refused; --resume continues it for 10 more steps
    from molequi.config import load_config
    from molequi.errors import ConfigError
    from molequi.train.run import train

    with pytest.raises(ConfigError, match="--resume"):
        train(load_config(cfg))
    target = killed_step + 10
    done = subprocess.run(CLI + ["train", str(cfg), f"trainer.max_steps={target}", "--resume"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_checkpoint(tmp_path / "run" / "model.pt")["step"] == target
    resumed_steps = [r["step"] for r in read_run_metrics(tmp_path / "run") if "train/loss_step" in r]
    # the first run logged steps up to the kill, the resumed one continues after the checkpointed step
    assert resumed_steps[-10:] == [float(s) for s in range(killed_step, target)]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    data = tmp_path / "morse.xyz"
    write_xyz(data, morse_structures(8, seed=2))
    common = {"data": {"n_valid": 0, "shuffle": False},
              "optim": {"ema_decay": None, "grad_clip": None, "scheduler": "none", "lr": 0.01}}
    states = []
    for name, trainer in (("one", {"devices": 1, "batch_size": 4}),
                          ("ddp", {"devices": 2, "batch_size": 2, "strategy": "ddp"})):
        d = tmp_path / name
        d.mkdir()
        cfg = write_config(d, data, trainer={**trainer, "max_steps": 4, "precision": "float64"}, **common)
        run = subprocess.run(CLI + ["train", str(cfg)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        # data.graphs auto: the DDP run builds graphs per process on first access, the single one up front
        lazy = "neighbour graphs: built on first access" in run.stderr
        assert lazy == (name == "ddp"), run.stderr[-3000:]
        payload = read_checkpoint(d / "run" / "model.pt")
        assert payload["step"] == 4 and payload["dtype"] == "float64"
        states.append(payload["model_state"])
    one, ddp = states
    initial = None
    for key in one:
        assert torch.allclose(one[key], ddp[key], rtol=1e-10, atol=1e-12), key
        initial = key
    assert initial is not None
