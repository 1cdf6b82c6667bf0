"""E(3) Equivariant Diffusion Model (EDM, Hoogeboom, Satorras, Vignac & Welling, ICML 2022) without padding.

Data of one molecule: positions x (n_b, 3) in Å, centred (zero centre of mass, unit masses), and features
h (n_b, K+1) = [one_hot(type) / 4, Z / 10] (EDM's ``normalize_factors [1, 4, 10]``; EDM calls Z "charges").

Forward process (variance preserving, ``NoiseSchedule``), for integer t in 0..T::

    z_t = alpha_t [x, h] + sigma_t eps,   eps_x ~ N(0, I) projected to zero mean per molecule, eps_h ~ N(0, I)

Training (epsilon parameterisation, EDM's l2 objective)::

    L = E_{t ~ U{0..T}} [ ||eps - eps_theta(z_t, t)||^2 / ((3 + K + 1) n) ]
  with n = max_b n_b, the padded size of the batch (EDM's normalisation, ``loss_normalisation="edm"``, the
  default) or n = n_b, the molecule's own size (``loss_normalisation="molecule"``).

Likelihood (``log_likelihood``; EDM's variational bound in eval mode, ``compute_loss(t0_always=True)``)::

    -log p(x, h, N) <= KL(q(z_T | x, h) || N(0, I)) + T E_{t ~ U{1..T}} [ 1/2 (SNR(s)/SNR(t) - 1)
        ||eps - eps_theta(z_t, t)||^2 ] - log p(x, h | z_0) + (N - 1) 3 log(nx) - log p(N)
  with s = t - 1, the position part of every Gaussian on the (N - 1) * 3 dimensional zero-mean subspace.

Ancestral sampling (EDM ``sample_p_zs_given_zt``), for s < t on any grid::

    sigma^2_{t|s} = 1 - exp(softplus(gamma_s) - softplus(gamma_t)),  alpha_{t|s} = alpha_t / alpha_s
    z_s = z_t / alpha_{t|s} - sigma^2_{t|s} / (alpha_{t|s} sigma_t) eps_theta + (sigma_{t|s} sigma_s / sigma_t) noise

DDIM sampling (Song et al. 2021), any number of steps, deterministic for eta = 0::

    x_hat = (z_t - sigma_t eps_theta) / alpha_t,   c = eta sigma_{t|s} sigma_s / sigma_t,
    z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_theta + c noise
  (eta = 1 has the ancestral step's mean and variance; 0 < eta < 1 interpolates between the two).

Denoiser: EDM's EGNN (``EDMDynamics``): embedding -> L equivariant blocks (attention-gated messages over the
per-molecule fully connected graph, coordinate update x_i += sum_j (x_i - x_j)/(|x_i - x_j| + 1) *
tanh(phi_x(m_ij)) * r) -> output; eps_x = x_out - x_in (re-centred), eps_h = h_out. The per-block range r is
coords_range / L by default; EDM's code passes the whole coords_range to every block (``EGNN`` builds its
``EquivariantBlock``s with ``coords_range``, not its ``coords_range_layer``), which ``coords_range_per_layer``
reproduces for imported EDM weights.
The time t/T and an optional per-molecule context (property conditioning) are concatenated to the node
features, as in EDM.

Molecules of different sizes share a batch PyG style (no padding to 29 atoms, no dense masks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from molequi import keys as K
from molequi.data.molecules import Molecule
from molequi.errors import ConfigError, InputError, MissingKeyError, ModelError
from molequi.models.generative.graph import (
    STRUCTURE_KEY,
    batch_info,
    centred_gaussian,
    fully_connected_edges,
    molecule_sizes,
    remove_mean,
    rng,
    size_histogram,
    sizes_to_batch,
    structure_of,
)
from molequi.models.generative.layers import EDMBlock
from molequi.models.generative.schedules import NoiseSchedule
from molequi.nn.heap import retained_heap
from molequi.nn.scatter import scatter_sum

QM9_ELEMENTS = [1, 6, 7, 8, 9]  # H C N O F, EDM's atom_decoder order
PARAMETERISATIONS = ("eps", "v", "x")


def eps_from_output(out: torch.Tensor, z: torch.Tensor, alpha, sigma, parameterisation: str) -> torch.Tensor:
    """The epsilon a denoiser output ``out`` stands for at z = alpha x + sigma eps (alpha^2 + sigma^2 = 1):
    eps itself; v = alpha eps - sigma x gives eps = sigma z + alpha v; x gives eps = (z - alpha x) / sigma.
    ``alpha``, ``sigma``: scalars or arrays broadcastable against ``out``."""
    if parameterisation == "eps":
        return out
    if parameterisation == "v":
        return sigma * z + alpha * out
    if parameterisation == "x":
        return (z - alpha * out) / sigma
    raise ConfigError(f"unknown parameterisation '{parameterisation}'; valid: {', '.join(PARAMETERISATIONS)}")


def x_from_output(out: torch.Tensor, z: torch.Tensor, alpha, sigma, parameterisation: str) -> torch.Tensor:
    """The clean-data prediction x_hat of a denoiser output: (z - sigma eps) / alpha; alpha z - sigma v; x."""
    if parameterisation == "eps":
        return (z - sigma * out) / alpha
    if parameterisation == "v":
        return alpha * z - sigma * out
    if parameterisation == "x":
        return out
    raise ConfigError(f"unknown parameterisation '{parameterisation}'; valid: {', '.join(PARAMETERISATIONS)}")


class EDMDynamics(nn.Module):
    """The EDM denoiser eps_theta(z_t, t): an EGNN over per-molecule fully connected graphs.

    forward(x (n, 3), h (n, F), t (B,) in [0, 1], batch (n,), edge_index (2, E), context (B, c) | None)
    -> (eps_x (n, 3) zero mean per molecule, eps_h (n, F)). E(3) equivariant in x, invariant in h.

    The same network serves GeoLDM's encoder and decoder (``molequi.models.generative.geoldm``, GeoLDM's
    ``EGNN_encoder_QM9`` / ``EGNN_decoder_QM9``): ``condition_time=False`` (no time feature; forward then takes
    t=None and ``num_graphs``), ``out_features`` (the output layer's width, returned whole; None: EDM's, the
    input width with the time and context columns cut off) and ``displacement=False`` (return the final
    coordinates, centred, instead of their change).
    """

    def __init__(self, in_features: int, hidden: int, layers: int, context_dim: int = 0,
                 coords_range: float = 15.0, normalization_factor: float = 1.0, attention: bool = True,
                 tanh: bool = True, norm_constant: float = 1.0, coords_range_per_layer: float | None = None,
                 condition_time: bool = True, out_features: int | None = None, displacement: bool = True):
        super().__init__()
        self.in_features, self.context_dim = in_features, context_dim
        self.condition_time, self.out_features, self.displacement = condition_time, out_features, displacement
        n_in = in_features + int(condition_time) + context_dim
        self.embedding = nn.Linear(n_in, hidden)
        self.blocks = nn.ModuleList([
            EDMBlock(hidden, coords_range=coords_range / layers if coords_range_per_layer is None
                     else coords_range_per_layer, normalization_factor=normalization_factor,
                     attention=attention, tanh=tanh, norm_constant=norm_constant) for _ in range(layers)])
        self.embedding_out = nn.Linear(hidden, n_in if out_features is None else out_features)

    def forward(self, x, h, t, batch, edge_index, context=None, num_graphs: int | None = None):
        num_graphs = t.shape[0] if t is not None else num_graphs
        feats = [h] + ([t.to(h.dtype)[batch].unsqueeze(-1)] if self.condition_time else [])
        if self.context_dim:
            if context is None or context.shape != (num_graphs, self.context_dim):
                raise ModelError(f"this model is conditioned on {self.context_dim} properties: give context "
                                 f"of shape ({num_graphs}, {self.context_dim})")
            feats.append(context.to(h.dtype)[batch])
        hh = self.embedding(torch.cat(feats, -1))
        src, dst = edge_index
        d0 = ((x[dst] - x[src]) ** 2).sum(-1, keepdim=True)  # initial squared distances, EDM's edge attr
        xx = x
        for block in self.blocks:
            hh, xx = block(hh, xx, edge_index, d0)
        out = self.embedding_out(hh)
        out = out[:, : self.in_features] if self.out_features is None else out
        # EDM zeroes a diverged velocity rather than propagating NaN; nan_to_num leaves finite values as they
        # are, so it runs unconditionally (no host sync to test for NaN first: one compiled graph)
        vel = torch.nan_to_num(remove_mean(xx - x if self.displacement else xx, batch, num_graphs), nan=0.0,
                               posinf=0.0, neginf=0.0)
        return vel, out


class EDM(nn.Module):
    """EDM generative model for molecules with hydrogens (QM9 recipe by default).

    Training: ``loss = model.training_loss(batch)`` for a PyG batch with ``numbers`` (n,), ``pos`` (n, 3) and
    optionally ``context`` (B, c). Sampling: ``model.sample(n_molecules, steps=..., method=...)`` returns a
    list of ``metrics.Molecule``. The histogram of molecule sizes seen in training (buffer ``size_counts``)
    is the distribution sizes are drawn from.
    """

    compile_target: ClassVar[str] = "dynamics"  # the denoiser, compiled with device_loss by trainer.compile

    @dataclass
    class Config:
        name: ClassVar[str] = "edm"  # registry name (molequi.models.MODELS), written into checkpoints
        r_max: ClassVar[float | None] = None  # no neighbour graph: the denoiser is fully connected
        elements: list[int] = field(default_factory=lambda: list(QM9_ELEMENTS))  # atom types, in this order
        hidden: int = 256  # EGNN features (EDM QM9: 256)
        layers: int = 9  # equivariant blocks (EDM QM9: 9)
        timesteps: int = 1000  # T
        schedule: str = "polynomial_2"  # polynomial_<p> or cosine
        precision: float = 1e-5  # s of the polynomial schedule
        include_charges: bool = True  # add Z / 10 as a feature (EDM's include_charges)
        norm_values: list[float] = field(default_factory=lambda: [1.0, 4.0, 10.0])  # x, one-hot, Z scales
        coords_range: float = 15.0  # total tanh range of coordinate updates (split over layers)
        coords_range_per_layer: float | None = None  # None: coords_range / layers; EDM's code: coords_range
        normalization_factor: float = 1.0  # message sums divided by this (EDM QM9: 1)
        attention: bool = True  # sigmoid-gated messages
        tanh: bool = True  # bounded coordinate updates
        norm_constant: float = 1.0  # C in the coordinate update's (x_i - x_j) / (|x_i - x_j| + C) (EDM QM9: 1)
        context_dim: int = 0  # number of conditioning properties (0: unconditional; follows condition_on)
        condition_on: list[str] = field(default_factory=list)  # QM9 targets (alpha, gap) or record fields
        max_atoms: int = 64  # largest molecule size the size histogram covers
        sampling_steps: int | None = None  # fixed step count of a distilled student (None: any)
        # training loss divisor: "edm" = (3 + F) x the largest molecule of the batch (EDM's padded size, the
        # default), "molecule" = (3 + F) x the molecule's own atom count
        loss_normalisation: str = "edm"
        # what the denoiser's output is read as: eps (EDM's), v = alpha_t eps - sigma_t x or x (the clean data);
        # v and x are for distilled students (molequi distill --parameterisation), eps_from_output converts
        parameterisation: str = "eps"

        def validate(self) -> None:
            if not self.elements:
                raise ConfigError("EDM needs at least one element in config.elements")
            if len(self.norm_values) != 3:
                raise ConfigError("norm_values must be [x_scale, one_hot_scale, charge_scale]")
            if self.loss_normalisation not in ("edm", "molecule"):
                raise ConfigError(f"loss_normalisation must be 'edm' (EDM's padded size) or 'molecule', got "
                                  f"'{self.loss_normalisation}'")
            if self.parameterisation not in PARAMETERISATIONS:
                raise ConfigError(f"unknown parameterisation '{self.parameterisation}'; valid: "
                                  f"{', '.join(PARAMETERISATIONS)}")

    def __init__(self, config: Config | None = None):
        super().__init__()
        cfg = config or EDM.Config()
        cfg.validate()
        if cfg.condition_on:
            if cfg.context_dim not in (0, len(cfg.condition_on)):
                raise ConfigError(f"context_dim {cfg.context_dim} does not match condition_on "
                                  f"{cfg.condition_on}; leave context_dim at 0 (it follows condition_on)")
            cfg = dataclasses.replace(cfg, context_dim=len(cfg.condition_on),
                                      condition_on=list(cfg.condition_on))
        self.config = cfg
        self.n_types = len(cfg.elements)
        self.n_features = self.n_types + int(cfg.include_charges)
        lookup = torch.full((119,), -1, dtype=torch.long)
        lookup[torch.tensor(cfg.elements)] = torch.arange(self.n_types)
        self.register_buffer("type_of_z", lookup, persistent=False)
        self.register_buffer("elements", torch.tensor(cfg.elements, dtype=torch.long), persistent=False)
        self.register_buffer("size_counts", torch.zeros(cfg.max_atoms + 1, dtype=torch.float64))
        if cfg.condition_on:  # raw property -> (value - shift) / scale, set from the first training batch
            c = len(cfg.condition_on)
            self.register_buffer("context_shift", torch.zeros(c, dtype=torch.float64))
            self.register_buffer("context_scale", torch.ones(c, dtype=torch.float64))
            self.register_buffer("context_ready", torch.tensor(False))
        self.schedule = NoiseSchedule(cfg.schedule, cfg.timesteps, cfg.precision)
        self.dynamics = EDMDynamics(self.latent_features(), cfg.hidden, cfg.layers, cfg.context_dim,
                                    cfg.coords_range, cfg.normalization_factor, cfg.attention, cfg.tanh,
                                    cfg.norm_constant, cfg.coords_range_per_layer)

    @classmethod
    def from_config(cls, cfg: Config, statistics=None) -> EDM:
        """Build from a ``Config``; ``statistics.elements`` replaces the default element list if given."""
        if statistics is not None and statistics.elements and cfg.elements == QM9_ELEMENTS:
            els = sorted(int(z) for z in statistics.elements)
            if not set(els) <= set(QM9_ELEMENTS):
                cfg = dataclasses.replace(cfg, elements=els)
        return cls(cfg)

    def latent_features(self) -> int:
        """Width of the features the diffusion runs on: the data features F here (GeoLDM: its latent_nf)."""
        return self.n_features

    # ------------------------------------------------------------------ encoding
    def check_elements(self, numbers: torch.Tensor) -> None:
        """ModelError naming the atomic numbers outside the model's elements (a host read of ``numbers``)."""
        types = self.type_of_z[numbers]
        if (types < 0).any():
            bad = sorted(set(numbers[types < 0].tolist()))
            raise ModelError(f"elements {bad} are not among this model's elements {self.config.elements}")

    def encode(self, numbers: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, num_graphs: int, *,
               checked: bool = False):
        """-> x (n, 3) centred and scaled, h (n, F) = [one_hot / 4, Z / 10]. ``checked``: the elements were
        checked already (``batch_structure``), so no host read here."""
        if not checked:
            self.check_elements(numbers)
        types = self.type_of_z[numbers]
        nx, nh, nc = self.config.norm_values
        x = remove_mean(pos, batch, num_graphs) / nx
        h = nn.functional.one_hot(types, self.n_types).to(pos.dtype) / nh
        if self.config.include_charges:
            h = torch.cat([h, numbers.to(pos.dtype).unsqueeze(-1) / nc], -1)
        return x, h

    def diffusion_data(self, batch, generator=None):
        """(x, h): the clean data the diffusion runs on for a batch of molecules (``encode``; GeoLDM: its
        latents). ``molequi distill`` noises these."""
        b, num_graphs = self._batch_info(batch)
        return self.encode(batch[K.NUMBERS], batch[K.POS], b, num_graphs)

    def decode(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (numbers (n,), positions (n, 3) Å): type = argmax of the one-hot block."""
        types = h[:, : self.n_types].argmax(-1)
        return self.elements[types], x * self.config.norm_values[0]

    # ------------------------------------------------------------------ training
    _batch_info = staticmethod(batch_info)

    def record_sizes(self, batch: torch.Tensor, num_graphs: int) -> None:
        """Add the sizes of this batch's molecules to the size histogram (training only)."""
        counts, max_size = size_histogram(batch, num_graphs, self.config.max_atoms)
        self.check_size(max_size)
        self.size_counts += counts.to(self.size_counts)

    def check_size(self, max_size: int) -> None:
        """ModelError if a training molecule (``max_size`` atoms, a Python int) exceeds the size histogram."""
        if max_size > self.config.max_atoms:
            raise ModelError(f"molecule with {max_size} atoms exceeds max_atoms={self.config.max_atoms}; raise "
                             "model.max_atoms")

    def batch_structure(self, batch) -> dict:
        """The integer structure of a batch, from its batch vector and atomic numbers only: the fully connected
        ``edge_index`` (2, E), the histogram of its molecule sizes ``size_counts`` (max_atoms + 1,) and the
        largest size ``max_size`` (a Python int); ModelError for elements outside the model's. ``prepare_batch``
        computes it on the CPU batch before the device transfer, so the training step has no host sync."""
        b, num_graphs = self._batch_info(batch)
        self.check_elements(batch[K.NUMBERS])
        counts, max_size = size_histogram(b, num_graphs, self.config.max_atoms)
        return {"edge_index": fully_connected_edges(b, num_graphs), "size_counts": counts, "max_size": max_size}

    def prepare_batch(self, batch):
        """``batch`` with its ``batch_structure`` stored in it (``graph.STRUCTURE_KEY``): the trainer calls this on
        the CPU batch before it moves to the device (``TaskModule.on_before_batch_transfer``)."""
        batch[STRUCTURE_KEY] = self.batch_structure(batch)
        return batch

    # ------------------------------------------------------------------ conditioning
    def _property(self, batch, name: str, num_graphs: int) -> torch.Tensor:
        """(B,) property ``name`` of a batch: a record field, or a QM9 target (a column of ``y``)."""
        if name in batch:
            return batch[name].reshape(num_graphs, -1)[:, 0].double()
        from molequi.data.qm9 import TARGETS, target_index

        if name in TARGETS and "y" in batch:
            return batch["y"].reshape(num_graphs, -1)[:, target_index(name)].double()
        raise MissingKeyError(f"the batch has no property '{name}' to condition on",
                              hint="use QM9 records (data.name: qm9, whose y holds the 19 targets) or a "
                                   "dataset that stores the field")

    def batch_context(self, batch) -> torch.Tensor | None:
        """(B, context_dim) conditioning of a training batch as the denoiser sees it, None if unconditional.
        With ``condition_on`` the properties are read and normalised by EDM's mean and mean absolute deviation
        (set by the first training batch); otherwise ``batch['context']`` is used as it is."""
        return self.context_of(self.raw_context(batch), batch[K.POS].dtype)

    def raw_context(self, batch) -> torch.Tensor | None:
        """The batch's conditioning as stored in it: (B, context_dim) properties, ``batch['context']`` or None."""
        if not self.config.context_dim:
            return None
        if not self.config.condition_on:
            return batch["context"]
        _, num_graphs = self._batch_info(batch)
        return torch.stack([self._property(batch, k, num_graphs) for k in self.config.condition_on], -1)

    def context_of(self, raw: torch.Tensor | None, dtype) -> torch.Tensor | None:
        """``raw_context`` -> what the denoiser sees. In training the first batch sets the normalisation, without
        a host read (``torch.where`` on ``context_ready``), and the result is not checked; otherwise
        ``normalise_context``."""
        if raw is None or not self.config.condition_on:
            return raw
        if not self.training:
            return self.normalise_context(raw).to(dtype)
        with torch.no_grad():
            ready = self.context_ready
            mean = raw.mean(0)
            mad = (raw - mean).abs().mean(0)
            self.context_shift.copy_(torch.where(ready, self.context_shift, mean))
            self.context_scale.copy_(torch.where(ready, self.context_scale,
                                                 torch.where(mad > 1e-8, mad, torch.ones_like(mad))))
            self.context_ready.fill_(True)
        return ((raw.double() - self.context_shift) / self.context_scale).to(dtype)

    def normalise_context(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw property values (B, context_dim) -> what the denoiser sees (identity without condition_on)."""
        if not self.config.condition_on:
            return raw
        raw = torch.as_tensor(raw)
        if raw.ndim != 2 or raw.shape[1] != self.config.context_dim:
            c = self.config.context_dim
            raise ModelError(f"this model is conditioned on {self.config.condition_on}: give one value of "
                             f"each per molecule, shape (n, {c}), got {tuple(raw.shape)}")
        if not bool(self.context_ready):
            raise ModelError("this conditioned model was never trained: its property normalisation is unset "
                             "(train it, or import it with context_norms / molequi import edm --context-norm)")
        dtype = raw.dtype if raw.is_floating_point() else torch.get_default_dtype()
        return ((raw.double() - self.context_shift) / self.context_scale).to(dtype)

    def noised(self, x, h, t_int, batch, num_graphs, generator=None):
        """Sample z_t = alpha_t [x, h] + sigma_t eps; returns (z_x, z_h, eps_x, eps_h)."""
        alpha, sigma = self.schedule.alpha_sigma(t_int, x.dtype)
        a, s = alpha[batch].unsqueeze(-1), sigma[batch].unsqueeze(-1)
        eps_x = centred_gaussian(batch, num_graphs, dtype=x.dtype, device=x.device, generator=generator)
        eps_h = torch.randn(h.shape, dtype=h.dtype, device=h.device, **rng(generator))
        return a * x + s * eps_x, a * h + s * eps_h, eps_x, eps_h

    def training_loss(self, batch, generator=None) -> tuple[torch.Tensor, dict]:
        """EDM l2 loss: mean over molecules of ||eps - eps_theta||^2 / ((3 + F) n), n the batch's largest
        molecule (``loss_normalisation="edm"``, the default) or the molecule's own size ("molecule"); also
        logs its x and h parts (per molecule's own dimensions). The host part (``loss_inputs``) reads the
        batch; the device part (``device_loss``) has no host sync (compiled by trainer.compile)."""
        self.require_eps("training")
        # the compiled device part (trainer.compile) draws from the global random state: no generator in its graph
        compiled = getattr(self, "_compiled_loss", None) if generator is None else None
        device_loss = compiled or self.device_loss
        return device_loss(self.loss_inputs(batch), generator)

    def loss_inputs(self, batch) -> dict:
        """What ``device_loss`` needs of a batch: its tensors, its ``batch_structure`` (``prepare_batch``'s, else
        computed here, with host syncs on a GPU) and its raw conditioning; in training, ModelError for a molecule
        larger than max_atoms (a Python int: no host sync)."""
        b, num_graphs = self._batch_info(batch)
        structure = structure_of(batch, self.batch_structure)
        if self.training:
            self.check_size(structure["max_size"])
        return {"numbers": batch[K.NUMBERS], "pos": batch[K.POS], "batch": b, "num_graphs": num_graphs,
                "edge_index": structure["edge_index"], "size_counts": structure["size_counts"],
                "context": self.raw_context(batch)}

    def device_loss(self, inputs: dict, generator=None) -> tuple[torch.Tensor, dict]:
        """The device part of ``training_loss`` on ``loss_inputs``: size histogram (training), noise, denoiser,
        loss. No ``.item()``, no data-dependent size: one ``torch.compile(fullgraph=True)`` graph."""
        b, num_graphs = inputs["batch"], inputs["num_graphs"]
        if self.training:
            self.size_counts += inputs["size_counts"].to(self.size_counts)
        x, h = self.encode(inputs["numbers"], inputs["pos"], b, num_graphs, checked=True)
        t_int = torch.randint(0, self.config.timesteps + 1, (num_graphs,), device=x.device, **rng(generator))
        z_x, z_h, eps_x, eps_h = self.noised(x, h, t_int, b, num_graphs, generator)
        ctx = self.context_of(inputs["context"], x.dtype)
        pred_x, pred_h = self.dynamics(z_x, z_h, t_int.to(x.dtype) / self.config.timesteps, b, inputs["edge_index"],
                                       ctx)
        ex = scatter_sum(((pred_x - eps_x) ** 2).sum(-1), b, num_graphs)
        eh = scatter_sum(((pred_h - eps_h) ** 2).sum(-1), b, num_graphs)
        sizes = molecule_sizes(b, num_graphs).to(x.dtype)
        n = sizes.max() if self.config.loss_normalisation == "edm" else sizes
        loss = ((ex + eh) / ((3 + self.n_features) * n)).mean()
        return loss, {"loss_x": (ex / (3 * sizes)).mean().detach(),
                      "loss_h": (eh / (self.n_features * sizes)).mean().detach()}

    def forward(self, batch) -> dict[str, torch.Tensor]:
        loss, logs = self.training_loss(batch)
        return {"loss": loss, **logs}

    # ------------------------------------------------------------------ likelihood
    def log_size_probability(self, sizes: torch.Tensor) -> torch.Tensor:
        """log p(N) (B,) from the training histogram of molecule sizes (EDM's ``DistributionNodes``)."""
        total = float(self.size_counts.sum())
        if total <= 0:
            raise ModelError("this model has no molecule-size histogram (it was never trained), so log p(N) "
                             "is undefined; train it or import the histogram with its weights")
        if int(sizes.max()) > self.config.max_atoms:
            raise ModelError(f"a molecule of {int(sizes.max())} atoms lies beyond this model's size histogram "
                             f"(max_atoms={self.config.max_atoms})")
        counts = self.size_counts[sizes.long()]
        if (counts <= 0).any():
            unseen = sorted(set(sizes[counts <= 0].tolist()))
            raise ModelError(f"molecule sizes {unseen} never occurred in this model's training set: "
                             "log p(N) = -inf")
        return torch.log(counts / total)

    def likelihood_terms(self, batch, generator: torch.Generator | None = None, *,
                         t_int: torch.Tensor | None = None, noise: tuple | None = None,
                         noise0: tuple | None = None, context: torch.Tensor | None = None,
                         include_size: bool = True) -> dict[str, torch.Tensor]:
        """The terms of EDM's variational bound on -log p(x, h, N), per molecule (B,), in nats.

        EDM's ``EnVariationalDiffusion.forward`` in eval mode (``compute_loss(t0_always=True)``) minus log p(N)
        as in EDM's ``compute_loss_and_nll``. With F features, nx, nh, nc the ``norm_values``, d = (N - 1) 3
        (positions live on the zero centre-of-mass subspace), gamma_t the schedule and s = t - 1:

        - ``kl_prior``: KL(N(alpha_T [x, h], sigma_T^2) || N(0, I)) on d + N F dimensions
          = d log(1/sigma_T) + (d sigma_T^2 + |alpha_T x|^2)/2 - d/2 + sum_h [log(1/sigma_T) + (sigma_T^2 +
          alpha_T^2 h^2)/2 - 1/2]
        - ``diffusion``: T * 1/2 (exp(gamma_t - gamma_s) - 1) ||eps - eps_theta(z_t, t)||^2, t ~ U{1..T}
          (one draw per molecule: an unbiased estimate of the sum of the T terms L_1..L_T)
        - ``neg_log_constants``: d (gamma_0 / 2 + log(2 pi) / 2), the normalisers of the Gaussian p(x | z_0)
          whose standard deviation is sigma_0 / alpha_0 = exp(gamma_0 / 2)
        - ``loss_0``: -log p(x, h | z_0) without those constants, from a second draw z_0:
          ||eps_0,x - eps_theta,x(z_0, 0)||^2 / 2 minus the log-probabilities of the integer charge Z and the
          atom type under the discretised Gaussians: Z: log[Phi((Z - nc z_Z + 1/2) / (nc sigma_0)) -
          Phi((Z - nc z_Z - 1/2) / (nc sigma_0)) + 1e-10]; type k: the same integral over [1/2, 3/2] around
          nh z_k with width nh sigma_0, normalised over the types by a log-sum-exp
        - ``delta_log_px``: -d log(nx), the volume change of scaling positions by 1/nx
        - ``log_pN``: log p(N) from the training size histogram (0 when ``include_size`` is False)
        - ``nll`` = kl_prior + diffusion + neg_log_constants + loss_0 - delta_log_px - log_pN

        ``t_int`` (B,) in 1..T, ``noise`` = (eps_x (n, 3) zero mean per molecule, eps_h (n, F)) at t and
        ``noise0`` the same at t = 0 fix the random draws (else they come from ``generator``, in the order
        t, eps_x, eps_h, eps_0,x, eps_0,h). ``context``: the denoiser's (normalised) conditioning (B, c);
        by default read from the batch as in training.
        """
        self.require_eps("the likelihood bound")
        b, num_graphs = self._batch_info(batch)
        x, h = self.encode(batch[K.NUMBERS], batch[K.POS], b, num_graphs)
        dt, dev = x.dtype, x.device
        nx, nh, nc = self.config.norm_values
        sizes = torch.bincount(b, minlength=num_graphs)
        dof = ((sizes - 1) * 3).to(dt)
        edge_index = fully_connected_edges(b, num_graphs)
        ctx = self.batch_context(batch) if context is None else context
        coeffs = self._vlb_coeffs(dt, dev)
        draw = self._vlb_draw(b, num_graphs, h.shape[1], dt, dev, generator)

        def per_molecule(v):  # (n, ...) -> (B,)
            return self._vlb_per_molecule(v, b, num_graphs)

        kl_prior, diffusion, t_int, neg_log_constants = self._vlb_diffusion_terms(
            x, h, b, num_graphs, edge_index, ctx, t_int, noise, generator)
        # p(x, h | z_0): the discretised likelihood of types and charges
        zero = torch.zeros(num_graphs, dtype=torch.long, device=dev)
        g_0, a_0, s_0 = coeffs(zero)
        eps0_x, eps0_h = draw(noise0)
        z0_x = a_0[b, None] * x + s_0[b, None] * eps0_x
        z0_h = a_0[b, None] * h + s_0[b, None] * eps0_h
        pred0_x, _ = self.dynamics(z0_x, z0_h, zero.to(dt), b, edge_index, ctx)
        log_p_x = -0.5 * per_molecule((pred0_x - eps0_x) ** 2)
        sig0 = s_0[b, None]

        def log_bin(centred, width):  # log of the N(0, width) mass on [centred - 1/2, centred + 1/2]
            return torch.log(_std_normal_cdf((centred + 0.5) / width) - _std_normal_cdf((centred - 0.5) / width)
                             + 1e-10)

        k = self.n_types
        log_p_h = torch.zeros(num_graphs, dtype=dt, device=dev)
        if self.config.include_charges:
            charge = torch.round(h[:, k:] * nc)
            log_p_h = log_p_h + per_molecule(log_bin(charge - z0_h[:, k:] * nc, sig0 * nc))
        log_unnorm = log_bin(z0_h[:, :k] * nh - 1, sig0 * nh)
        log_prob = log_unnorm - torch.logsumexp(log_unnorm, -1, keepdim=True)
        log_p_h = log_p_h + per_molecule(log_prob * (h[:, :k] * nh))
        loss_0 = -(log_p_x + log_p_h)
        delta_log_px = -dof * float(np.log(nx))
        log_pN = self.log_size_probability(sizes).to(dt) if include_size else torch.zeros_like(dof)
        nll = kl_prior + diffusion + neg_log_constants + loss_0 - delta_log_px - log_pN
        return {"nll": nll, "kl_prior": kl_prior, "diffusion": diffusion, "neg_log_constants": neg_log_constants,
                "loss_0": loss_0, "delta_log_px": delta_log_px, "log_pN": log_pN, "t": t_int}

    @staticmethod
    def _vlb_per_molecule(v, b, num_graphs):
        """(n, ...) node values -> (B,) sums per molecule."""
        return scatter_sum(v.reshape(v.shape[0], -1).sum(-1), b, num_graphs)

    def _vlb_coeffs(self, dt, dev):
        """t (B,) integer steps -> (gamma_t, alpha_t, sigma_t) (B,) in ``dt`` (from the float64 schedule)."""
        def coeffs(t):
            g = self.schedule.gamma(t.to(dev).long(), torch.float64)
            return g.to(dt), torch.sigmoid(-g).sqrt().to(dt), torch.sigmoid(g).sqrt().to(dt)
        return coeffs

    @staticmethod
    def _vlb_draw(b, num_graphs, width, dt, dev, generator):
        """given (eps_x, eps_h) | None -> that noise, or a fresh draw (zero-mean eps_x (n, 3), eps_h (n, width))."""
        def draw(given):
            if given is not None:
                return given[0].to(dt), given[1].to(dt)
            return (centred_gaussian(b, num_graphs, dtype=dt, device=dev, generator=generator),
                    torch.randn(b.numel(), width, dtype=dt, device=dev, **rng(generator)))
        return draw

    def _vlb_diffusion_terms(self, x, h, b, num_graphs, edge_index, ctx, t_int, noise, generator):
        """The prior KL at T, the diffusion term T L_t (t ~ U{1..T} unless given) and the Gaussian constants
        d (gamma_0 + log 2 pi) / 2 of p(x | z_0) (d = (N - 1) 3) of the bound on (x, h) that ``likelihood_terms``
        documents; GeoLDM's bound takes the same three terms on its latents. -> (kl_prior, diffusion, t_int,
        neg_log_constants), each (B,)."""
        dt, dev, T = x.dtype, x.device, self.config.timesteps
        coeffs, draw = self._vlb_coeffs(dt, dev), self._vlb_draw(b, num_graphs, h.shape[1], dt, dev, generator)
        dof = ((torch.bincount(b, minlength=num_graphs) - 1) * 3).to(dt)

        def per_molecule(v):
            return self._vlb_per_molecule(v, b, num_graphs)

        # prior KL at T
        _, a_T, s_T = coeffs(torch.full((num_graphs,), T))
        kl_h = per_molecule(-torch.log(s_T)[b, None] + 0.5 * (s_T[b, None] ** 2 + (a_T[b, None] * h) ** 2) - 0.5)
        kl_x = dof * -torch.log(s_T) + 0.5 * (dof * s_T ** 2 + per_molecule((a_T[b, None] * x) ** 2)) - 0.5 * dof
        # diffusion term L_t, t ~ U{1..T}, weighted by T
        if t_int is None:
            t_int = torch.randint(1, T + 1, (num_graphs,), device=dev, generator=generator)
        t_int = torch.as_tensor(t_int, device=dev).long().reshape(num_graphs)
        if int(t_int.min()) < 1 or int(t_int.max()) > T:
            raise InputError(f"t_int must lie in 1..{T}")
        g_t, a_t, s_t = coeffs(t_int)
        g_s = coeffs(t_int - 1)[0]
        eps_x, eps_h = draw(noise)
        z_x = a_t[b, None] * x + s_t[b, None] * eps_x
        z_h = a_t[b, None] * h + s_t[b, None] * eps_h
        pred_x, pred_h = self.dynamics(z_x, z_h, t_int.to(dt) / T, b, edge_index, ctx)
        error = per_molecule((pred_x - eps_x) ** 2) + per_molecule((pred_h - eps_h) ** 2)
        diffusion = T * 0.5 * torch.expm1(g_t - g_s) * error
        g_0 = coeffs(torch.zeros(num_graphs, dtype=torch.long, device=dev))[0]
        neg_log_constants = dof * (0.5 * g_0 + 0.5 * np.log(2 * np.pi))
        return kl_x + kl_h, diffusion, t_int, neg_log_constants

    def log_likelihood(self, batch, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """(B,) EDM's variational lower bound on log p(x, h, N) per molecule, in nats (-``nll`` of
        ``likelihood_terms``, which documents the terms and the keyword arguments fixing the noise). One
        Monte-Carlo draw of t and the noise per molecule: average over molecules (or repeats) as EDM does."""
        return -self.likelihood_terms(batch, generator, **kwargs)["nll"]

    @torch.no_grad()
    def dataset_nll(self, molecules, *, batch_size: int = 64, generator: torch.Generator | None = None,
                    context: torch.Tensor | None = None) -> dict[str, float]:
        """EDM's test metric on a set of molecules: the mean over molecules of the variational bound on
        -log p(x, h, N) (nats per molecule, one draw of t and noise each), its standard error, and bits per
        dimension (sum of nll / (sum of ``dimensions`` ln 2)).

        molecules: sequence of (atomic numbers (n,), positions (n, 3) Å); context: (M, c) normalised
        conditioning of a conditioned model, in the same order."""
        from torch_geometric.data import Batch, Data

        p = next(self.parameters())
        was_training = self.training
        self.eval()
        nll, dims = [], []
        for start in range(0, len(molecules), batch_size):
            chunk = molecules[start: start + batch_size]
            batch = Batch.from_data_list([Data(numbers=torch.as_tensor(np.asarray(z), dtype=torch.long),
                                               pos=torch.as_tensor(np.asarray(x), dtype=p.dtype))
                                          for z, x in chunk]).to(p.device)
            ctx = None if context is None else context[start: start + batch_size].to(p.device, p.dtype)
            nll.append(self.likelihood_terms(batch, generator, context=ctx)["nll"].double().cpu())
            dims.append(self.dimensions(torch.tensor([len(z) for z, _ in chunk])).double())
        self.train(was_training)
        if not nll:
            raise InputError("no molecules to evaluate")
        nll_all, dims_all = torch.cat(nll), torch.cat(dims)
        stderr = float(nll_all.std() / np.sqrt(len(nll_all))) if len(nll_all) > 1 else float("nan")
        return {"nll": float(nll_all.mean()), "nll_stderr": stderr,
                "bits_per_dim": float(nll_all.sum() / (dims_all.sum() * np.log(2.0))), "molecules": len(nll_all)}

    def dimensions(self, sizes: torch.Tensor) -> torch.Tensor:
        """Degrees of freedom of a molecule of N atoms: (N - 1) 3 + N F (zero-mean positions, features)."""
        return (sizes - 1) * 3 + sizes * self.n_features

    # ------------------------------------------------------------------ sampling
    def time_grid(self, steps: int | None) -> list[int]:
        """Integer steps T = t_0 > t_1 > ... > t_S = 0 of an S-step sampler: round(linspace(T, 0, S + 1))."""
        T = self.config.timesteps
        if steps is None:
            steps = self.config.sampling_steps or T
        if steps < 1 or steps > T:
            raise InputError(f"steps must lie in 1..{T}, got {steps}")
        grid = np.round(np.linspace(T, 0, steps + 1)).astype(int)
        return [int(g) for g in grid]

    def sample_sizes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) molecule sizes drawn from the training histogram."""
        if float(self.size_counts.sum()) <= 0:
            raise ModelError("this model has no molecule-size histogram (it was never trained); give sizes=")
        p = self.size_counts / self.size_counts.sum()
        return torch.multinomial(p.float(), n, replacement=True, generator=generator)

    def denoiser_output(self, z_x, z_h, t_int, batch, edge_index, num_graphs, context=None):
        """The denoiser's raw output at the integer step ``t_int`` (an int, or a (B,) long tensor per molecule),
        read as ``config.parameterisation`` (eps, v or x)."""
        if torch.is_tensor(t_int):
            t = (t_int.double() / self.config.timesteps).to(z_x.dtype)
        else:
            t = torch.full((num_graphs,), float(t_int) / self.config.timesteps, dtype=z_x.dtype,
                           device=z_x.device)
        return self.dynamics(z_x, z_h, t, batch, edge_index, context)

    def epsilon(self, z_x, z_h, t_int, batch, edge_index, num_graphs, context=None):
        """eps_theta(z_t, t) at the integer step ``t_int``: an int, or a (B,) long tensor (per molecule); a v-
        or x-parameterised denoiser's output is converted (``eps_from_output``)."""
        out_x, out_h = self.denoiser_output(z_x, z_h, t_int, batch, edge_index, num_graphs, context)
        par = self.config.parameterisation
        if par == "eps":
            return out_x, out_h
        _, a_t, s_t = self._coeffs(t_int, None, z_x.device)
        a, s = self.per_node(a_t, batch, z_x.dtype), self.per_node(s_t, batch, z_x.dtype)
        return eps_from_output(out_x, z_x, a, s, par), eps_from_output(out_h, z_h, a, s, par)

    def require_eps(self, what: str) -> None:
        """Training and the likelihood bound read the denoiser as epsilon: refuse v / x students by name."""
        if self.config.parameterisation != "eps":
            raise ModelError(f"{what} needs an epsilon-parameterised model; this one is a "
                             f"{self.config.parameterisation}-parameterised distilled student (sample it with "
                             "molequi generate, or distil it further with molequi distill)")

    def _coeffs(self, t, dtype, device):
        """(gamma_t, alpha_t, sigma_t) in float64: shape (1,) for an int step, (B,) for (B,) steps."""
        t = t if torch.is_tensor(t) else torch.tensor([t], device=device)
        g = self.schedule.gamma(t, torch.float64)
        return g, torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()

    @staticmethod
    def per_node(c: torch.Tensor, batch: torch.Tensor, dtype) -> torch.Tensor:
        """A schedule coefficient in ``dtype``, broadcastable against (n, d) node arrays: a (1,) coefficient
        as is, a (B,) per-molecule one gathered to (n, 1)."""
        c = c.to(dtype)
        return c if c.numel() == 1 else c[batch].unsqueeze(-1)

    @staticmethod
    def transition(g_t: torch.Tensor, g_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_{t|s}, sigma^2_{t|s}) of q(z_t | z_s) = N(alpha_{t|s} z_s, sigma^2_{t|s}), s < t, from the
        gammas of ``_coeffs``: alpha_{t|s} = alpha_t / alpha_s and sigma^2_{t|s} = 1 - alpha_t^2 / alpha_s^2
        (variance preserving), in the log domain for accuracy."""
        a_ts = torch.exp(0.5 * (nn.functional.logsigmoid(-g_t) - nn.functional.logsigmoid(-g_s)))
        return a_ts, -torch.expm1(nn.functional.softplus(g_s) - nn.functional.softplus(g_t))

    def step(self, z_x, z_h, t, s, batch, edge_index, num_graphs, *, method: str = "ancestral",
             context=None, generator=None, eta: float = 0.0):
        """One denoising step z_t -> z_s (s < t) with the ancestral (stochastic) or DDIM rule (deterministic
        for ``eta`` = 0, the default; ``eta`` in (0, 1] adds that fraction of the ancestral step's noise).

        ``t`` and ``s`` are ints (the whole batch) or (B,) long tensors (a step per molecule)."""
        eps_x, eps_h = self.epsilon(z_x, z_h, t, batch, edge_index, num_graphs, context)
        g_t, a_t, s_t = self._coeffs(t, z_x.dtype, z_x.device)
        g_s, a_s, s_s = self._coeffs(s, z_x.dtype, z_x.device)
        a_ts, sigma2_ts = self.transition(g_t, g_s)
        if method == "ddim":
            if not 0.0 <= eta <= 1.0:
                raise InputError(f"DDIM eta must lie in [0, 1], got {eta}")
            c = eta * sigma2_ts.sqrt() * s_s / s_t  # the noise's standard deviation
            c_x = self.per_node(a_s / a_t, batch, z_x.dtype)
            direction = s_s if eta == 0 else (s_s ** 2 - c ** 2).clamp(min=0).sqrt()
            c_e = self.per_node(direction - a_s * s_t / a_t, batch, z_x.dtype)
            z_x = c_x * z_x + c_e * eps_x
            z_h = c_x * z_h + c_e * eps_h
            if eta > 0:
                cn = self.per_node(c, batch, z_x.dtype)
                z_x = z_x + cn * centred_gaussian(batch, num_graphs, dtype=z_x.dtype, device=z_x.device,
                                                  generator=generator)
                z_h = z_h + cn * torch.randn(z_h.shape, dtype=z_h.dtype, device=z_h.device, generator=generator)
        elif method == "ancestral":
            mu_c = self.per_node(sigma2_ts / a_ts / s_t, batch, z_x.dtype)
            std = self.per_node(sigma2_ts.sqrt() * s_s / s_t, batch, z_x.dtype)
            inv = self.per_node(1.0 / a_ts, batch, z_x.dtype)
            nx = centred_gaussian(batch, num_graphs, dtype=z_x.dtype, device=z_x.device, generator=generator)
            nh = torch.randn(z_h.shape, dtype=z_h.dtype, device=z_h.device, generator=generator)
            z_x = inv * z_x - mu_c * eps_x + std * nx
            z_h = inv * z_h - mu_c * eps_h + std * nh
        else:
            raise InputError(f"unknown sampling method '{method}'; use 'ancestral' or 'ddim'")
        return remove_mean(z_x, batch, num_graphs), z_h

    def final_prediction(self, z_x, z_h, batch, edge_index, num_graphs, context=None):
        """x_hat = (z_0 - sigma_0 eps) / alpha_0 at t = 0 (EDM's mean of p(x | z_0), without its tiny noise)."""
        eps_x, eps_h = self.epsilon(z_x, z_h, 0, batch, edge_index, num_graphs, context)
        _, a0, s0 = self._coeffs(0, z_x.dtype, z_x.device)
        a0, s0 = a0.to(z_x.dtype), s0.to(z_x.dtype)
        return (z_x - s0 * eps_x) / a0, (z_h - s0 * eps_h) / a0

    @torch.no_grad()
    @retained_heap()  # no_grad frees every intermediate at once: keep the pages (see molequi.nn.heap)
    def sample_batch(self, sizes: torch.Tensor, *, steps: int | None = None, method: str = "ancestral",
                     context: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     eta: float = 0.0):
        """Generate one batch: sizes (B,) -> (numbers (n,), positions (n, 3) Å, batch (n,)). ``eta``: DDIM's
        noise fraction (``method="ddim"`` only)."""
        p = next(self.parameters())
        sizes = torch.as_tensor(sizes, dtype=torch.long, device=p.device)
        num_graphs = len(sizes)
        if context is not None:
            context = self.normalise_context(torch.as_tensor(context, dtype=p.dtype, device=p.device))
        batch = sizes_to_batch(sizes)
        edge_index = fully_connected_edges(batch, num_graphs)
        z_x = centred_gaussian(batch, num_graphs, dtype=p.dtype, device=p.device, generator=generator)
        z_h = torch.randn(batch.numel(), self.latent_features(), dtype=p.dtype, device=p.device,
                          generator=generator)
        grid = self.time_grid(steps)
        for t, s in zip(grid[:-1], grid[1:]):
            z_x, z_h = self.step(z_x, z_h, t, s, batch, edge_index, num_graphs, method=method, context=context,
                                 generator=generator, eta=eta)
        x, h = self.final_prediction(z_x, z_h, batch, edge_index, num_graphs, context)
        numbers, pos = self.decode_sample(x, h, batch, edge_index, num_graphs, context, generator)
        return numbers, pos, batch

    def decode_sample(self, x, h, batch, edge_index, num_graphs, context=None, generator=None):
        """The sampler's final (x, h) -> (numbers (n,), positions (n, 3) Å): ``decode`` (GeoLDM: its decoder)."""
        return self.decode(x, h)

    def sample(self, n: int, *, steps: int | None = None, method: str = "ancestral", batch_size: int = 64,
               sizes: torch.Tensor | None = None, context: torch.Tensor | None = None,
               generator: torch.Generator | None = None, eta: float = 0.0) -> list[Molecule]:
        """Generate ``n`` molecules (sizes from the training histogram unless given) as ``Molecule`` objects.
        ``context`` (n, context_dim): the properties to condition on, in their own units (a model with
        ``condition_on`` normalises them as in training)."""
        if self.config.context_dim and context is None:
            names = self.config.condition_on or [f"{self.config.context_dim} properties"]
            raise ModelError(f"this model is conditioned on {', '.join(names)}: give context= ({n}, "
                             f"{self.config.context_dim}) values (molequi generate --context)")
        was_training = self.training
        self.eval()
        sizes = self.sample_sizes(n, generator) if sizes is None else torch.as_tensor(sizes)
        out: list[Molecule] = []
        for start in range(0, n, batch_size):
            sz = sizes[start: start + batch_size]
            ctx = None if context is None else context[start: start + batch_size]
            numbers, pos, b = self.sample_batch(sz, steps=steps, method=method, context=ctx, generator=generator,
                                                eta=eta)
            numbers, pos, b = numbers.cpu().numpy(), pos.double().cpu().numpy(), b.cpu().numpy()
            for k in range(len(sz)):
                sel = b == k
                out.append(Molecule(numbers[sel], pos[sel]))
        self.train(was_training)
        return out

    def extra_repr(self) -> str:
        c = self.config
        return f"elements={c.elements}, T={c.timesteps}, schedule={c.schedule}, steps={c.sampling_steps}"


def bits_per_dimension(nll: torch.Tensor, dimensions: torch.Tensor) -> torch.Tensor:
    """nll (nats per molecule) -> bits per dimension: nll / (dimensions ln 2), with ``dimensions`` from
    ``EDM.dimensions`` ((N - 1) 3 + N F). Averages should weigh by dimensions: sum(nll) / (sum(dims) ln 2)."""
    return nll / (dimensions.to(nll.dtype) * float(np.log(2.0)))


def _std_normal_cdf(v: torch.Tensor) -> torch.Tensor:
    """Phi(v) = (1 + erf(v / sqrt 2)) / 2, the form EDM evaluates (so the bound matches to rounding)."""
    return 0.5 * (1.0 + torch.erf(v / np.sqrt(2.0)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["EDM", "EDMDynamics", "QM9_ELEMENTS", "bits_per_dimension", "count_parameters"]
