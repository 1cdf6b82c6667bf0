"""Exponential moving average (EMA) of a model's parameters, kept as buffers so checkpoints carry it.

After each optimiser step t (counted from 0), every parameter's shadow copy is updated as

    shadow <- d_t * shadow + (1 - d_t) * param,     d_t = min(decay, (1 + t) / (10 + t))

(the warm-up of ``d_t`` is the one of MACE and ``torch_ema``: early averages are not dominated by the random
initialisation). With ``warmup=False``, d_t = decay from the first step: the plain average that progressive
distillation keeps of a student initialised from its teacher (``molequi.models.generative.distill``). The
trainer (``molequi train``, ``optim.ema_decay``) and distillation share this class. The shadows are registered buffers of this module, so ``state_dict`` / Lightning checkpoints
save and restore them with the rest of the run, and ``.double()`` / ``.to(device)`` move them along.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class ExponentialMovingAverage(torch.nn.Module):
    """Shadow copies of ``model``'s floating-point parameters (in ``named_parameters`` order)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.names = [n for n, p in model.named_parameters() if p.dtype.is_floating_point]
        for i, name in enumerate(self.names):
            self.register_buffer(f"shadow_{i}", dict(model.named_parameters())[name].detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def _shadows(self) -> list[torch.Tensor]:
        return [getattr(self, f"shadow_{i}") for i in range(len(self.names))]

    def _params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        t = int(self.num_updates)
        d = min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay
        for shadow, p in zip(self._shadows(), self._params(model)):
            shadow.lerp_(p.detach().to(shadow.dtype), 1.0 - d)
        self.num_updates += 1

    @contextmanager
    def swapped_into(self, model: torch.nn.Module):
        """Within the block, ``model`` holds the averaged weights; the live weights come back afterwards."""
        params = self._params(model)
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self._shadows()):
                p.copy_(s)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)

    def averaged_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with the averaged parameters in place of the live ones."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, shadow in zip(self.names, self._shadows()):
            state[name] = shadow.detach().clone()
        return state


__all__ = ["ExponentialMovingAverage"]
