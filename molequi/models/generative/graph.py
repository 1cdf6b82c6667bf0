"""Per-molecule fully connected graphs and centre-of-mass helpers for variable-size batches (no padding).

A batch of B molecules with n_b atoms each is stored PyG style: nodes concatenated (n = sum n_b) with a
``batch`` vector (n,) naming each node's molecule. The fully connected graph has E = sum n_b (n_b - 1)
directed edges -- EDM instead pads every molecule to 29 atoms and uses B * 29^2 dense pairs, which is
where most of its time goes for QM9 (mean 18 atoms: 18*17 = 306 vs 841 pairs).
"""

from __future__ import annotations

import torch

from molequi.nn.scatter import scatter_sum


def sizes_to_batch(sizes: torch.Tensor) -> torch.Tensor:
    """(B,) molecule sizes -> (n,) batch vector [0,0,..,1,1,..]."""
    return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)


def fully_connected_edges(batch: torch.Tensor, num_graphs: int | None = None) -> torch.Tensor:
    """(2, E) all ordered pairs i != j inside each molecule; row 0 = sender j, row 1 = receiver i.

    batch (n,) long, sorted (PyG convention). E = sum_b n_b (n_b - 1).
    """
    n = batch.numel()
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
    sizes = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cumsum(sizes, 0) - sizes  # first node of each molecule
    per_node = sizes[batch]  # (n,) partners incl. self
    senders = torch.repeat_interleave(torch.arange(n, device=batch.device), per_node)
    block_start = torch.repeat_interleave(torch.cumsum(per_node, 0) - per_node, per_node)
    local = torch.arange(senders.numel(), device=batch.device) - block_start
    receivers = ptr[batch[senders]] + local
    keep = senders != receivers
    return torch.stack([senders[keep], receivers[keep]])


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Per-group mean (groups without members give 0)."""
    total = scatter_sum(src, index, dim_size)
    # a sum of ones, not bincount: bincount's output size depends on the data (a graph break when compiled)
    count = src.new_zeros(dim_size).index_add_(0, index, src.new_ones(index.shape)).clamp(min=1)
    return total / count.reshape(-1, *([1] * (src.dim() - 1)))


def remove_mean(x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Project (n, 3) positions onto the zero centre-of-mass subspace of each molecule (unit masses)."""
    if torch.compiler.is_compiling():
        # Inductor (torch 2.13, CPU) miscompiles the scatter-mean here when it follows EDM's stack of >= 4
        # scatter-based coordinate updates: it returned an exactly zero velocity (eager 0.43) in float32 and
        # float64; the same mean as a (B, n) one-hot product compiles right (tests/models/test_compile_more.py)
        onehot = (batch.unsqueeze(0) == torch.arange(num_graphs, device=batch.device).unsqueeze(1)).to(x.dtype)
        mean = (onehot @ x) / onehot.sum(1, keepdim=True).clamp(min=1)
        return x - mean[batch]
    return x - scatter_mean(x, batch, num_graphs)[batch]


def centred_gaussian(batch: torch.Tensor, num_graphs: int, dim: int = 3, *, dtype=None, device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, dim) standard normal noise projected to zero mean per molecule: an isotropic Gaussian on the
    (n_b - 1) * dim dimensional subspace."""
    eps = torch.randn(batch.numel(), dim, dtype=dtype, device=device, generator=generator)
    return remove_mean(eps, batch, num_graphs)


__all__ = ["sizes_to_batch", "fully_connected_edges", "scatter_mean", "remove_mean", "centred_gaussian"]
