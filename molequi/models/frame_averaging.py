"""Frame averaging (Puny et al., ICLR 2022; FAENet, Duval et al., ICML 2023): symmetry for ANY backbone.

A backbone phi(data, pos, cell) -> per-atom energies (n,) need not be invariant (ours below reads raw vector
components). For each structure, PCA gives a frame from its centred positions:

    c = (1/n) sum_i x_i,    A = (1/n) sum_i w_i (x_i - c)(x_i - c)^T = U diag(lambda) U^T   (lambda ascending)

The eigenvectors are defined up to sign, so the frame set is F = {U diag(s) : s in {+-1}^3}: all 8 give
O(3) invariance (reflections included); the 4 with det = +1 give SE(3) invariance. In each frame the backbone
sees x_i' = (x_i - c) U_s and cell' = cell U_s (rows are vectors), and

    E_i = (1/|F|) sum_{s in F} phi(data, X U_s, cell U_s)_i

is exactly invariant when every frame is averaged: a rotation R maps U to R U up to signs, which only
permutes F. Forces and stress are -dE/dpos / the strain derivative by ``molequi.response`` *through* the
frame construction (the centroid, the covariance and its eigenvectors are differentiated), so they are
-dE/dx wherever the frame is unique (see below for where it is not) and rotate as vectors. In training ``frames_train="random"`` uses one random frame of F per
structure and step (FAENet's stochastic frame averaging), which is cheaper and invariant only in expectation.

2D variant (slabs, OC20): the frame acts only in the surface plane: PCA of the (x, y) coordinates,
U = blockdiag(U_2, 1), frames s in {+-1}^2 (4, or 2 proper); z is kept, so the model is invariant to
rotations about z and in-plane reflections, which is the symmetry of a slab with a fixed surface normal.

Degenerate eigenvalues. When two eigenvalues coincide (symmetric molecules: methane, benzene; many cubic
cells) the eigenvectors inside that eigenspace are arbitrary and averaging over signs no longer gives
invariance. What is done about it::

  * tie-break by chemistry: with ``weighting="z"`` (default) the covariance is weighted by w_i = Z_i / <Z>,
    which lifts degeneracies of the geometry alone when the atoms differ (still exactly equivariant);
  * gradients stay finite: the eigenvector derivative's 1 / (lambda_j - lambda_i) is set to 0 for
    relative gaps below ``degeneracy_tol`` (``SafeEigh``), so forces never become inf/NaN;
  * the smallest relative gap of the last call is kept in ``model.last_min_gap`` and a warning is issued
    once per model when it falls below ``degeneracy_tol``: results are then not exactly invariant (a known
    limitation of PCA frames, shared by FAENet). Truly symmetric structures cannot be fixed by any rank-2
    tensor (a cubic or tetrahedral point group forces it to be isotropic).
  * so the model declares itself **not conservative** (``conservative = False``): on CH4, benzene and a cubic
    Cu cell the autograd forces differ from central differences of the energy (by ~6e-5, 4e-7 and 3e-3 eV/Å
    for a small random backbone, ``tests/models/test_frame_averaging.py``), while on generic structures they
    agree to ~1e-9. ``molequi md`` / ``run_md`` refuse it unless ``--allow-nonconservative`` is given.
  * in MD the exact degeneracy is left at once: 2 ps NVE at 300 K (``scripts/bench/nve_drift.py --systems``,
    a random-init model added to a harmonic / EMT reference) never came within the tolerance (smallest
    relative gap 2e-4 to 4e-2), forces matched -dE/dx to <= 7e-7 eV/Å after thermalisation, and CH4 and a
    32-atom Cu cell drifted about as little as a conservative MACE (2.6e-5 vs 4.7e-6 and -1.3e-7 vs 3.0e-8
    eV/atom/ps; ``bench_results/nve_drift_systems.md``).

Periodic cells: the PCA uses the positions as stored, so the frame (not the averaged invariance) depends on
which periodic image of each atom is stored; wrap positions consistently (as the data readers do).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.graph.neighbors import edge_vectors
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel
from molequi.nn.radial import BesselBasis, PolynomialCutoff
from molequi.response import batch_vector


class SafeEigh(torch.autograd.Function):
    """Symmetric eigendecomposition (B, d, d) -> (lambda (B, d) ascending, U (B, d, d)) with a degeneracy-safe
    backward: dA = U (diag(d lambda) + F o (U^T dU)) U^T, F_ij = 1/(lambda_j - lambda_i), zeroed where
    |lambda_j - lambda_i| <= tol * max(|lambda|, 1e-12)."""

    @staticmethod
    def forward(ctx, A: torch.Tensor, tol: float):
        lam, U = torch.linalg.eigh(A)
        ctx.save_for_backward(lam, U)
        ctx.tol = tol
        return lam, U

    @staticmethod
    def backward(ctx, g_lam, g_U):
        lam, U = ctx.saved_tensors
        diff = lam[..., None, :] - lam[..., :, None]  # [B, d, d], lambda_j - lambda_i
        scale = lam.abs().amax(dim=-1, keepdim=True)[..., None].clamp_min(1e-12)
        ok = diff.abs() > ctx.tol * scale
        F = torch.where(ok, 1.0 / torch.where(ok, diff, torch.ones_like(diff)), torch.zeros_like(diff))
        inner = torch.zeros_like(U)
        if g_U is not None:
            inner = F * (U.transpose(-1, -2) @ g_U)
        if g_lam is not None:
            inner = inner + torch.diag_embed(g_lam)
        gA = U @ inner @ U.transpose(-1, -2)
        return 0.5 * (gA + gA.transpose(-1, -2)), None


def sign_frames(dim: int, proper_only: bool) -> torch.Tensor:
    """Sign patterns s (F, dim) of the frames U diag(s) (the caller keeps det(U_s) = +1 for proper ones)."""
    return torch.tensor(list(itertools.product([1.0, -1.0], repeat=dim)))


class EdgeMLPBackbone(nn.Module):
    """A small, deliberately NOT invariant message-passing backbone: MLPs on raw edge-vector components.

        h_i^0 = emb(z_i)
        m_ij  = MLP([h_j, h_i, r_ij / r_max, Bessel(|r_ij|)]) f_cut(|r_ij|)  (r_ij = its x, y, z components)
        h_i  <- h_i + MLP_t(h_i + (1/avg_nb) sum_j m_ij)
        y_i   = MLP_out(h_i)

    ``atomic_energies(data, pos, cell) -> (n,)`` returns the dimensionless readout y (the wrapper applies
    E0 / scale / shift). Cheap: O(E C^2) per layer, no spherical harmonics.
    """

    @dataclass
    class Config:
        r_max: float = 5.0
        channels: int = 64
        num_layers: int = 3
        num_bessel: int = 8
        num_polynomial_cutoff: int = 5

    def __init__(self, cfg: EdgeMLPBackbone.Config, num_elements: int, avg_num_neighbors: float):
        super().__init__()
        C = cfg.channels
        self.cfg = cfg
        self.embedding = nn.Embedding(num_elements, C)
        self.bessel = BesselBasis(cfg.r_max, cfg.num_bessel)
        self.cutoff = PolynomialCutoff(cfg.r_max, cfg.num_polynomial_cutoff)
        d_edge = 2 * C + 3 + cfg.num_bessel
        self.message = nn.ModuleList(
            [nn.Sequential(nn.Linear(d_edge, C), nn.SiLU(), nn.Linear(C, C)) for _ in range(cfg.num_layers)]
        )
        self.update = nn.ModuleList(
            [nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C)) for _ in range(cfg.num_layers)]
        )
        self.out = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, 1))
        self.inv_avg = 1.0 / avg_num_neighbors
        self.r_max = cfg.r_max

    def atomic_energies(
        self, data, pos: torch.Tensor, cell: torch.Tensor, element: torch.Tensor
    ) -> torch.Tensor:
        ei = data[K.EDGE_INDEX]
        sender, receiver = ei[0], ei[1]
        vec = edge_vectors(pos, ei, data[K.UNIT_SHIFTS], cell, batch_vector(data))  # [E, 3] in the frame
        r = torch.linalg.vector_norm(vec, dim=-1)
        env = self.cutoff(r)  # [E, 1]
        edge = torch.cat([vec / self.r_max, self.bessel(r)], dim=-1)  # raw components: not invariant
        h = self.embedding(element).to(pos.dtype)
        for msg, upd in zip(self.message, self.update):
            m = msg(torch.cat([h[sender], h[receiver], edge], dim=-1)) * env  # [E, C]
            agg = scatter(m, receiver, dim=0, dim_size=h.shape[0], reduce="sum") * self.inv_avg
            h = h + upd(h + agg)
        return self.out(h).squeeze(-1)


class FrameAveraging(EnergyModel):
    """Frame-averaged force field around a backbone (see the module docstring).

    ``FrameAveraging.from_config(cfg, statistics)`` builds the default ``EdgeMLPBackbone``;
    ``FrameAveraging.wrap(backbone, statistics, cfg)`` wraps any module with
    ``atomic_energies(data, pos, cell) -> (n,)`` eV (a molequi model, e.g. MACE, or your own); it then returns
    the frame average of the backbone's energies as they are (no extra E0 / scale / shift).
    """

    @dataclass
    class Config:
        r_max: float = 5.0
        """Cutoff radius, Å (the backbone's)."""
        mode: str = "3d"
        """'3d' (full PCA frame) or '2d' (slab: in-plane frame, z kept)."""
        frames: str = "all"
        """Frames averaged in evaluation: 'all' (O(3): 8 in 3d, 4 in 2d) or 'proper' (SE(3): 4 / 2)."""
        frames_train: str = "random"
        """Frames in training: 'random' (one random frame per structure and step, FAENet SFA) or 'all'."""
        weighting: str = "z"
        """Covariance weights: 'z' (w_i = Z_i / <Z>, breaks degeneracies of the geometry) or 'uniform'."""
        degeneracy_tol: float = 1e-4
        """Relative eigenvalue gap below which eigenvectors are treated as degenerate (see docstring)."""
        backbone: dict = field(default_factory=dict)
        """Fields of ``EdgeMLPBackbone.Config`` (r_max is taken from this config)."""

        def validate(self) -> None:
            if self.r_max <= 0:
                raise ConfigError(f"FrameAveraging r_max must be positive, got {self.r_max}")
            for name, value, valid in (
                ("mode", self.mode, ("3d", "2d")),
                ("frames", self.frames, ("all", "proper")),
                ("frames_train", self.frames_train, ("random", "all")),
                ("weighting", self.weighting, ("z", "uniform")),
            ):
                if value not in valid:
                    raise ConfigError(f"FrameAveraging {name} must be one of {valid}, got '{value}'")
            unknown = set(self.backbone) - set(EdgeMLPBackbone.Config.__dataclass_fields__)
            if unknown:
                raise ConfigError(
                    f"unknown backbone fields {sorted(unknown)}; valid: "
                    f"{sorted(EdgeMLPBackbone.Config.__dataclass_fields__)}"
                )

    def __init__(self, cfg: FrameAveraging.Config, statistics: Statistics, backbone: nn.Module | None = None):
        super().__init__()
        cfg.validate()
        self.config, self.statistics = cfg, statistics
        self.elements = [int(z) for z in statistics.elements]
        self.r_max = float(cfg.r_max)
        # not conservative: at degenerate frames (CH4, benzene, cubic cells) E jumps between frame choices and
        # the forces are not -dE/dx there (see "Degenerate eigenvalues"); molequi md refuses it unless asked
        self.conservative = False
        self.element_table = ElementTable(self.elements)
        self.register_buffer(
            "z_of_element", torch.tensor(self.elements, dtype=torch.float64), persistent=False
        )
        self.external = backbone is not None
        if backbone is None:
            bcfg = EdgeMLPBackbone.Config(**{**cfg.backbone, "r_max": cfg.r_max})
            backbone = EdgeMLPBackbone(bcfg, len(self.elements), float(statistics.avg_num_neighbors))
            self.head = AtomicEnergyHead(statistics, self.elements)
        self.backbone = backbone
        d = 3 if cfg.mode == "3d" else 2
        signs = sign_frames(d, proper_only=False)
        self.register_buffer("signs", signs, persistent=False)  # [F_all, d]
        self.last_min_gap = float("inf")
        self._warned = False

    @classmethod
    def from_config(cls, cfg: FrameAveraging.Config, statistics: Statistics) -> FrameAveraging:
        return cls(cfg, statistics)

    @classmethod
    def wrap(cls, backbone: nn.Module, statistics: Statistics, cfg: FrameAveraging.Config | None = None):
        """Frame-average any backbone with ``atomic_energies(data, pos, cell) -> (n,)`` (eV) and a cutoff
        ``r_max`` (Å), e.g. another molequi force field."""
        cfg = cfg or cls.Config(r_max=float(backbone.r_max))
        return cls(cfg, statistics, backbone=backbone)

    def config_dict(self) -> dict:
        return asdict(self.config)

    # -- frames ---------------------------------------------------------------------------------------------
    def frames(self, pos: torch.Tensor, element: torch.Tensor, batch: torch.Tensor, n_graphs: int):
        """Centroids (B, 3) and frame sets (B, F, 3, 3) (columns = axes), differentiable in ``pos``."""
        d = 3 if self.config.mode == "3d" else 2
        if self.config.weighting == "z":
            z = self.z_of_element.to(pos.dtype)[element]
            w = z / scatter(z, batch, dim=0, dim_size=n_graphs, reduce="mean")[batch]
        else:
            w = torch.ones_like(pos[:, 0])
        centre = scatter(pos, batch, dim=0, dim_size=n_graphs, reduce="mean")  # [B, 3]
        x = (pos - centre[batch])[:, :d]  # [n, d]
        cov = scatter(
            w[:, None, None] * x[:, :, None] * x[:, None, :], batch, dim=0, dim_size=n_graphs, reduce="mean"
        )  # [B, d, d]
        lam, U = SafeEigh.apply(cov, self.config.degeneracy_tol)
        with torch.no_grad():
            gaps = (lam[:, 1:] - lam[:, :-1]) / lam.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
            self.last_min_gap = float(gaps.min()) if gaps.numel() else float("inf")
        if self.last_min_gap < self.config.degeneracy_tol and not self._warned:
            self._warned = True
            warnings.warn(
                f"FrameAveraging: near-degenerate PCA eigenvalues (relative gap {self.last_min_gap:.2g}); "
                "the frame is not unique and results are not exactly invariant for this structure "
                "(see molequi.models.frame_averaging)",
                RuntimeWarning,
                stacklevel=2,
            )
        frames = U[:, None] * self.signs.to(U.dtype)[None, :, None, :]  # [B, F, d, d], column k times s_k
        if d == 2:
            full = torch.zeros(*frames.shape[:2], 3, 3, dtype=U.dtype, device=U.device)
            full[..., :2, :2] = frames
            full[..., 2, 2] = 1.0
            frames = full
        return centre, frames

    def _select(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames used now (B, F', 3, 3): all / proper ones, or one random frame per structure in training."""
        det = torch.linalg.det(frames.detach())  # [B, F]
        if self.training and self.config.frames_train == "random":
            pick = []
            for b in range(frames.shape[0]):
                allowed = (
                    (det[b] > 0).nonzero().flatten()
                    if self.config.frames == "proper"
                    else torch.arange(frames.shape[1], device=frames.device)
                )
                pick.append(allowed[torch.randint(len(allowed), (1,), device=frames.device)])
            return frames[torch.arange(frames.shape[0], device=frames.device), torch.cat(pick)][:, None]
        if self.config.frames == "proper":
            keep = det > 0  # exactly half of the sign patterns for every structure
            return frames[keep].view(frames.shape[0], -1, 3, 3)
        return frames

    # -- energies -------------------------------------------------------------------------------------------
    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Frame-averaged per-atom energies (n,) eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        element = self.element_table(data[K.NUMBERS])
        batch = batch_vector(data)
        n_graphs = cell.shape[0]
        centre, frames = self.frames(pos, element, batch, n_graphs)
        frames = self._select(frames)  # [B, F, 3, 3]
        n_frames, n = frames.shape[1], pos.shape[0]
        # all frames in one backbone call: F copies of the batch, structure b of copy f is graph f * B + b
        x = pos - centre[batch]
        pos_f = torch.einsum("ni,fnij->fnj", x, frames[batch].transpose(0, 1)).reshape(-1, 3)  # [F n, 3]
        cell_f = torch.einsum("bij,bfjk->fbik", cell, frames).reshape(-1, 3, 3)  # [F B, 3, 3]
        stacked = self._stack(data, n_frames, n, n_graphs)
        if self.external:
            e = self.backbone.atomic_energies(stacked, pos_f, cell_f)
            return e.view(n_frames, n).mean(dim=0)
        y = self.backbone.atomic_energies(stacked, pos_f, cell_f, element.repeat(n_frames))
        return self.head(element, y.view(n_frames, n).mean(dim=0))

    @staticmethod
    def _stack(data, n_frames: int, n: int, n_graphs: int) -> Data:
        ei, us = data[K.EDGE_INDEX], data[K.UNIT_SHIFTS]
        batch = batch_vector(data)
        if n_frames == 1:
            return Data(**{K.NUMBERS: data[K.NUMBERS], K.EDGE_INDEX: ei, K.UNIT_SHIFTS: us, K.BATCH: batch})
        f = torch.arange(n_frames, device=ei.device)
        edge_index = (ei[:, None, :] + (f * n)[None, :, None]).reshape(2, -1)
        return Data(
            **{
                K.NUMBERS: data[K.NUMBERS].repeat(n_frames),
                K.EDGE_INDEX: edge_index,
                K.UNIT_SHIFTS: us.repeat(n_frames, 1),
                K.BATCH: (batch[None] + (f * n_graphs)[:, None]).reshape(-1),
            }
        )



__all__ = ["FrameAveraging", "EdgeMLPBackbone", "SafeEigh", "sign_frames"]
