"""Noise schedules of the diffusion models, tabulated on the integer steps t = 0..T.

Both are variance preserving: z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1, stored as
gamma_t = -log(alpha_t^2 / sigma_t^2) (EDM's convention), so alpha_t^2 = sigmoid(-gamma_t),
sigma_t^2 = sigmoid(gamma_t) and SNR_t = exp(-gamma_t).

polynomial_<p> (EDM, Hoogeboom et al. 2022, Appendix B):
    f(t) = (1 - (t / (T+1))^p)^2   on t = 0 .. T (T+1 points of linspace(0, T+1, T+1))
    the step ratios f(t)/f(t-1) are clipped to >= 0.001 and re-accumulated (``clip_noise_schedule``), then
    alpha_t^2 = (1 - 2 s) f(t) + s   with precision s (1e-5 for QM9).
cosine (Nichol & Dhariwal 2021, used by EQGAT-diff):
    alpha_bar_t = cos^2(pi/2 (t/T + s)/(1 + s)) / cos^2(pi/2 s/(1+s)),  s = 0.008,
    step ratios clipped to [0.001, 1] (betas <= 0.999) and re-accumulated.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from molequi.errors import ConfigError


def clip_noise_schedule(alphas2: np.ndarray, clip_value: float = 0.001) -> np.ndarray:
    """Clip alpha_t^2 / alpha_{t-1}^2 to [clip_value, 1] and re-accumulate (stabilises the last steps)."""
    a = np.concatenate([np.ones(1), alphas2])
    step = np.clip(a[1:] / a[:-1], clip_value, 1.0)
    return np.cumprod(step)


def polynomial_alphas2(timesteps: int, s: float = 1e-5, power: float = 2.0) -> np.ndarray:
    """(T+1,) alpha_t^2 of EDM's polynomial schedule (see module docstring)."""
    steps = timesteps + 1
    x = np.linspace(0, steps, steps)
    alphas2 = (1 - np.power(x / steps, power)) ** 2
    alphas2 = clip_noise_schedule(alphas2, clip_value=0.001)
    precision = 1 - 2 * s
    return precision * alphas2 + s


def cosine_alphas2(timesteps: int, s: float = 0.008) -> np.ndarray:
    """(T+1,) alpha_bar_t of the cosine schedule (see module docstring)."""
    t = np.linspace(0, timesteps, timesteps + 1) / timesteps
    f = np.cos(0.5 * math.pi * (t + s) / (1 + s)) ** 2
    alphas_bar = f / f[0]
    step = np.clip(alphas_bar[1:] / alphas_bar[:-1], 0.001, 1.0)
    return np.concatenate([[1.0], np.cumprod(step)])


class NoiseSchedule(torch.nn.Module):
    """A tabulated schedule: ``gamma(t)`` for integer steps t (long tensor) or t / T in [0, 1] (float).

    name  ``polynomial_<p>`` (e.g. ``polynomial_2``, EDM's QM9 choice) or ``cosine``
    timesteps  T; precision  s of the polynomial schedule.
    Buffers: ``gamma`` (T+1,), ``alphas2`` (T+1,) in float64.
    """

    def __init__(self, name: str = "polynomial_2", timesteps: int = 1000, precision: float = 1e-5):
        super().__init__()
        if timesteps < 1:
            raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
        if name.startswith("polynomial_"):
            try:
                power = float(name.split("_", 1)[1])
            except ValueError as exc:
                raise ConfigError(f"bad schedule name '{name}' (use polynomial_2, polynomial_3, ...)") from exc
            alphas2 = polynomial_alphas2(timesteps, precision, power)
        elif name == "cosine":
            alphas2 = cosine_alphas2(timesteps)
            alphas2 = np.clip(alphas2, 1e-12, 1 - 1e-12)
        else:
            raise ConfigError(f"unknown noise schedule '{name}'; valid: polynomial_<p>, cosine")
        self.name, self.timesteps = name, timesteps
        sigmas2 = 1 - alphas2
        gamma = -(np.log(alphas2) - np.log(sigmas2))
        self.register_buffer("gamma_table", torch.tensor(gamma, dtype=torch.float64), persistent=False)
        self.register_buffer("alphas2_table", torch.tensor(alphas2, dtype=torch.float64), persistent=False)

    def _apply(self, fn, recurse=True):
        """Device moves apply to the tables; dtype casts (``model.float()``, ``model.to(torch.float32)``) do
        not: the tables stay float64, so a model cast to float32 and back keeps the exact schedule."""
        tables = {name: getattr(self, name) for name in ("gamma_table", "alphas2_table")}
        super()._apply(fn, recurse)
        for name, table in tables.items():
            setattr(self, name, table.to(getattr(self, name).device))
        return self

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """Integer step of ``t`` (long steps pass through; floats in [0, 1] are rounded from t * T)."""
        if t.dtype in (torch.int64, torch.int32):
            return t.long()
        return torch.round(t * self.timesteps).long()

    def gamma(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """gamma_t = -log SNR_t, same shape as ``t``."""
        g = self.gamma_table[self.index(t)]
        return g.to(dtype or torch.get_default_dtype())

    def alpha_sigma(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) = (sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma)))."""
        g = self.gamma_table[self.index(t)]
        dtype = dtype or torch.get_default_dtype()
        return torch.sigmoid(-g).sqrt().to(dtype), torch.sigmoid(g).sqrt().to(dtype)

    def alpha_bar(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """alpha_t^2 (the 'alpha bar' of DDPM notation)."""
        return self.alphas2_table[self.index(t)].to(dtype or torch.get_default_dtype())


__all__ = ["NoiseSchedule", "polynomial_alphas2", "cosine_alphas2", "clip_noise_schedule"]
