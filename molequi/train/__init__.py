"""Training: Lightning wiring around a task, schedules, EMA, atomic checkpoints, evaluation.

    from molequi.train import load_model, train
    model = load_model("runs/x/model.pt", device="cpu", dtype=None, use_ema=True)   # inference
    result = train(load_config("run.yaml"))                                         # a whole run

``load_model`` needs neither Lightning nor the training stack (checkpoint.py imports torch only).
"""

from molequi.train.checkpoint import load_model, read_checkpoint, save_model


def train(*args, **kwargs):
    """``molequi.train.run.train`` (imported on call: Lightning is loaded only when training)."""
    from molequi.train.run import train as _train

    return _train(*args, **kwargs)


__all__ = ["load_model", "read_checkpoint", "save_model", "train"]
