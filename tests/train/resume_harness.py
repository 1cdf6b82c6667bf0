"""Kill-and-resume harness: the same run uninterrupted and SIGKILLed at given points, then compared.

A run is ``resume_worker.py train CONFIG --resume auto`` (deterministic CPU settings); each launch continues
from ``checkpoints/last.ckpt`` when there is one. Kill points:

- ``("after", s)`` or ``("after", s, delay)``: SIGKILL as soon as (or ``delay`` seconds after)
  ``last.ckpt`` holds step >= s (the process is then somewhere in a later step, its data loading, logging,
  a validation round or the next checkpoint write);
- ``("write", s)``: SIGKILL while the checkpoint of step s is being written (bytes in the temporary file,
  before the rename);
- ``("val", s)``: SIGKILL inside the validation round that follows step s (after its first batch);
- ``("saved", s)``: SIGKILL right after ``last.ckpt`` of step s is in place, before the rest of the step
  (the logged row of the step must already be on disk then).

After every kill each ``*.ckpt`` in ``checkpoints/`` must load with ``weights_only=True``. ``compare``
returns the differences between two finished runs: weights, EMA weights, optimiser and scheduler state,
data position, and every logged training / validation metric per step (the last value logged for a step
wins, since a resumed run repeats the steps after its checkpoint).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKER = [sys.executable, str(HERE / "resume_worker.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def mace_config(run_dir: Path, data_file: Path, max_steps: int, **trainer) -> Path:
    """A tiny MACE (2 elements, 8 channels, max_ell 1, one layer) with EMA and a plateau scheduler."""
    raw = {"model": {"name": "mace", "r_max": 4.0, "num_bessel": 4, "max_ell": 1,
                     "hidden_irreps": "8x0e+8x1o", "correlation": 2, "num_interactions": 1,
                     "MLP_irreps": "8x0e", "radial_MLP": [8]},
           "data": {"name": "xyz", "root": str(data_file), "n_valid": 2, "seed": 0},
           "optim": {"lr": 0.01, "scheduler": "plateau", "plateau_patience": 0, "plateau_factor": 0.5,
                     "ema_decay": 0.9},
           "trainer": {"batch_size": 3, "valid_batch_size": 2, "accelerator": "cpu", "devices": 1,
                       "progress_bar": False, "output": str(run_dir / "run"), "log_every": 1,
                       "checkpoint_every": 1, "val_every_steps": 4, "max_steps": max_steps, **trainer}}
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(config: Path, env_extra: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(WORKER + ["train", str(config), "--resume", "auto"], cwd=ROOT,
                            env={**ENV, **(env_extra or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _last_step(last: Path) -> int:
    try:
        return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    except FileNotFoundError:
        return -1


def check_checkpoints(ckpt_dir: Path) -> list[str]:
    """Names of the ``*.ckpt`` files that do not load with ``weights_only=True`` (must be empty)."""
    bad = []
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to load is what we count
            bad.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return bad


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    proc.stderr.close()


def run_to_end(config: Path, timeout: float = 300) -> None:
    done = subprocess.run(WORKER + ["train", str(config), "--resume", "auto"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"run failed ({done.returncode}):\n{done.stderr[-4000:]}")


def run_with_kills(config: Path, kills: list[tuple[str, int]], timeout: float = 300) -> list[dict]:
    """Launch, SIGKILL at each point of ``kills`` in turn (relaunching with ``--resume auto``), then run to
    the end. Returns one record per kill: the point, the step of ``last.ckpt`` after it, unreadable files."""
    run_dir = Path(yaml.safe_load(config.read_text())["trainer"]["output"])
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    report = []
    for kind, step, *delay in kills:
        marker = config.parent / f"pause-{step}"
        pause = {"write": "MOLEQUI_TEST_PAUSE_AT_STEP", "val": "MOLEQUI_TEST_PAUSE_IN_VALIDATION_AT_STEP",
                 "saved": "MOLEQUI_TEST_PAUSE_AFTER_SAVE_AT_STEP"}
        extra = {pause[kind]: str(step), "MOLEQUI_TEST_PAUSE_MARKER": str(marker)} if kind in pause else None
        proc = _launch(config, extra)
        deadline, mtime = time.time() + timeout, None
        try:
            while time.time() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"run ended before the kill point {kind} {step}:\n"
                                       f"{proc.stderr.read().decode()[-4000:]}")
                if kind in pause:
                    if marker.exists():
                        break
                elif last.exists() and last.stat().st_mtime_ns != mtime:
                    mtime = last.stat().st_mtime_ns
                    if _last_step(last) >= step:
                        time.sleep(delay[0] if delay else 0.0)
                        break
                time.sleep(0.02)
            else:
                raise TimeoutError(f"kill point {kind} {step} not reached in {timeout} s")
        finally:
            _kill(proc)
        report.append({"kind": kind, "step": step, **({"delay_s": delay[0]} if delay else {}),
                       "last_step": _last_step(last),
                       "unreadable": check_checkpoints(ckpt_dir)})
    run_to_end(config, timeout)
    return report


def _metrics_by_step(run_dir: Path) -> dict[str, dict[float, float]]:
    from molequi.train.evaluate import read_run_metrics

    out: dict[str, dict[float, float]] = {}
    for row in read_run_metrics(run_dir):
        step = row.get("step")
        for key, value in row.items():
            if key not in ("step", "epoch") and step is not None:
                out.setdefault(key, {})[step] = value
    return out


def _tensor_diffs(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            diff = (a.double() - b.double()).abs().max().item() if (
                isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape) else None
            out.append(f"{where}: tensors differ (max |diff| {diff})")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):  # a is the reference's side, b the resumed run's
            out.append(f"{where}: keys differ: only in the reference {sorted(map(str, set(a) - set(b)))}, "
                       f"only in the resumed run {sorted(map(str, set(b) - set(a)))}")
        for k in set(a) & set(b):
            _tensor_diffs(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths differ")
        for i, (x, y) in enumerate(zip(a, b)):
            _tensor_diffs(x, y, f"{where}[{i}]", out)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        out.append(f"{where}: {a!r} != {b!r}")


def compare(reference: Path, resumed: Path) -> list[str]:
    """Differences between two finished run directories (empty: the runs are bitwise the same)."""
    from molequi.checkpoint import read_checkpoint

    diffs: list[str] = []
    ref_model, res_model = read_checkpoint(reference / "model.pt"), read_checkpoint(resumed / "model.pt")
    for key in ("model_state", "ema_state", "step", "epoch", "metrics"):
        _tensor_diffs(ref_model[key], res_model[key], f"model.pt:{key}", diffs)
    ref_ckpt = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    res_ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch",
                "RecordsDataModule"):
        _tensor_diffs(ref_ckpt.get(key), res_ckpt.get(key), f"last.ckpt:{key}", diffs)
    ref_metrics, res_metrics = _metrics_by_step(reference), _metrics_by_step(resumed)
    for key in sorted(set(ref_metrics) | set(res_metrics)):
        if key.startswith("train/") and key.endswith("_epoch"):
            continue  # per-epoch means of an epoch cut by a resume average only the resumed part
        _tensor_diffs(ref_metrics.get(key), res_metrics.get(key), f"metrics:{key}", diffs)
    return diffs
