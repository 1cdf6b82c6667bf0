"""EDM's adaptive gradient clipping (``optim.grad_clip: edm_adaptive``).

EDM (Hoogeboom et al. 2022, ``equivariant_diffusion/utils.py: gradient_clipping`` with the ``Queue`` of
``utils.py``) clips each step's gradient norm to

    max_norm = 1.5 * mean(q) + 2 * std(q)        (std: population, numpy's default)

where ``q`` holds the last 50 recorded norms, newest first, and starts as [3000] (a large value that is
flushed out after 50 steps). After clipping, the step records ``min(norm, max_norm)``: the norm before
clipping, or the limit when it was clipped. The norm is the 2-norm over every parameter's gradient
(``torch.nn.utils.clip_grad_norm_``). ``EDMGradClip`` keeps the queue and travels in the trainer's
checkpoints (``state_dict``), so a resumed run clips as the uninterrupted one. The queue, the limit and the
scaling stay on the device (issue 20 item 1: no host sync per step); the logged norm and limit are tensors, read
by Lightning only on the steps it writes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

EDM_QUEUE_LENGTH = 50
EDM_QUEUE_START = 3000.0


class EDMGradClip:
    """EDM's rule over a queue of the last ``max_len`` gradient norms (newest first), held on the gradients'
    device so that a training step never waits for the device (no ``float(norm)``, no ``.item()``).

    The queue is a float64 tensor (EDM keeps Python floats); how many entries are valid is a host-side int
    (each step records exactly one norm, so the count needs no read of the device). The mean and the
    population standard deviation add the entries in numpy's own order (``numpy_sum``), so the limit is the
    float64 number EDM computes, bit for bit."""

    def __init__(self, max_len: int = EDM_QUEUE_LENGTH, start: float = EDM_QUEUE_START):
        self.max_len = int(max_len)
        self._queue = torch.zeros(self.max_len, dtype=torch.float64)
        self._queue[0] = float(start)
        self._count = 1

    @property
    def norms(self) -> list[float]:
        """The recorded norms, newest first, as Python floats (reads the device: for checks and checkpoints)."""
        return [float(v) for v in self._queue[:self._count].cpu()]

    def limit(self) -> torch.Tensor:
        """The largest gradient norm allowed at the next step: a float64 0-dim tensor on the queue's device,
        ``1.5 * np.mean(q) + 2 * np.std(q)`` to the last bit."""
        q = self._queue[:self._count]
        mean = numpy_sum(q) / self._count
        std = sqrt_rn(numpy_sum((q - mean) * (q - mean)) / self._count)
        return 1.5 * mean + 2 * std

    def record(self, norm: torch.Tensor | float) -> None:
        norm = torch.as_tensor(norm, dtype=torch.float64, device=self._queue.device).reshape(1)
        self._queue = torch.cat([norm, self._queue[:-1]])
        self._count = min(self._count + 1, self.max_len)

    def clip(self, parameters: Iterable[torch.nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip the gradients of ``parameters`` in place as ``torch.nn.utils.clip_grad_norm_(parameters,
        max_norm=limit)`` does, without reading the device; return 0-dim tensors (norm before clipping in the
        gradients' dtype, float64 limit)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            total = torch.zeros((), device=self._queue.device)
        else:
            total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            if self._queue.device != total.device:
                self._queue = self._queue.to(total.device)
        limit = self.limit()
        # clip_grad_norm_'s arithmetic: max_norm / (total + 1e-6) is Tensor.__rtruediv__, a reciprocal times
        # max_norm taken in the norm's dtype, clamped at 1; one foreach multiply per device and dtype
        coef = torch.clamp((total + 1e-6).reciprocal() * limit.to(total.dtype), max=1.0)
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for g in grads:
            groups.setdefault((g.device, g.dtype), []).append(g)
        for (device, _), group in groups.items():
            torch._foreach_mul_(group, coef.to(device))
        wide = total.to(torch.float64)
        self.record(torch.where(wide > limit, limit, wide))  # EDM records the limit when it clipped
        return total, limit

    def state_dict(self) -> dict:
        return {"max_len": self.max_len, "norms": self.norms}

    def load_state_dict(self, state: dict) -> None:
        self.max_len = int(state["max_len"])
        norms = [float(v) for v in state["norms"]][:self.max_len]
        self._queue = torch.zeros(self.max_len, dtype=torch.float64, device=self._queue.device)
        self._queue[:len(norms)] = torch.tensor(norms, dtype=torch.float64)
        self._count = len(norms)


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The square root of float64 ``x`` >= 0 rounded to nearest, as numpy's and IEEE's, with tensor ops only.
    torch's CPU sqrt is not always so (SLEEF's 0.5001-ulp routine: sqrt(26328.766286074286) comes out one ulp
    low, a near tie); CUDA's double sqrt is, so it is used as it is there. Elsewhere the nearest of sqrt(x) and
    its two neighbours is kept, judged by x - c * c taken exactly (Dekker's product; x - c * c rounds at 1e-16
    of a residual that is itself an ulp-sized quantity)."""
    root = torch.sqrt(x)
    if root.device.type == "cuda":
        return root
    candidates = torch.stack([torch.nextafter(root, root.new_zeros(())), root,
                              torch.nextafter(root, root.new_full((), float("inf")))])
    square = candidates * candidates
    split = 134217729.0 * candidates  # 2**27 + 1: c = hi + lo with 26-bit halves, so hi * hi etc. are exact
    hi = split - (split - candidates)
    lo = candidates - hi
    error = ((hi * hi - square) + 2 * hi * lo) + lo * lo  # c * c = square + error exactly
    residual = (x - square) - error
    distance = residual.abs() / (root + candidates)  # |sqrt(x) - c| to first order
    best = torch.where(torch.isfinite(distance), distance, distance.new_full((), float("inf"))).argmin()
    return torch.where(torch.isfinite(root) & (x > 0), candidates.gather(0, best.reshape(1))[0], root)


def numpy_sum(values: torch.Tensor) -> torch.Tensor:
    """``np.add.reduce`` of a 1-D float64 tensor of at most 128 entries, in numpy's order (its pairwise sum:
    below 8 entries one by one from 0.0; otherwise 8 running sums over blocks of 8, combined as
    ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the remainder one by one), with tensor ops only."""
    n = values.shape[0]
    if n > 128:
        raise ValueError(f"numpy_sum reproduces numpy's order for at most 128 values, got {n}")
    if n < 8:
        total = values.new_zeros(())
        for i in range(n):
            total = total + values[i]
        return total
    whole = n - n % 8
    r = values[:8]
    for i in range(8, whole, 8):
        r = r + values[i:i + 8]
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(whole, n):
        total = total + values[i]
    return total


__all__ = ["EDMGradClip", "EDM_QUEUE_LENGTH", "EDM_QUEUE_START", "numpy_sum", "sqrt_rn"]
