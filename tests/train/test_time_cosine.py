"""The wall-time cosine (``trainer.max_time`` without a step count): lr(t) from the end of the first optimiser
step (a compiled run's compilation does not spend the schedule), checked against the cosine written out by
hand, and the start recorded at step 1 and kept through a checkpoint."""

import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from molequi.train.module import TaskModule, cosine_lr

LR, MIN_LR, BUDGET = 0.01, 1e-4, 100.0


@pytest.mark.parametrize("elapsed, start, expected", [
    (0.0, 0.0, LR),
    (50.0, 0.0, MIN_LR + (LR - MIN_LR) * 0.5),           # half of 100 s: cos(pi/2) = 0
    (25.0, 0.0, MIN_LR + (LR - MIN_LR) * (1 + math.sqrt(0.5)) / 2),
    (10.0, 20.0, LR),                                      # before the first step ended: the top
    (60.0, 20.0, MIN_LR + (LR - MIN_LR) * 0.5),           # (60 - 20) / (100 - 20) = 0.5
    (100.0, 20.0, MIN_LR),
    (250.0, 20.0, MIN_LR),                                 # past the budget: the floor
])
def test_time_cosine_values(elapsed, start, expected):
    assert cosine_lr(elapsed, BUDGET, start, LR, MIN_LR) == pytest.approx(expected, rel=1e-12)


def _fake_module(step: int, timer: Timer, optimizer):
    optim = SimpleNamespace(stage_two=None, lr=LR, min_lr=MIN_LR, warmup_steps=0)
    return SimpleNamespace(
        config=SimpleNamespace(optim=optim), _time_cosine=True, cosine_start=None, global_step=step,
        trainer=SimpleNamespace(callbacks=[timer]), _time_budget=lambda: BUDGET, optimizers=lambda: optimizer)


def test_start_recorded_at_the_first_step_and_lr_applied(monkeypatch):
    timer = Timer()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    clock = {"t": 0.0}
    monkeypatch.setattr(timer, "time_elapsed", lambda stage="train": clock["t"])
    fake = _fake_module(0, timer, optimizer)
    TaskModule.on_train_batch_start(fake, None, 0)  # step 0: compiling; no start yet, lr at the top
    assert fake.cosine_start is None and optimizer.param_groups[0]["lr"] == pytest.approx(LR)
    clock["t"], fake.global_step = 40.0, 1  # the first (compiled) step took 40 s
    TaskModule.on_train_batch_start(fake, None, 1)
    assert fake.cosine_start == 40.0 and optimizer.param_groups[0]["lr"] == pytest.approx(LR)
    clock["t"], fake.global_step = 70.0, 500  # (70 - 40) / (100 - 40) = 0.5
    TaskModule.on_train_batch_start(fake, None, 500)
    assert fake.cosine_start == 40.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(MIN_LR + (LR - MIN_LR) * 0.5, rel=1e-12)
    # without the offset the schedule would be at 0.7 of its length: the test tells the two apart
    assert optimizer.param_groups[0]["lr"] != pytest.approx(cosine_lr(70.0, BUDGET, 0.0, LR, MIN_LR))


def test_start_of_a_resumed_run():
    """A checkpoint keeps the start; a run resumed from a checkpoint without one counts from 0."""
    timer = Timer()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    fake = _fake_module(300, timer, optimizer)
    TaskModule.on_train_batch_start(fake, None, 0)
    assert fake.cosine_start == 0.0
    ckpt = {}
    saver = SimpleNamespace(payload=dict, ema=None, grad_clipper=None, stage_two_step=None, cosine_start=33.0)
    TaskModule.on_save_checkpoint(saver, ckpt)
    assert ckpt["cosine_start"] == 33.0
    loader = SimpleNamespace(ema=None, grad_clipper=None, cosine_start=None,
                             config=SimpleNamespace(optim=SimpleNamespace(stage_two=None)))
    TaskModule.on_load_checkpoint(loader, ckpt)
    assert loader.cosine_start == 33.0
