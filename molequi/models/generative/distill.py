"""Progressive distillation of EDM's and GeoLDM's deterministic (DDIM) samplers (Salimans & Ho, ICLR 2022;
for GeoLDM in its latent space, as AccGeoLDM).

Data space (EDM) or latent space (GeoLDM): the student learns on what the teacher diffuses,
``teacher.diffusion_data`` (EDM: its scaled positions and features; GeoLDM: z = mu + sigma_0 eps_enc from its
frozen encoder, latent positions in the zero centre-of-mass subspace and latent_nf invariant features per
atom). Only the denoiser (``dynamics``) of the student learns; a GeoLDM student keeps the teacher's encoder
and decoder, so sampling it is its latent DDIM, then GeoLDM's p(z | z_0) and decoder.

A student with S steps is trained so that ONE of its DDIM steps t -> s on the grid round(linspace(T, 0, S+1))
lands where TWO teacher DDIM steps t -> m -> s (on the 2S-step grid, whose even points are the student's)
land. With z'' the teacher's result and the DDIM update z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t,
the single-step target is

    x_tilde = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),
    eps_tilde = (z_t - alpha_t x_tilde) / sigma_t      (positions: in the zero centre-of-mass subspace).

The student is initialised from the teacher and keeps EDM's epsilon parameterisation, so the x-space loss
is written on epsilon: ||x_tilde - x_hat||^2 = (sigma_t^2 / alpha_t^2) ||eps_tilde - eps_theta||^2. Salimans &
Ho's truncated-SNR weighting max(SNR_t, 1) ||x_tilde - x_hat||^2 is therefore, per molecule,

    w_t ||eps_tilde - eps_theta||^2 / ((3 + F) n_b),   w_t = max(1, sigma_t^2 / alpha_t^2) = max(1, 1 / SNR_t)

(``weighting="truncated_snr"``, divided by the mean of w_t over the student's steps so that the loss keeps the
scale of an epsilon error). ``weighting="snr"`` (the default) is the plain epsilon loss, EDM's own, i.e. SNR
weighting of the x error. EDM's schedule ends at alpha_T^2 = 1e-5, so the truncated-SNR weight of the first
student step is 1e5 times that of every step with SNR > 1: on an EDM overfit to 10 QM9 molecules
(``scripts/bench/generation.py toy``) the students then degraded every other step (one-step errors 10x those
of the undistilled teacher at 256 steps) and ended 3-6 points of molecule stability below the teacher's DDIM
at the same step count, while with the plain epsilon loss every student stayed within 2 points of it (or
above it, at 32 and 16 steps). Each molecule of a batch draws its own student step t (uniform over the S
steps). The learning rate decays linearly to 0 over each round (Salimans & Ho). Each student halves the
steps of its teacher and becomes the next teacher: N -> N/2 -> N/4 ...; each is saved as a
checkpoint whose config records ``sampling_steps``.

Parameterisation of the student (``parameterisation``, recorded in its config and read by ``EDM.epsilon`` when
it samples): eps (the teacher's, the default for EDM), v = alpha_t eps - sigma_t x (the default for GeoLDM
in ``molequi distill``) or x. A v or x student's output gives x_hat = alpha_t z_t - sigma_t v or x itself,
and its loss is written on x: SNR_t ||x_tilde - x_hat||^2 times the weights above, i.e. with
``truncated_snr`` (the default for v and x) Salimans & Ho's max(SNR_t, 1) ||x_tilde - x_hat||^2 (divided
by the same mean), equal to the epsilon form of the same prediction. A v or x student starts from the eps
teacher's weights: at low noise (alpha_t -> 1) v ~ eps, so its last steps start close to the target; at high
noise (alpha_t -> 0) v ~ -x and the student must learn the new reading. Measured on GeoLDM overfit on 10 QM9
molecules (``scripts/bench/generation.py toy --model geoldm``, 512 -> 256 steps, 20 molecules): RMS one-step
error of the latent positions against two teacher steps at the first / median / last student step: the
teacher's weights read as eps (its own 256-step DDIM) 8.0e-3 / 1.1e-5 / 9.6e-5, read as v (the untrained v
student) 2.3e-2 / 2.8e-3 / 9.7e-5, the v student after 1000 iterations 2.4e-2 / 3.5e-4 / 5.6e-4: in one
round the v student learned part of the reparameterisation (median step 8x closer) and stayed behind the
teacher's own eps reading at every step (``local_step_errors``, one seed; not a benchmark row). An eps
student of the same round and recipe (snr weighting) stayed closer: 7.5e-3 / 4.4e-6 / 1.3e-4, and sampled
52.5 / 75.0% molecule stability at 256 DDIM steps, eta 0 / 1 (200 samples), against 51.0 / 70.0% for the v
student and 53.0% (DDIM) / 75.5% (ancestral) for the teacher at 256 steps: on this toy, one round of 1000
iterations is too short for v to pay off.
On the same toy with a teacher trained to the end of its schedule (15,000 iterations; 1000-step ancestral /
DDIM 99.2 / 94.5%), two rounds 32 -> 16 -> 8 (1000 iterations each, 1000 samples per figure, molecule
stability at 16 / 8 steps): v students with truncated_snr were the better deterministic samplers (eta 0:
80.7 / 67.9% against 75.9 / 62.0% for eps with snr), eps students the better stochastic ones (eta 1: 82.5 /
69.1% against 78.2 / 62.7%; v with snr: 82.8 / 65.2%); ``bench_results/generation_toy_geoldm_long.json``.

Sampling a student: distillation fits the deterministic DDIM step, but the student's epsilon can drive the
generalised DDIM step with noise (``EDM.sample(..., method="ddim", eta=e)``, ``molequi generate --eta``):
eta = 1 uses the ancestral step's mean and variance around the student's x_hat. On the overfit benchmark
the deterministic sampler of the teacher itself is 2-8 points of molecule stability below its ancestral
one (depending on how long the teacher trained), and the students inherit that gap when sampled
deterministically but not with eta = 1 (``bench_results/generation.md``).
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
from molequi.models.generative.edm import EDM, PARAMETERISATIONS, x_from_output
from molequi.models.generative.graph import fully_connected_edges, remove_mean
from molequi.nn.ema import ExponentialMovingAverage
from molequi.nn.scatter import scatter_sum

WEIGHTINGS = ("snr", "truncated_snr")


def _node_coeffs(model: EDM, t, batch, dtype, device):
    """(alpha_t, sigma_t) of ``model``'s schedule, broadcastable against (n, d) node arrays."""
    _, a_t, s_t = model._coeffs(t, None, device)
    return EDM.per_node(a_t, batch, dtype), EDM.per_node(s_t, batch, dtype)


