"""Training: Lightning wiring around a task, schedules, EMA, atomic checkpoints, evaluation.

    from molequi.train import train
    result = train(load_config("run.yaml"))                                         # a whole run

Reading a trained model needs none of this: ``molequi.checkpoint.load_model`` (torch only).
"""


def train(*args, **kwargs):
    """``molequi.train.run.train`` (imported on call: Lightning is loaded only when training)."""
    from molequi.train.run import train as _train

    return _train(*args, **kwargs)


__all__ = ["train"]
