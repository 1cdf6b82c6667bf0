"""Per-atom scalar readouts and the element embedding, as in MACE (shapes: n atoms, c channels).

- ``ElementEmbedding``: element index (n,) -> (n, c), a learned vector per element (MACE's linear
  embedding of the one-hot element)
- ``LinearReadout``:    (n, c) -> (n,), y = x w / sqrt(c)
- ``MLPReadout``:       (n, c) -> (n,), y = silu(x W1 / sqrt(c)) w2 / sqrt(hidden) (normalised SiLU)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from molequi.nn.radial import SILU_NORM


class ElementEmbedding(nn.Module):
    def __init__(self, num_elements: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_elements, channels))

    def forward(self, element: torch.Tensor) -> torch.Tensor:
        return self.weight[element]


class LinearReadout(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight / math.sqrt(self.weight.shape[0])


class MLPReadout(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(channels, hidden))
        self.w2 = nn.Parameter(torch.randn(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = SILU_NORM * torch.nn.functional.silu(x @ self.w1 / math.sqrt(self.w1.shape[0]))
        return h @ self.w2 / math.sqrt(self.w2.shape[0])


__all__ = ["ElementEmbedding", "LinearReadout", "MLPReadout"]