@torch.no_grad()
def two_step_x_target(teacher: EDM, z_x, z_h, t, mid, s, batch, edge_index, num_graphs, context=None):
    """(x_tilde_x, x_tilde_h, z''_x, z''_h): the clean-data prediction with which ONE DDIM step t -> s
    reproduces the teacher's two DDIM steps t -> mid -> s (module docstring; positions zero mean per
    molecule). ``t``, ``mid``, ``s``: ints, or (B,) long tensors (per molecule). For GeoLDM, z is latent."""
    z1x, z1h = teacher.step(z_x, z_h, t, mid, batch, edge_index, num_graphs, method="ddim", context=context)
    z2x, z2h = teacher.step(z1x, z1h, mid, s, batch, edge_index, num_graphs, method="ddim", context=context)
    _, a_t, s_t = teacher._coeffs(t, None, z_x.device)
    _, a_s, s_s = teacher._coeffs(s, None, z_x.device)
    r = s_s / s_t
    node = lambda c: EDM.per_node(c, batch, z_x.dtype)  # noqa: E731
    rn, den = node(r), node(a_s - r * a_t)
    tx = remove_mean((z2x - rn * z_x) / den, batch, num_graphs)
    th = (z2h - rn * z_h) / den
    return tx, th, z2x, z2h


@torch.no_grad()
def two_step_target(teacher: EDM, z_x, z_h, t, mid, s, batch, edge_index, num_graphs, context=None):
    """(eps_tilde_x, eps_tilde_h, z''_x, z''_h): the epsilon with which ONE DDIM step t -> s reproduces the
    teacher's two DDIM steps t -> mid -> s (``two_step_x_target``'s x_tilde as an epsilon)."""
    tx, th, z2x, z2h = two_step_x_target(teacher, z_x, z_h, t, mid, s, batch, edge_index, num_graphs, context)
    an, sn = _node_coeffs(teacher, t, batch, z_x.dtype, z_x.device)
    ex_t = remove_mean((z_x - an * tx) / sn, batch, num_graphs)
    eh_t = (z_h - an * th) / sn
    return ex_t, eh_t, z2x, z2h


