"""Categorical diffusion of atom types, formal charges and bonds with continuous positions (EQGAT-diff, Le et al.
2024; MiDi, Vignac et al. 2023), with two denoisers:

- ``eqgat_diff`` (``EQGATDiffusion``): EQGAT-diff's own denoiser (``molequi.models.generative.eqgat``:
  equivariant graph attention with scalar, vector and edge features), as its reference code builds it;
- ``egnn_categorical`` (``CategoricalDiffusion``): EDM's EGNN with bond features (``CategoricalDenoiser``),
  molequi's earlier stand-in, kept under its own name.

Per molecule: positions x (n, 3) Å (zero centre of mass), atom types a (n,) in K classes, formal charges
q (n,) in ``charges`` (default {-1, 0, +1}), bonds b_ij in {none, single, double, triple, aromatic} for every
pair i < j.

Forward process, cosine schedule alpha_bar_t (``NoiseSchedule('cosine')``), t = 1..T::

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps          (eps centred per molecule)
    q(c_t | c_0) = Cat(alpha_bar_t onehot(c_0) + (1 - alpha_bar_t) m)   for c in {a, q, b}

where m is the class marginal of the training data (the "marginal prior": Q_t = a_t I + (1 - a_t) 1 m^T with
a_t = alpha_bar_t / alpha_bar_{t-1}, so the chain converges to m rather than to uniform noise).

x0 parameterisation. The network predicts x_0 and the class probabilities p(c_0 | G_t); the loss per
molecule is EQGAT-diff's (``experiments/losses.py`` ``DiffusionLoss`` with x0 targets)::

    L = w_t [ 3 MSE(x) + 0.4 CE(a) + 1 CE(q) + 2 CE(b) ],  w_t = clamp(alpha_bar_t / (1 - alpha_bar_t), 0.05, 1.5)

    MSE(x) = mean_i mean_{xyz} (x_0 - x_hat)^2            (per coordinate: ||.||^2 / 3 per atom)
    CE(a), CE(q) = mean_i CE_i
    CE(b)  = mean_i 0.5 mean_{j != i} CE_ji               (per receiving atom, then per molecule)

(``reference_loss_terms``); the batch loss is the mean of L over molecules (the reference sums them: a
constant factor, the batch size). Before this form molequi's coordinate term was 3x larger (||.||^2 per
atom) and the bond term 2x (mean over pairs without the 0.5).

Reverse step t -> s (any s < t, so fewer steps than T work): for positions the Gaussian posterior
q(x_s | x_t, x_hat); for each categorical variable the posterior mixed over the predicted c_0,::

    p(c_s = i | c_t = j) = sum_k p(c_0 = k) q(c_t = j | c_s = i) q(c_s = i | c_0 = k) / q(c_t = j | c_0 = k).

One cosine schedule serves all four variables, as in the reference (its per-variable exponents nu only act
with its "adaptive" schedule). The reference tabulates the cosine differently: T + 2 points on [0, T] and step
ratios clipped at 0.05 (molequi: T + 1 points, clipped at 0.001), so its alpha_bar_t is up to 0.4 % lower
for t < T (0.8971 vs 0.8987 at t = 100 of 500) and 4.8e-7 vs 9.7e-9 at t = T. Bonds are predicted by an
edge head (symmetrised over i -> j and j -> i), not inferred from distances.

Training data need bonds and charges: records with ``bond_index`` (2, nb), ``bond_order`` (nb,) and
``charges`` (n,) (see ``data.perceive_bonds``); when absent they are perceived from the geometry on the fly
(RDKit ``DetermineBonds``, about 1.5 ms per QM9 molecule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from molequi import keys as K
from molequi.data.molecules import Molecule
from molequi.errors import ConfigError, InputError, ModelError
from molequi.models.generative.graph import (
    STRUCTURE_KEY,
    batch_info,
    centred_gaussian,
    fully_connected_edges,
    remove_mean,
    rng,
    scatter_mean,
    size_histogram,
    sizes_to_batch,
    structure_of,
)
from molequi.models.generative.layers import EDMBlock, PairLinear
from molequi.models.generative.schedules import NoiseSchedule
from molequi.nn.heap import retained_heap

CHARGE_VALUES = (-1, 0, 1)
N_BOND_TYPES = 5  # none, single, double, triple, aromatic


def edge_lookup(edge_index: torch.Tensor, n: int, pairs: torch.Tensor) -> torch.Tensor:
    """Positions in ``edge_index`` (sorted by sender, then receiver) of the directed pairs ``pairs`` (2, m)."""
    keys = edge_index[0] * n + edge_index[1]
    return torch.searchsorted(keys, pairs[0] * n + pairs[1])


class CategoricalDenoiser(nn.Module):
    """EGNN with bond features: predicts x_0 (n, 3), type / charge logits (n, K) / (n, C), bond logits (E, 5).

    forward(x, a, q, b, t, batch, edge_index, rev) with one-hot a (n, K), q (n, C), b (E, 5), t (B,) in [0, 1],
    rev (E,) the index of each edge's reverse. Equivariant in x, invariant elsewhere.
    """

    def __init__(self, n_types: int, hidden: int, layers: int, edge_hidden: int, coords_range: float = 15.0,
                 n_charges: int = len(CHARGE_VALUES)):
        super().__init__()
        self.node_in = nn.Linear(n_types + n_charges + 1, hidden)
        self.edge_in = nn.Linear(N_BOND_TYPES, edge_hidden)
        self.blocks = nn.ModuleList([EDMBlock(hidden, coords_range=coords_range / layers, edge_dim=1 + edge_hidden)
                                     for _ in range(layers)])
        # bond features updated from the new node features: e_ij += psi(A h_i + B h_j + C [e_ij, d_ij])
        self.edge_updates = nn.ModuleList([PairLinear(hidden, edge_hidden + 1, edge_hidden) for _ in range(layers)])
        self.edge_mlps = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(edge_hidden, edge_hidden))
                                        for _ in range(layers)])
        self.type_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_types))
        self.charge_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_charges))
        self.bond_head = nn.Sequential(nn.Linear(edge_hidden + 1, edge_hidden), nn.SiLU(),
                                       nn.Linear(edge_hidden, N_BOND_TYPES))

    def forward(self, x, a, q, b, t, batch, edge_index, rev):
        num_graphs = t.shape[0]
        h = self.node_in(torch.cat([a, q, t.to(x.dtype)[batch].unsqueeze(-1)], -1))
        e = self.edge_in(b)
        src, dst = edge_index
        d0 = ((x[dst] - x[src]) ** 2).sum(-1, keepdim=True)
        xx = x
        for block, upd, mlp in zip(self.blocks, self.edge_updates, self.edge_mlps):
            h, xx = block(h, xx, edge_index, torch.cat([d0, e], -1))
            d = ((xx[dst] - xx[src]) ** 2).sum(-1, keepdim=True)
            e = e + mlp(upd(h, torch.cat([e, d], -1), src, dst))
        x0 = remove_mean(xx, batch, num_graphs)
        e_sym = 0.5 * (e + e[rev])
        d = ((x0[dst] - x0[src]) ** 2).sum(-1, keepdim=True)
        return x0, self.type_head(h), self.charge_head(h), self.bond_head(torch.cat([e_sym, d], -1))


def _posterior(c_t: torch.Tensor, p0: torch.Tensor, m: torch.Tensor, ab_t: float, ab_s: float) -> torch.Tensor:
    """p(c_s | c_t) mixed over p(c_0) for the marginal-prior chain. c_t (N,) long, p0 (N, K), m (K,) -> (N, K)."""
    a_ts = ab_t / ab_s
    onehot = nn.functional.one_hot(c_t, m.numel()).to(p0.dtype)
    left = a_ts * onehot + (1 - a_ts) * m[c_t].unsqueeze(-1)  # q(c_t | c_s = i): (N, K_i)
    right = ab_s * torch.eye(m.numel(), dtype=p0.dtype, device=p0.device) + (1 - ab_s) * m.unsqueeze(0)  # (K0, Ki)
    unnorm = left.unsqueeze(1) * right.unsqueeze(0)  # (N, K0, Ki)
    norm = unnorm.sum(-1, keepdim=True).clamp_min(1e-30)  # q(c_t | c_0)
    post = (p0.unsqueeze(-1) * unnorm / norm).sum(1)
    return post / post.sum(-1, keepdim=True).clamp_min(1e-30)


@dataclass
class DiffusionSettings:
    """The categorical diffusion's settings, shared by both denoisers' ``Config``."""

    elements: list[int] = field(default_factory=lambda: [1, 6, 7, 8, 9])  # atom types
    charges: list[int] = field(default_factory=lambda: list(CHARGE_VALUES))  # formal charges (consecutive)
    timesteps: int = 500  # T (EQGAT-diff: 500)
    weight_x: float = 3.0  # loss weight of the positions (EQGAT-diff)
    weight_types: float = 0.4  # loss weight of the atom-type cross-entropy
    weight_charges: float = 1.0  # loss weight of the charge cross-entropy
    weight_bonds: float = 2.0  # loss weight of the bond-order cross-entropy
    weight_clamp: list[float] = field(default_factory=lambda: [0.05, 1.5])  # clamp of alpha_bar/(1-alpha_bar)
    max_atoms: int = 64  # largest molecule the size distribution can hold

    def validate(self) -> None:
        if not self.elements:
            raise ConfigError("categorical diffusion needs at least one element")
        if not self.charges or list(self.charges) != list(range(min(self.charges), max(self.charges) + 1)):
            raise ConfigError(f"charges must be consecutive integers in increasing order, got {self.charges}")


def reference_loss_terms(x_hat, x0, la, types, lq, charges, lb, bonds, batch, edge_index, num_graphs: int):
    """Per-molecule (B,) loss terms as EQGAT-diff's ``DiffusionLoss`` (module docstring): MSE(x) per coordinate,
    CE(a), CE(q) averaged over atoms, CE(b) halved and averaged per receiving atom, then over atoms."""
    n = x0.shape[0]
    ce = nn.functional.cross_entropy
    mse = scatter_mean(((x_hat - x0) ** 2).mean(-1), batch, num_graphs)
    ce_a = scatter_mean(ce(la, types, reduction="none"), batch, num_graphs)
    ce_q = scatter_mean(ce(lq, charges, reduction="none"), batch, num_graphs)
    per_atom = 0.5 * scatter_mean(ce(lb, bonds, reduction="none"), edge_index[1], n)
    return mse, ce_a, ce_q, scatter_mean(per_atom, batch, num_graphs)


class CategoricalDiffusion(nn.Module):
    """Generative model with categorical atoms, charges and bonds (x0 parameterisation, cosine schedule),
    denoised by EDM's EGNN with bond features (``egnn_categorical``)."""

    compile_target: ClassVar[str] = "net"  # the denoiser, compiled with device_loss by trainer.compile

    @dataclass
    class Config(DiffusionSettings):
        name: ClassVar[str] = "egnn_categorical"  # registry name (molequi.models.MODELS), written into checkpoints
        r_max: ClassVar[float | None] = None  # no neighbour graph: the denoiser is fully connected
        hidden: int = 256  # node features
        edge_hidden: int = 64  # bond features
        layers: int = 6  # equivariant blocks
        coords_range: float = 15.0  # bound of the coordinate update per model (Å), split over the blocks

    def __init__(self, config: Config | None = None):
        super().__init__()
        cfg = config or type(self).Config()
        cfg.validate()
        self.config = cfg
        self.n_types = len(cfg.elements)
        self.n_charges = len(cfg.charges)
        lookup = torch.full((119,), -1, dtype=torch.long)
        lookup[torch.tensor(cfg.elements)] = torch.arange(self.n_types)
        self.register_buffer("type_of_z", lookup, persistent=False)
        self.register_buffer("elements", torch.tensor(cfg.elements, dtype=torch.long), persistent=False)
        # class counts seen in training (+1 smoothing at use): the marginal priors and the size histogram
        self.register_buffer("size_counts", torch.zeros(cfg.max_atoms + 1, dtype=torch.float64))
        self.register_buffer("type_counts", torch.zeros(self.n_types, dtype=torch.float64))
        self.register_buffer("charge_counts", torch.zeros(self.n_charges, dtype=torch.float64))
        self.register_buffer("bond_counts", torch.zeros(N_BOND_TYPES, dtype=torch.float64))
        self.schedule = NoiseSchedule("cosine", cfg.timesteps)
        self.net = self.build_denoiser(cfg)

    def build_denoiser(self, cfg) -> nn.Module:
        return CategoricalDenoiser(self.n_types, cfg.hidden, cfg.layers, cfg.edge_hidden, cfg.coords_range,
                                   self.n_charges)

    @classmethod
    def from_config(cls, cfg: Config, statistics=None) -> CategoricalDiffusion:
        return cls(cfg)

    # ------------------------------------------------------------------ data
    def marginal(self, name: str) -> torch.Tensor:
        c = getattr(self, f"{name}_counts")
        return ((c + 1.0) / (c + 1.0).sum()).to(torch.get_default_dtype())

    def batch_structure(self, batch) -> dict:
        """The integer part of a batch, from its atomic numbers, batch vector and bonds (perceived from the
        geometry when the records have none): class ids of ``types``, ``charges`` (n,) and ``bonds`` (E,) on the
        fully connected ``edge_index`` (2, E) with ``rev`` (E,) each edge's reverse; this batch's class and
        size counts (``type_counts``, ``charge_counts``, ``bond_counts`` over pairs i < j, ``size_counts``) and
        ``max_size`` (a Python int); ModelError for elements outside the model's. ``prepare_batch`` computes it
        on the CPU batch before the device transfer, so the training step has no host sync."""
        b, num_graphs = batch_info(batch)
        numbers, pos = batch[K.NUMBERS], batch[K.POS]
        types = self.type_of_z[numbers]
        if (types < 0).any():
            raise ModelError(f"elements {sorted(set(numbers[types < 0].tolist()))} are not among this model's "
                             f"elements {self.config.elements}")
        if "bond_index" not in batch or K.CHARGES not in batch:
            from molequi.data.molecules import perceive_batch_bonds

            bond_index, bond_order, charges = perceive_batch_bonds(numbers, pos, b)
        else:
            bond_index, bond_order, charges = batch["bond_index"], batch["bond_order"], batch[K.CHARGES]
        lo, hi = min(self.config.charges), max(self.config.charges)
        charges = charges.long().clamp(lo, hi) - lo
        n = numbers.numel()
        edge_index = fully_connected_edges(b, num_graphs)
        rev = edge_lookup(edge_index, n, edge_index.flip(0))
        bonds = torch.zeros(edge_index.shape[1], dtype=torch.long, device=pos.device)
        if bond_index.numel():
            both = torch.cat([bond_index, bond_index.flip(0)], 1)
            bonds[edge_lookup(edge_index, n, both)] = bond_order.long().repeat(2).clamp(0, N_BOND_TYPES - 1)
        size_counts, max_size = size_histogram(b, num_graphs, self.config.max_atoms)
        upper = edge_index[0] < edge_index[1]
        return {"types": types, "charges": charges, "edge_index": edge_index, "rev": rev, "bonds": bonds,
                "size_counts": size_counts, "max_size": max_size,
                "type_counts": torch.bincount(types, minlength=self.n_types),
                "charge_counts": torch.bincount(charges, minlength=self.n_charges),
                "bond_counts": torch.bincount(bonds[upper], minlength=N_BOND_TYPES)}

    def prepare_batch(self, batch):
        """``batch`` with its ``batch_structure`` stored in it (``graph.STRUCTURE_KEY``): the trainer calls this on
        the CPU batch before it moves to the device (``TaskModule.on_before_batch_transfer``)."""
        batch[STRUCTURE_KEY] = self.batch_structure(batch)
        return batch

    @staticmethod
    def _sample_cat(probs: torch.Tensor, generator=None) -> torch.Tensor:
        """One class per row of ``probs`` (N, K): ``torch.multinomial(p, 1)``'s own algorithm, argmax p / q with
        q ~ Exp(1) (aten's one-sample fast path: the same draws from the same random state), without its
        host-read checks of p (finite, non-negative, rows not all zero), which wait for the GPU every call."""
        p = probs.float().clamp_min(0)
        return (p / torch.empty_like(p).exponential_(1, **rng(generator))).argmax(-1)

    def _noise_classes(self, c0, K_, m, ab, generator=None):
        probs = ab.unsqueeze(-1) * nn.functional.one_hot(c0, K_).to(m.dtype) + (1 - ab).unsqueeze(-1) * m
        return self._sample_cat(probs, generator)

    def _symmetric_bonds(self, bonds_dir, edge_index, rev):
        """Copy the i < j entries to j > i so the bond matrix is symmetric (a gather: no boolean-mask size)."""
        return torch.where(edge_index[0] < edge_index[1], bonds_dir, bonds_dir[rev])

    # ------------------------------------------------------------------ training
    def training_loss(self, batch, generator=None) -> tuple[torch.Tensor, dict]:
        """The weighted x0 loss of the module docstring, mean over molecules: the host part (``loss_inputs``)
        reads the batch, the device part (``device_loss``) has no host sync (compiled by trainer.compile)."""
        # the compiled device part (trainer.compile) draws from the global random state: no generator in its graph
        compiled = getattr(self, "_compiled_loss", None) if generator is None else None
        device_loss = compiled or self.device_loss
        return device_loss(self.loss_inputs(batch), generator)

    def loss_inputs(self, batch) -> dict:
        """What ``device_loss`` needs of a batch: positions, batch vector and ``batch_structure`` (``prepare_batch``'s,
        else computed here, with host syncs on a GPU); in training, ModelError for a molecule larger than
        max_atoms (a Python int: no host sync)."""
        b, num_graphs = batch_info(batch)
        structure = dict(structure_of(batch, self.batch_structure))
        max_size = structure.pop("max_size")
        if self.training and max_size > self.config.max_atoms:
            raise ModelError(f"molecule with {max_size} atoms exceeds max_atoms={self.config.max_atoms}")
        return {"pos": batch[K.POS], "batch": b, "num_graphs": num_graphs, **structure}

    def device_loss(self, inputs: dict, generator=None) -> tuple[torch.Tensor, dict]:
        """The device part of ``training_loss`` on ``loss_inputs``: class and size counts (training), noise,
        denoiser, loss. No ``.item()``, no data-dependent size: one ``torch.compile(fullgraph=True)`` graph."""
        b, num_graphs, edge_index, rev = inputs["batch"], inputs["num_graphs"], inputs["edge_index"], inputs["rev"]
        types, charges, bonds = inputs["types"], inputs["charges"], inputs["bonds"]
        if self.training:
            for name in ("size", "type", "charge", "bond"):
                counts = getattr(self, f"{name}_counts")
                counts += inputs[f"{name}_counts"].to(counts)
        x0 = remove_mean(inputs["pos"], b, num_graphs)
        dtype = x0.dtype
        t_int = torch.randint(1, self.config.timesteps + 1, (num_graphs,), device=x0.device, **rng(generator))
        ab = self.schedule.alpha_bar(t_int, dtype)  # (B,)
        eps = centred_gaussian(b, num_graphs, dtype=dtype, device=x0.device, generator=generator)
        x_t = ab.sqrt()[b].unsqueeze(-1) * x0 + (1 - ab).sqrt()[b].unsqueeze(-1) * eps
        a_t = self._noise_classes(types, self.n_types, self.marginal("type").to(dtype), ab[b], generator)
        q_t = self._noise_classes(charges, self.n_charges, self.marginal("charge").to(dtype), ab[b], generator)
        eb = b[edge_index[0]]
        b_t = self._symmetric_bonds(self._noise_classes(bonds, N_BOND_TYPES, self.marginal("bond").to(dtype),
                                                        ab[eb], generator), edge_index, rev)
        x_hat, la, lq, lb = self.net(x_t, nn.functional.one_hot(a_t, self.n_types).to(dtype),
                                     nn.functional.one_hot(q_t, self.n_charges).to(dtype),
                                     nn.functional.one_hot(b_t, N_BOND_TYPES).to(dtype),
                                     t_int.to(dtype) / self.config.timesteps, b, edge_index, rev)
        mse, ce_a, ce_q, ce_b = reference_loss_terms(x_hat, x0, la, types, lq, charges, lb, bonds, b, edge_index,
                                                     num_graphs)
        lo, hi = self.config.weight_clamp
        w = (ab / (1 - ab).clamp_min(1e-12)).clamp(lo, hi)
        c = self.config
        per_mol = c.weight_x * mse + c.weight_types * ce_a + c.weight_charges * ce_q + c.weight_bonds * ce_b
        loss = (w * per_mol).mean()
        return loss, {"mse_x": mse.mean().detach(), "ce_types": ce_a.mean().detach(),
                      "ce_charges": ce_q.mean().detach(), "ce_bonds": ce_b.mean().detach()}

    def forward(self, batch) -> dict[str, torch.Tensor]:
        loss, logs = self.training_loss(batch)
        return {"loss": loss, **logs}

    # ------------------------------------------------------------------ sampling
    def sample_sizes(self, n: int, generator=None) -> torch.Tensor:
        if float(self.size_counts.sum()) <= 0:
            raise ModelError("this model has no molecule-size histogram (it was never trained); give sizes=")
        return torch.multinomial((self.size_counts / self.size_counts.sum()).float(), n, replacement=True,
                                 generator=generator)

    def time_grid(self, steps: int | None) -> list[int]:
        """T = t_0 > ... > t_S = 0, round(linspace(T, 0, S + 1))."""
        T = self.config.timesteps
        steps = T if steps is None else steps
        if steps < 1 or steps > T:
            raise InputError(f"steps must lie in 1..{T}, got {steps}")
        return [int(g) for g in np.round(np.linspace(T, 0, steps + 1)).astype(int)]

    @torch.no_grad()
    @retained_heap()  # see molequi.nn.heap
    def sample_batch(self, sizes, *, steps: int | None = None, generator=None):
        """-> numbers (n,), positions (n, 3), charges (n,), bond matrix entries (edge_index (2, E), orders (E,)),
        batch (n,)."""
        p = next(self.parameters())
        dtype, dev = p.dtype, p.device
        sizes = torch.as_tensor(sizes, dtype=torch.long, device=dev)
        num_graphs = len(sizes)
        b = sizes_to_batch(sizes)
        n = b.numel()
        edge_index = fully_connected_edges(b, num_graphs)
        rev = edge_lookup(edge_index, n, edge_index.flip(0))
        ma, mq, mb = self.marginal("type").to(dtype), self.marginal("charge").to(dtype), self.marginal("bond").to(dtype)
        x = centred_gaussian(b, num_graphs, dtype=dtype, device=dev, generator=generator)
        a = self._sample_cat(ma.expand(n, -1), generator)
        q = self._sample_cat(mq.expand(n, -1), generator)
        bb = self._symmetric_bonds(self._sample_cat(mb.expand(edge_index.shape[1], -1), generator), edge_index, rev)
        grid = self.time_grid(steps)
        T = self.config.timesteps
        for t, s in zip(grid[:-1], grid[1:]):
            tt = torch.full((num_graphs,), t / T, dtype=dtype, device=dev)
            x_hat, la, lq, lb = self.net(x, nn.functional.one_hot(a, self.n_types).to(dtype),
                                         nn.functional.one_hot(q, self.n_charges).to(dtype),
                                         nn.functional.one_hot(bb, N_BOND_TYPES).to(dtype), tt, b, edge_index, rev)
            pa, pq, pb = la.softmax(-1), lq.softmax(-1), lb.softmax(-1)
            ab_t = float(self.schedule.alphas2_table[t])
            ab_s = float(self.schedule.alphas2_table[s])
            if s == 0:
                x, a, q = x_hat, pa.argmax(-1), pq.argmax(-1)
                bb = self._symmetric_bonds(pb.argmax(-1), edge_index, rev)
                break
            a_ts = ab_t / ab_s
            beta = 1 - a_ts
            mean = (ab_s ** 0.5 * beta / (1 - ab_t)) * x_hat + (a_ts ** 0.5 * (1 - ab_s) / (1 - ab_t)) * x
            var = beta * (1 - ab_s) / (1 - ab_t)
            x = remove_mean(mean, b, num_graphs) + var ** 0.5 * centred_gaussian(
                b, num_graphs, dtype=dtype, device=dev, generator=generator)
            a = self._sample_cat(_posterior(a, pa, ma, ab_t, ab_s), generator)
            q = self._sample_cat(_posterior(q, pq, mq, ab_t, ab_s), generator)
            bb = self._symmetric_bonds(self._sample_cat(_posterior(bb, pb, mb, ab_t, ab_s), generator),
                                       edge_index, rev)
        charges = torch.tensor(self.config.charges, device=dev)[q]
        return self.elements[a], x, charges, edge_index, bb, b

    def sample(self, n: int, *, steps: int | None = None, batch_size: int = 64, sizes=None,
               generator=None) -> list[Molecule]:
        """``n`` molecules with predicted bonds (n_i, n_i) and formal charges, as ``Molecule``."""
        was = self.training
        self.eval()
        sizes = self.sample_sizes(n, generator) if sizes is None else torch.as_tensor(sizes)
        out = []
        for start in range(0, n, batch_size):
            sz = sizes[start: start + batch_size]
            numbers, x, charges, ei, bonds, b = self.sample_batch(sz, steps=steps, generator=generator)
            numbers, x, charges, b = numbers.cpu().numpy(), x.double().cpu().numpy(), charges.cpu().numpy(), \
                b.cpu().numpy()
            ei, bonds = ei.cpu().numpy(), bonds.cpu().numpy()
            offsets = np.concatenate([[0], np.cumsum(sz.cpu().numpy())])
            for k in range(len(sz)):
                lo, hi = offsets[k], offsets[k + 1]
                mat = np.zeros((hi - lo, hi - lo), dtype=int)
                sel = (ei[0] >= lo) & (ei[0] < hi)
                mat[ei[0, sel] - lo, ei[1, sel] - lo] = bonds[sel]
                out.append(Molecule(numbers[lo:hi], x[lo:hi], bonds=mat, charges=charges[lo:hi]))
        self.train(was)
        return out


