"""EDM's adaptive gradient clipping (``optim.grad_clip: edm_adaptive``).

EDM (Hoogeboom et al. 2022, ``equivariant_diffusion/utils.py: gradient_clipping`` with the ``Queue`` of
``utils.py``) clips each step's gradient norm to

    max_norm = 1.5 * mean(q) + 2 * std(q)        (std: population, numpy's default)

where ``q`` holds the last 50 recorded norms, newest first, and starts as [3000] (a large value that is
flushed out after 50 steps). After clipping, the step records ``min(norm, max_norm)``: the norm before
clipping, or the limit when it was clipped. The norm is the 2-norm over every parameter's gradient
(``torch.nn.utils.clip_grad_norm_``). ``EDMGradClip`` keeps the queue and travels in the trainer's
checkpoints (``state_dict``), so a resumed run clips as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

EDM_QUEUE_LENGTH = 50
EDM_QUEUE_START = 3000.0


class EDMGradClip:
    """EDM's rule over a queue of the last ``max_len`` gradient norms (newest first)."""

    def __init__(self, max_len: int = EDM_QUEUE_LENGTH, start: float = EDM_QUEUE_START):
        self.max_len = int(max_len)
        self.norms: list[float] = [float(start)]

    def limit(self) -> float:
        """The largest gradient norm allowed at the next step."""
        return float(1.5 * np.mean(self.norms) + 2 * np.std(self.norms))

    def record(self, norm: float) -> None:
        self.norms.insert(0, float(norm))
        if len(self.norms) > self.max_len:
            self.norms.pop()

    def clip(self, parameters: Iterable[torch.nn.Parameter]) -> tuple[float, float]:
        """Clip the gradients of ``parameters`` in place; return (norm before clipping, limit)."""
        limit = self.limit()
        norm = float(torch.nn.utils.clip_grad_norm_(list(parameters), max_norm=limit, norm_type=2.0))
        self.record(min(norm, limit))
        return norm, limit

    def state_dict(self) -> dict:
        return {"max_len": self.max_len, "norms": list(self.norms)}

    def load_state_dict(self, state: dict) -> None:
        self.max_len = int(state["max_len"])
        self.norms = [float(v) for v in state["norms"]]


__all__ = ["EDMGradClip", "EDM_QUEUE_LENGTH", "EDM_QUEUE_START"]
