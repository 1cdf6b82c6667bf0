"""Per-molecule fully connected graphs and centre-of-mass helpers for variable-size batches (no padding).

A batch of B molecules with n_b atoms each is stored PyG style: nodes concatenated (n = sum n_b) with a
``batch`` vector (n,) naming each node's molecule. The fully connected graph has E = sum n_b (n_b - 1)
directed edges -- EDM instead pads every molecule to 29 atoms and uses B * 29^2 dense pairs, which is
where most of its time goes for QM9 (mean 18 atoms: 18*17 = 306 vs 841 pairs).
"""

from __future__ import annotations

import torch

from molequi import keys as K
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


#: the key under which a generative model's ``prepare_batch`` stores the batch's integer structure
STRUCTURE_KEY = "diffusion_structure"


def batch_info(batch) -> tuple[torch.Tensor, int]:
    """(n,) batch vector and number of molecules of a batch (one molecule without a batch vector): the count is
    PyG's ``num_graphs`` (a Python int), else read from the batch vector."""
    b = batch[K.BATCH] if K.BATCH in batch else torch.zeros(batch[K.POS].shape[0], dtype=torch.long,
                                                              device=batch[K.POS].device)
    num_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else int(b.max()) + 1
    return b, num_graphs


def structure_of(batch, build) -> dict:
    """The integer structure ``prepare_batch`` stored in ``batch`` (computed on the CPU batch before the device
    transfer), else ``build(batch)`` (computed here: host syncs when the batch is on a GPU)."""
    return batch[STRUCTURE_KEY] if STRUCTURE_KEY in batch else build(batch)


def size_histogram(batch: torch.Tensor, num_graphs: int, max_atoms: int) -> tuple[torch.Tensor, int]:
    """(max_atoms + 1,) counts of the molecule sizes of a batch (sizes above max_atoms counted at max_atoms) and
    the largest size as a Python int (a host read: run it on the CPU batch, ``prepare_batch``)."""
    sizes = torch.bincount(batch, minlength=num_graphs)
    max_size = int(sizes.max()) if sizes.numel() else 0
    return torch.bincount(sizes.clamp(max=max_atoms), minlength=max_atoms + 1), max_size


def molecule_sizes(batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """(B,) atoms per molecule of a sorted or unsorted (n,) batch vector: ``bincount(batch, minlength=B)`` without
    its host sync on a GPU (bincount reads the largest index to size its output; a sum of ones does not)."""
    return torch.zeros(num_graphs, dtype=torch.long, device=batch.device).index_add_(0, batch, torch.ones_like(batch))


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


def rng(generator: torch.Generator | None) -> dict:
    """``generator=`` keyword of a random op, left out when None: Dynamo cannot trace the ``generator`` overloads
    of randint / randn with a dynamic size (``SymIntArrayRef expected to contain only concrete integers``)."""
    return {} if generator is None else {"generator": generator}


def centred_gaussian(batch: torch.Tensor, num_graphs: int, dim: int = 3, *, dtype=None, device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, dim) standard normal noise projected to zero mean per molecule: an isotropic Gaussian on the
    (n_b - 1) * dim dimensional subspace."""
    eps = torch.randn(batch.numel(), dim, dtype=dtype, device=device, **rng(generator))
    return remove_mean(eps, batch, num_graphs)


__all__ = ["sizes_to_batch", "fully_connected_edges", "molecule_sizes", "scatter_mean", "remove_mean", "centred_gaussian",
           "STRUCTURE_KEY", "structure_of", "size_histogram", "batch_info", "rng"]
