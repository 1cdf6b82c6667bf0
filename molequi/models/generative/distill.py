"""Progressive distillation of EDM's deterministic (DDIM) sampler (Salimans & Ho, ICLR 2022).

A student with S steps is trained so that ONE of its DDIM steps t -> s on the grid round(linspace(T, 0, S+1))
lands where TWO teacher DDIM steps t -> m -> s (on the 2S-step grid, whose even points are the student's)
land. With z'' the teacher's result and the DDIM update z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t,
the single-step target is

    x_tilde = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),
    eps_tilde = (z_t - alpha_t x_tilde) / sigma_t,

and the student (initialised from the teacher, epsilon parameterisation kept) minimises ||eps_theta - eps_tilde||^2
per dimension, as EDM's own loss. Each student halves the steps of its teacher and becomes the next teacher:
N -> N/2 -> N/4 ... Each student is saved as a checkpoint whose config records ``sampling_steps``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Batch

from molequi.errors import ConfigError
from molequi.models.generative.edm import EDM
from molequi.models.generative.graph import fully_connected_edges, remove_mean, scatter_sum


def _alpha_sigma(model: EDM, t: int):
    _, a, s = model._coeffs(t, None, None)
    return float(a), float(s)


@torch.no_grad()
def two_step_target(teacher: EDM, z_x, z_h, t: int, mid: int, s: int, batch, edge_index, num_graphs, context=None):
    """(eps_tilde_x, eps_tilde_h, z''_x, z''_h): the epsilon with which ONE DDIM step t -> s reproduces the
    teacher's two DDIM steps t -> mid -> s."""
    z1x, z1h = teacher.step(z_x, z_h, t, mid, batch, edge_index, num_graphs, method="ddim", context=context)
    z2x, z2h = teacher.step(z1x, z1h, mid, s, batch, edge_index, num_graphs, method="ddim", context=context)
    a_t, s_t = _alpha_sigma(teacher, t)
    a_s, s_s = _alpha_sigma(teacher, s)
    r = s_s / s_t
    tx = (z2x - r * z_x) / (a_s - r * a_t)
    th = (z2h - r * z_h) / (a_s - r * a_t)
    ex_t = remove_mean((z_x - a_t * tx) / s_t, batch, num_graphs)
    eh_t = (z_h - a_t * th) / s_t
    return ex_t, eh_t, z2x, z2h


def distillation_loss(student: EDM, teacher: EDM, batch, steps: int, generator=None) -> torch.Tensor:
    """Loss of one batch for a student of ``steps`` steps taught by ``teacher`` at 2 * ``steps``."""
    b, num_graphs = EDM._batch_info(batch)
    x, h = teacher.encode(batch["numbers"], batch["pos"], b, num_graphs)
    grid = teacher.time_grid(2 * steps)  # student grid = grid[::2]
    k = int(torch.randint(0, steps, (1,), generator=generator))
    t, mid, s = grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]
    t_int = torch.full((num_graphs,), t, dtype=torch.long, device=x.device)
    z_x, z_h, _, _ = teacher.noised(x, h, t_int, b, num_graphs, generator)
    edge_index = fully_connected_edges(b, num_graphs)
    ctx = batch["context"] if teacher.config.context_dim else None
    ex_t, eh_t = two_step_target(teacher, z_x, z_h, t, mid, s, b, edge_index, num_graphs, ctx)[:2]
    ex, eh = student.epsilon(z_x, z_h, t, b, edge_index, num_graphs, ctx)
    err = scatter_sum(((ex - ex_t) ** 2).sum(-1) + ((eh - eh_t) ** 2).sum(-1), b, num_graphs)
    sizes = torch.bincount(b, minlength=num_graphs).to(x.dtype)
    return (err / ((3 + student.n_features) * sizes)).mean()


def distill_round(teacher: EDM, records: Sequence, steps: int, *, iterations: int = 1000, batch_size: int = 64,
                  lr: float = 1e-4, max_seconds: float | None = None, seed: int = 0, log=print) -> EDM:
    """Train a ``steps``-step student from ``teacher`` (sampling with 2 * ``steps`` DDIM steps).

    Stops after ``iterations`` optimiser steps or ``max_seconds``, whichever comes first.
    """
    if steps < 1 or 2 * steps > teacher.config.timesteps:
        raise ConfigError(f"student steps must lie in 1..{teacher.config.timesteps // 2}, got {steps}")
    teacher.eval()
    student = copy.deepcopy(teacher)
    student.config = dataclasses.replace(teacher.config, sampling_steps=steps)
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for it in range(iterations):
        idx = torch.randint(0, len(records), (batch_size,), generator=g).tolist()
        batch = Batch.from_data_list([records[i] for i in idx])
        loss = distillation_loss(student, teacher, batch, steps, g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if log and (it % 50 == 0 or it == iterations - 1):
            log(f"  distill {2 * steps}->{steps} it {it} loss {float(loss.detach()):.3e} ({time.perf_counter() - start:.0f} s)")
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    student.eval()
    return student


def progressive_distillation(teacher: EDM, records: Sequence, start_steps: int, rounds: int, out_dir: str | Path,
                             **kwargs) -> list[Path]:
    """``rounds`` halvings from a ``start_steps`` DDIM teacher; writes ``student_<S>.pt`` for each student S."""
    from molequi.models.generative.io import save_checkpoint

    out_dir = Path(out_dir)
    paths = []
    steps = start_steps
    for _ in range(rounds):
        if steps % 2:
            raise ConfigError(f"cannot halve {steps} steps exactly; start from a power-of-two multiple")
        steps //= 2
        teacher = distill_round(teacher, records, steps, **kwargs)
        path = out_dir / f"student_{steps}.pt"
        save_checkpoint(teacher, path)
        paths.append(path)
    return paths


__all__ = ["two_step_target", "distillation_loss", "distill_round", "progressive_distillation"]
