"""``--resume auto`` / SLURM requeue: continue when checkpoints/last.ckpt exists, start fresh when not; only
Lightning's global rank 0 writes the run files (also under ``srun``, where LOCAL_RANK is not set)."""

import pytest

from molequi.config import Config
from molequi.errors import CheckpointError, ConfigError
from molequi.train.evaluate import read_run_metrics
from molequi.train.run import resolve_resume, train

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
              "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME", "LOCAL_RANK", "NODE_RANK", "RANK",
              "WORLD_SIZE", "GROUP_RANK")


@pytest.fixture
def no_cluster(monkeypatch):
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def tiny_config(tmp_path, max_steps, **trainer):
    return Config.from_dict({
        "model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
        "optim": {"lr": 0.01, "scheduler": "none", "ema_decay": 0.9},
        "trainer": {"max_steps": max_steps, "batch_size": 2, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1,
                    "checkpoint_every": 2, **trainer},
    })


def test_resolve_resume_modes(tmp_path, no_cluster):
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert resolve_resume("auto", last) is False and resolve_resume("no", last) is False
    assert resolve_resume(False, last) is False
    with pytest.raises(CheckpointError, match="no checkpoint.*--resume auto"):
        resolve_resume("yes", last)
    with pytest.raises(CheckpointError):
        resolve_resume(True, last)
    with pytest.raises(ConfigError, match="resume must be one of no, yes, auto"):
        resolve_resume("maybe", last)
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert resolve_resume("auto", last) is True and resolve_resume("yes", last) is True
    assert resolve_resume(True, last) is True
    with pytest.raises(ConfigError, match="already holds a run"):
        resolve_resume("no", last)
    # a SLURM job that was requeued repeats its command line: a plain rerun continues the run ...
    no_cluster.setenv("SLURM_JOB_ID", "4242")
    no_cluster.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(ConfigError):  # first start of the job: not a requeue
        resolve_resume("no", last)
    no_cluster.setenv("SLURM_RESTART_COUNT", "2")
    assert resolve_resume("no", last) is True
    # ... and starts fresh if the job was requeued before its first checkpoint
    last.unlink()
    assert resolve_resume("no", last) is False
    with pytest.raises(CheckpointError):  # an explicit --resume still needs the checkpoint
        resolve_resume("yes", last)


def test_resume_auto_starts_fresh_then_continues(tmp_path, no_cluster, morse_five):
    splits = {"train": morse_five, "valid": [], "test": []}
    first = train(tiny_config(tmp_path, 4), resume="auto", splits=splits, enable_summary=False)
    assert first.global_step == 4
    second = train(tiny_config(tmp_path, 8), resume="auto", splits=splits, enable_summary=False)
    assert second.global_step == 8
    steps = [r["step"] for r in read_run_metrics(tmp_path / "run") if "train/loss_step" in r]
    assert steps == [float(s) for s in range(8)]  # the second call continued at step 4, not from 0
    # the same directory under a requeued SLURM job without --resume continues as well
    no_cluster.setenv("SLURM_JOB_ID", "4242")
    no_cluster.setenv("SLURM_RESTART_COUNT", "1")
    third = train(tiny_config(tmp_path, 10), splits=splits, enable_summary=False)
    assert third.global_step == 10


def test_cli_resume_flag_values():
    from molequi.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "c.yaml"]).resume == "no"
    assert parser.parse_args(["train", "c.yaml", "--resume"]).resume == "yes"
    assert parser.parse_args(["train", "c.yaml", "a.b=1", "--resume", "auto"]).resume == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "c.yaml", "--resume", "sometimes"])


class _StopBeforeFit(Exception):
    pass


@pytest.mark.parametrize("procid", [0, 1])
def test_only_global_rank_zero_writes_under_srun(tmp_path, no_cluster, morse_five, procid):
    """Two srun tasks on one node: SLURM sets SLURM_PROCID/SLURM_LOCALID, not LOCAL_RANK/NODE_RANK. The
    Trainer's SLURM cluster environment gives rank 1 to the second task, which must not write config.yaml.
    (``Trainer.fit`` is stopped before it would wait for the other process.)"""
    import lightning as L

    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
                        "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid), "SLURM_NODEID": "0",
                        "SLURM_JOB_NAME": "molequi"}.items():
        no_cluster.setenv(name, value)
    seen = {}

    def stop(self, *args, **kwargs):
        seen["rank"] = self.global_rank
        raise _StopBeforeFit

    no_cluster.setattr(L.Trainer, "fit", stop)
    # the Trainer sets the process-wide rank_zero_only.rank; give it back to the rest of this process
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero

    for mod in (rank_zero, fabric_rank_zero):
        no_cluster.setattr(mod.rank_zero_only, "rank", mod.rank_zero_only.rank)
    cfg = tiny_config(tmp_path, 2, devices=2, strategy="ddp")
    with pytest.raises(_StopBeforeFit):
        train(cfg, splits={"train": morse_five, "valid": [], "test": []}, enable_summary=False)
    assert seen["rank"] == procid
    assert (tmp_path / "run" / "config.yaml").exists() == (procid == 0)