def default_weighting(parameterisation: str) -> str:
    """snr (EDM's plain epsilon loss) for an epsilon student, truncated_snr (Salimans & Ho) for v and x."""
    return "snr" if parameterisation == "eps" else "truncated_snr"


def loss_weights(model: EDM, t: torch.Tensor, steps: int, weighting: str = "snr") -> torch.Tensor:
    """(B,) weights of the per-molecule epsilon errors at student steps ``t`` (see module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown distillation weighting '{weighting}'; valid: {', '.join(WEIGHTINGS)}")
    if weighting == "snr":
        return torch.ones(t.shape, dtype=torch.float64, device=t.device)
    starts = torch.tensor(model.time_grid(steps)[:-1], device=t.device)

    def w(tt):
        return torch.exp(model.schedule.gamma(tt, torch.float64)).clamp(min=1.0)  # max(1, 1/SNR)

    return w(t) / w(starts).mean()


def distillation_loss(student: EDM, teacher: EDM, batch, steps: int, generator=None,
                      weighting: str | None = None) -> torch.Tensor:
    """Loss of one batch for a student of ``steps`` steps taught by ``teacher`` at 2 * ``steps``, on the data
    the teacher diffuses (``teacher.diffusion_data``: EDM's scaled data, GeoLDM's latents). An epsilon
    student's error is on epsilon; a v or x student's on x, SNR_t ||x_tilde - x_hat||^2 (= the epsilon
    error), so ``weighting`` (default: ``default_weighting``) weighs both alike (module docstring)."""
    b, num_graphs = EDM._batch_info(batch)
    x, h = teacher.diffusion_data(batch, generator)
    grid = torch.tensor(teacher.time_grid(2 * steps), device=x.device)  # student grid = grid[::2]
    k = torch.randint(0, steps, (num_graphs,), generator=generator).to(x.device)  # student step per molecule
    t, mid, s = grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]
    z_x, z_h, _, _ = teacher.noised(x, h, t, b, num_graphs, generator)
    edge_index = fully_connected_edges(b, num_graphs)
    ctx = teacher.batch_context(batch)  # the teacher is in eval mode: its normalisation stays as trained
    par = student.config.parameterisation
    if par == "eps":
        ex_t, eh_t = two_step_target(teacher, z_x, z_h, t, mid, s, b, edge_index, num_graphs, ctx)[:2]
        ex, eh = student.epsilon(z_x, z_h, t, b, edge_index, num_graphs, ctx)
        err = scatter_sum(((ex - ex_t) ** 2).sum(-1) + ((eh - eh_t) ** 2).sum(-1), b, num_graphs)
    else:
        tx, th = two_step_x_target(teacher, z_x, z_h, t, mid, s, b, edge_index, num_graphs, ctx)[:2]
        out_x, out_h = student.denoiser_output(z_x, z_h, t, b, edge_index, num_graphs, ctx)
        an, sn = _node_coeffs(teacher, t, b, x.dtype, x.device)
        xx, xh = x_from_output(out_x, z_x, an, sn, par), x_from_output(out_h, z_h, an, sn, par)
        g = teacher.schedule.gamma(t, torch.float64)
        snr = torch.exp(-g).to(x.dtype)  # alpha_t^2 / sigma_t^2
        err = snr * scatter_sum(((xx - tx) ** 2).sum(-1) + ((xh - th) ** 2).sum(-1), b, num_graphs)
    sizes = torch.bincount(b, minlength=num_graphs).to(x.dtype)
    w = loss_weights(teacher, t, steps, weighting or default_weighting(par)).to(x.dtype)
    return (w * err / ((3 + student.latent_features()) * sizes)).mean()


def distill_round(teacher: EDM, records: Sequence, steps: int, *, iterations: int = 1000,
                  batch_size: int = 64, lr: float = 1e-4, max_seconds: float | None = None, seed: int = 0,
                  weighting: str | None = None, parameterisation: str | None = None, ema: float | None = None,
                  log=print, on_step=None) -> EDM:
    """Train a ``steps``-step student from ``teacher`` (sampling with 2 * ``steps`` DDIM steps).

    The student is a copy of the teacher whose denoiser (``dynamics``) alone learns (GeoLDM's autoencoder is
    copied and frozen); its output is read as ``parameterisation`` (eps, v or x; None: the teacher's) and
    recorded in its config. ``weighting``: None = ``default_weighting(parameterisation)``.

    The learning rate decays linearly from ``lr`` to 0 over ``iterations`` optimiser steps; training stops
    there or after ``max_seconds``, whichever comes first. ``ema``: return an exponential moving average
    of the student's weights with this decay, without warm-up (``molequi.nn.ema.ExponentialMovingAverage``
    with ``warmup=False``; None: the weights themselves). ``log``: called with a line every
    50 iterations (None: quiet); ``on_step(steps, iteration, loss)``: after every optimiser step (for
    progress bars).
    """
    if steps < 1 or 2 * steps > teacher.config.timesteps:
        raise ConfigError(f"student steps must lie in 1..{teacher.config.timesteps // 2}, got {steps}")
    par = parameterisation or teacher.config.parameterisation
    if par not in PARAMETERISATIONS:
        raise ConfigError(f"unknown parameterisation '{par}'; valid: {', '.join(PARAMETERISATIONS)}")
    teacher.eval()
    student = copy.deepcopy(teacher)
    student.config = dataclasses.replace(teacher.config, sampling_steps=steps, parameterisation=par)
    student.requires_grad_(False)
    student.dynamics.requires_grad_(True)  # GeoLDM: the encoder and decoder stay the teacher's
    params = list(student.dynamics.parameters())
    average = ExponentialMovingAverage(student, ema, warmup=False) if ema else None
    student.train()
    opt = torch.optim.Adam(params, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / iterations))
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for it in range(iterations):
        idx = torch.randint(0, len(records), (batch_size,), generator=g).tolist()
        batch = Batch.from_data_list([records[i] for i in idx])
        loss = distillation_loss(student, teacher, batch, steps, g, weighting)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if average is not None:
            average.update(student)
        if on_step is not None:
            on_step(steps, it, float(loss.detach()))
        if log and (it % 50 == 0 or it == iterations - 1):
            log(f"  distill {2 * steps}->{steps} it {it} loss {float(loss.detach()):.3e} "
                f"({time.perf_counter() - start:.0f} s)")
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if average is not None:  # distillation changes no buffer of the student: only its parameters are averaged
        student.load_state_dict(average.averaged_state_dict(student))
    student.eval()
    return student


@torch.no_grad()
def local_step_errors(teacher: EDM, student: EDM, sizes,
                      generator: torch.Generator | None = None) -> list[dict]:
    """Where a student departs from its teacher: along the teacher's own DDIM trajectory (2S steps, from noise
    shared by all molecules of ``sizes``), ONE student step t -> s from the teacher's state z_t against the
    teacher's two steps t -> mid -> s.

    Returns one dict per student step: t, s, the RMS differences of z_s for positions (``x_rms``) and features
    (``h_rms``), and ``c_eps`` = sigma_s - alpha_s sigma_t / alpha_t, the factor by which an epsilon error at
    t is multiplied in z_s (its size at t = T, where alpha_T is tiny, is what makes few-step students hard).
    """
    from molequi.models.generative.graph import centred_gaussian, sizes_to_batch

    steps = student.config.sampling_steps
    if steps is None:
        raise ConfigError("the student has no sampling_steps; give a distilled student")
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    b, num_graphs = sizes_to_batch(sizes), len(sizes)
    ei = fully_connected_edges(b, num_graphs)
    z = (centred_gaussian(b, num_graphs, generator=generator),
         torch.randn(b.numel(), teacher.latent_features(), generator=generator))
    dtype = next(teacher.parameters()).dtype
    z = (z[0].to(dtype), z[1].to(dtype))
    grid = teacher.time_grid(2 * steps)
    out = []
    for k in range(steps):
        t, mid, s = grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]
        one = student.step(*z, t, s, b, ei, num_graphs, method="ddim")
        half = teacher.step(*z, t, mid, b, ei, num_graphs, method="ddim")
        z = teacher.step(*half, mid, s, b, ei, num_graphs, method="ddim")
        _, a_t, s_t = teacher._coeffs(t, None, None)
        _, a_s, s_s = teacher._coeffs(s, None, None)
        out.append({"t": t, "s": s, "x_rms": float(((one[0] - z[0]) ** 2).mean().sqrt()),
                    "h_rms": float(((one[1] - z[1]) ** 2).mean().sqrt()),
                    "c_eps": float(s_s - a_s * s_t / a_t)})
    return out


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


__all__ = ["two_step_target", "two_step_x_target", "default_weighting", "loss_weights", "distillation_loss",
           "distill_round", "local_step_errors", "progressive_distillation"]