class EQGATDiffusion(CategoricalDiffusion):
    """Categorical diffusion with EQGAT-diff's denoiser (``eqgat_diff``; ``molequi.models.generative.eqgat``).
    Defaults: the reference's hyperparameters (``experiments/hparams.py``: sdim 256, vdim 64, edim 32,
    7 layers, no cross product, T = 500)."""

    @dataclass
    class Config(DiffusionSettings):
        name: ClassVar[str] = "eqgat_diff"  # registry name (molequi.models.MODELS), written into checkpoints
        r_max: ClassVar[float | None] = None  # no neighbour graph: the denoiser is fully connected
        hidden: int = 256  # scalar channels per atom (reference: sdim)
        vectors: int = 64  # vector channels per atom (reference: vdim)
        edge_hidden: int = 32  # edge (bond) features (reference: edim)
        layers: int = 7  # EQGAT layers (reference: num_layers)
        cross_product: bool = False  # v_i x v_j messages (reference: use_cross_product); SE(3) only when on

    def build_denoiser(self, cfg) -> nn.Module:
        from molequi.models.generative.eqgat import EQGATDenoiser

        return EQGATDenoiser(self.n_types, self.n_charges, N_BOND_TYPES, cfg.hidden, cfg.vectors, cfg.edge_hidden,
                             cfg.layers, cfg.cross_product)


__all__ = ["CategoricalDiffusion", "EQGATDiffusion", "CategoricalDenoiser", "DiffusionSettings", "CHARGE_VALUES",
           "N_BOND_TYPES", "edge_lookup", "reference_loss_terms"]
