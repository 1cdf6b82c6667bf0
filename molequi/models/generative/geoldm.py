"""GeoLDM (Xu, Powers, Dror, Ermon & Leskovec, ICML 2023): an equivariant autoencoder with EDM's diffusion run
on its latent space, as GeoLDM's code (github.com/MinkaiXu/GeoLDM, ``EnHierarchicalVAE``,
``EnLatentDiffusion``) defines it.

Data of one molecule, as GeoLDM's autoencoder reads it (no normalisation: GeoLDM's latent model never calls
EDM's ``normalize``, so ``norm_values`` stays [1, 1, 1]): positions x (n_b, 3) in Å, centred, and features
h (n_b, F) = [one_hot(type), Z] (Z only with ``include_charges``).

Autoencoder (``GeoLDMAutoencoder``), both halves EDM's EGNN (``EDMDynamics`` without the time feature, every
block with GeoLDM's whole coordinate range 15)::

    encoder (1 block):  (x, h) -> EGNN -> (x_enc, H features); x_enc centred is mu_x, and
        [s, mu_h, log sigma_h^2] = MLP(H) (Linear, SiLU, Linear -> 1 + 2 L), sigma_x = exp(sum_i s_i / 2)
    decoder (layers blocks): (z_x, z_h (n, L)) -> EGNN -> (x_rec centred, h_rec (n, F))

GeoLDM computes the encoder's sigma_x, sigma_h but does not use them (``EnHierarchicalVAE.encode`` returns a
fixed 0.0032): the latent is z = mu + sigma eps (eps_x zero mean per molecule) with sigma = 0.0032 when the
autoencoder is trained alone (``train_diffusion: false``) and sigma = sigma_0 of the noise schedule under the
latent diffusion.

Losses (GeoLDM's, per molecule, averaged over the batch; n = the batch's largest molecule, EDM's padded size,
or the molecule's own size with ``loss_normalisation: molecule``)::

    reconstruction  R = [ |x_rec - x|^2 + CE(h_rec[:K], type) + |h_rec[K] - Z|^2 ] / ((3 + F) n)
    KL              KL(N(mu, 1) || N(0, I)) over the latent (GeoLDM's gaussian_KL with q's sigma set to 1,
                    so 0.5 |mu_h|^2 + 0.5 |mu_x|^2, the x part on the (N - 1) 3 dimensional zero-mean subspace)
    autoencoder stage (train_diffusion false):   L = R + kl_weight KL
    latent diffusion (train_diffusion true):     L = KL_prior(z) + 1/2 |eps - eps_theta(z_t, t)|^2 / ((3 + L) n)
                                                     + R (only with trainable_ae),  t ~ U{0..T}

with z detached (GeoLDM: "always keep the encoder fixed"; with ``trainable_ae`` only the decoder learns, the
encoder keeps its initial weights, as GeoLDM's released QM9 model) and the latent denoiser EDM's
(``EDMDynamics`` on L latent features). GeoLDM subtracts log p(N), a constant, as well: molequi leaves it out.

Likelihood (``likelihood_terms``; GeoLDM's ``EnLatentDiffusion.forward`` in eval mode minus log p(N))::

    -log p(x, h, N) <= KL_prior(z) + T L_t + d (gamma_0 + log 2 pi) / 2 + 1/2 |eps_0 - eps_theta(z_0, 0)|^2
                        + R_sum + 3 N (gamma_0 + log 2 pi) / 2 - log p(N)

with z = mu + sigma_0 eps_enc, d = (N - 1) 3, R_sum the reconstruction error summed, not divided (0 without
trainable_ae), the first three terms EDM's (``EDM._vlb_diffusion_terms``) on (z_x, z_h) and the last
constant GeoLDM's ``log_constants_p_h_given_z0`` (its 3 N degrees of freedom as written there).

Sampling: EDM's ancestral or DDIM sampler on (z_x, z_h) (``EDM.sample_batch``), then GeoLDM's
p(z | z_0): z = x_hat + exp(gamma_0 / 2) eps, decoded; type = argmax of the decoder's one-hot block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from molequi import keys as K
from molequi.errors import ConfigError
from molequi.models.generative.edm import EDM, EDMDynamics
from molequi.models.generative.graph import centred_gaussian, fully_connected_edges, molecule_sizes, rng
from molequi.nn.scatter import scatter_sum

ENCODER_SIGMA = 0.0032  # GeoLDM's fixed encoder standard deviation (EnHierarchicalVAE.encode)


def latent_kl(mu_x: torch.Tensor, mu_h: torch.Tensor, sigma_x: torch.Tensor, sigma_h: torch.Tensor,
              batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """(B,) KL(N(mu, sigma^2) || N(0, I)) of the latent, with GeoLDM's 1e-8 guards (``gaussian_KL``):
    the h part summed over nodes and latent features, the x part on the (N - 1) 3 dimensional zero-mean
    subspace with one sigma_x (B,) per molecule. GeoLDM's loss passes sigma = 1."""
    dt = mu_x.dtype
    d = ((molecule_sizes(batch, num_graphs) - 1) * 3).to(dt)
    kl_h = torch.log(1.0 / (sigma_h + 1e-8) + 1e-8) + 0.5 * (sigma_h ** 2 + mu_h ** 2) - 0.5
    kl_h = scatter_sum(kl_h.sum(-1), batch, num_graphs)
    mu2 = scatter_sum((mu_x ** 2).sum(-1), batch, num_graphs)
    kl_x = d * torch.log(1.0 / (sigma_x + 1e-8) + 1e-8) + 0.5 * (d * sigma_x ** 2 + mu2) - 0.5 * d
    return kl_x + kl_h


class GeoLDMAutoencoder(nn.Module):
    """GeoLDM's equivariant autoencoder (``EGNN_encoder_QM9`` + ``EGNN_decoder_QM9``), see the module docstring.

    encode(x, h, batch, edge_index, num_graphs, context) -> (mu_x (n, 3), sigma_x (B,), mu_h (n, L),
    sigma_h (n, L)); decode(z_x, z_h, ...) -> (x_rec (n, 3) centred, h_rec (n, F)).
    """

    def __init__(self, n_features: int, latent_nf: int, hidden: int, layers: int, context_dim: int = 0,
                 **egnn):
        super().__init__()
        self.latent_nf = latent_nf
        self.encoder = EDMDynamics(n_features, hidden, 1, context_dim, condition_time=False, out_features=hidden,
                                   displacement=False, **egnn)
        self.encoder_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_nf + 1))
        self.decoder = EDMDynamics(latent_nf, hidden, layers, context_dim, condition_time=False,
                                   out_features=n_features, displacement=False, **egnn)

    def encode(self, x, h, batch, edge_index, num_graphs, context=None):
        mu_x, feats = self.encoder(x, h, None, batch, edge_index, context, num_graphs=num_graphs)
        out = self.encoder_head(feats)
        L = self.latent_nf
        sigma_x = torch.exp(0.5 * scatter_sum(out[:, 0], batch, num_graphs))
        return mu_x, sigma_x, out[:, 1:1 + L], torch.exp(0.5 * out[:, 1 + L:])

    def decode(self, z_x, z_h, batch, edge_index, num_graphs, context=None):
        return self.decoder(z_x, z_h, None, batch, edge_index, context, num_graphs=num_graphs)


class GeoLDM(EDM):
    """GeoLDM for molecules with hydrogens (QM9 recipe of GeoLDM's README by default): an ``EDM`` whose
    diffusion runs on the latents of a ``GeoLDMAutoencoder`` (``self.autoencoder``). Training, likelihood,
    sampling: see the module docstring; ``molequi generate`` samples it as an EDM (ancestral or DDIM)."""

    @dataclass
    class Config(EDM.Config):
        name: ClassVar[str] = "geoldm"
        # objective, not architecture: model.init_from a checkpoint of the autoencoder stage may change them
        objective_keys: ClassVar[tuple[str, ...]] = ("train_diffusion", "trainable_ae", "kl_weight")
        hidden: int = 256  # nf of all three EGNNs (GeoLDM QM9 README: 256)
        layers: int = 9  # blocks of the latent denoiser and of the decoder (README: 9); the encoder has 1
        timesteps: int = 1000  # README: 1000 (main_qm9.py default 500)
        norm_values: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # GeoLDM: none (see module)
        coords_range_per_layer: float | None = 15.0  # GeoLDM's EGNN gives every block the whole range 15
        latent_nf: int = 1  # invariant latent features per atom L (README: 1; main_qm9.py default 4)
        kl_weight: float = 0.01  # weight of the latent KL in the autoencoder stage (main_qm9.py default)
        trainable_ae: bool = True  # README: --trainable_ae (the decoder learns with the latent diffusion)
        train_diffusion: bool = True  # README: --train_diffusion; false: train the autoencoder alone

        def validate(self) -> None:
            super().validate()
            if self.latent_nf < 1:
                raise ConfigError(f"GeoLDM needs latent_nf >= 1, got {self.latent_nf}")
            if [float(v) for v in self.norm_values] != [1.0, 1.0, 1.0]:
                raise ConfigError("GeoLDM's autoencoder reads positions, one-hot types and Z unscaled: "
                                  f"norm_values must be [1, 1, 1], got {self.norm_values}")

    def __init__(self, config: Config | None = None):
        super().__init__(config or GeoLDM.Config())
        cfg = self.config
        self.autoencoder = GeoLDMAutoencoder(
            self.n_features, cfg.latent_nf, cfg.hidden, cfg.layers, cfg.context_dim,
            coords_range=cfg.coords_range, normalization_factor=cfg.normalization_factor, attention=cfg.attention,
            tanh=cfg.tanh, norm_constant=cfg.norm_constant, coords_range_per_layer=cfg.coords_range_per_layer)
        if not cfg.trainable_ae and cfg.train_diffusion:  # GeoLDM freezes a first stage it does not train
            self.autoencoder.requires_grad_(False)

    def latent_features(self) -> int:
        return self.config.latent_nf

    # ------------------------------------------------------------------ autoencoder pieces
    def reconstruction_error(self, x_rec, h_rec, x, h, batch, num_graphs, *, normalise: bool) -> torch.Tensor:
        """(B,) GeoLDM's ``compute_reconstruction_error``: squared position error + cross-entropy of the types
        + squared error of Z, divided by (3 + F) n when ``normalise`` (training) else summed."""
        k = self.n_types
        err = ((x_rec - x) ** 2).sum(-1)
        err = err + nn.functional.cross_entropy(h_rec[:, :k], h[:, :k].argmax(-1), reduction="none")
        if self.config.include_charges:
            err = err + ((h_rec[:, k:] - h[:, k:]) ** 2).sum(-1)
        err = scatter_sum(err, batch, num_graphs)
        return err / self._denominator(batch, num_graphs, self.n_features, x.dtype) if normalise else err

    def _denominator(self, batch, num_graphs, width, dtype):
        sizes = molecule_sizes(batch, num_graphs).to(dtype)
        n = sizes.max() if self.config.loss_normalisation == "edm" else sizes
        return (3 + width) * n

    def _latent(self, mu_x, mu_h, sigma, batch, num_graphs, noise, generator):
        """z = mu + sigma eps (eps_x zero mean per molecule; ``noise`` = (eps_x, eps_h) or None to draw)."""
        if noise is None:
            noise = (centred_gaussian(batch, num_graphs, dtype=mu_x.dtype, device=mu_x.device, generator=generator),
                     torch.randn(mu_h.shape, dtype=mu_h.dtype, device=mu_h.device, **rng(generator)))
        # a Python sigma by torch.full, not torch.as_tensor: a host-to-device copy waits for the GPU
        if not torch.is_tensor(sigma):
            sigma = torch.full((1,), sigma, dtype=mu_x.dtype, device=mu_x.device)
        sigma = sigma.reshape(-1)
        sigma = self.per_node(sigma, batch, mu_x.dtype)
        return mu_x + sigma * noise[0].to(mu_x.dtype), mu_h + sigma * noise[1].to(mu_h.dtype)

    # ------------------------------------------------------------------ training
    def loss_terms(self, batch, generator=None, *, t_int=None, noise_enc=None, noise=None) -> dict:
        """GeoLDM's training objective per molecule (B,) (module docstring): ``loss`` and its terms. ``t_int``
        (B,) in 0..T, ``noise_enc`` (the encoder's eps) and ``noise`` (the diffusion's eps at t), each
        (eps_x (n, 3) zero mean per molecule, eps_h (n, L)), fix the draws (else from ``generator``)."""
        self.require_eps("training")
        return self._loss_terms(self.loss_inputs(batch), generator, t_int=t_int, noise_enc=noise_enc, noise=noise)

    def _loss_terms(self, inputs: dict, generator=None, *, t_int=None, noise_enc=None, noise=None) -> dict:
        """``loss_terms`` on ``loss_inputs`` (the device part: no host sync)."""
        cfg = self.config
        b, num_graphs, edge_index = inputs["batch"], inputs["num_graphs"], inputs["edge_index"]
        x, h = self.encode(inputs["numbers"], inputs["pos"], b, num_graphs, checked=True)
        ctx = self.context_of(inputs["context"], x.dtype)
        ae = self.autoencoder
        if not cfg.train_diffusion:  # GeoLDM's first stage: EnHierarchicalVAE.compute_loss
            mu_x, _, mu_h, _ = ae.encode(x, h, b, edge_index, num_graphs, ctx)
            z_x, z_h = self._latent(mu_x, mu_h, ENCODER_SIGMA, b, num_graphs, noise_enc, generator)
            x_rec, h_rec = ae.decode(z_x, z_h, b, edge_index, num_graphs, ctx)
            recon = self.reconstruction_error(x_rec, h_rec, x, h, b, num_graphs, normalise=True)
            ones = torch.ones(num_graphs, dtype=x.dtype, device=x.device)
            kl = latent_kl(mu_x, mu_h, ones, torch.ones_like(mu_h), b, num_graphs)
            return {"loss": recon + cfg.kl_weight * kl, "recon": recon, "kl": kl}
        coeffs = self._vlb_coeffs(x.dtype, x.device)
        zero = torch.zeros(num_graphs, dtype=torch.long, device=x.device)
        with torch.no_grad():  # GeoLDM detaches z: the encoder is never trained with the diffusion
            mu_x, _, mu_h, _ = ae.encode(x, h, b, edge_index, num_graphs, ctx)
            z_x, z_h = self._latent(mu_x, mu_h, coeffs(zero)[2], b, num_graphs, noise_enc, generator)
        recon = torch.zeros(num_graphs, dtype=x.dtype, device=x.device)
        if cfg.trainable_ae:
            x_rec, h_rec = ae.decode(z_x, z_h, b, edge_index, num_graphs, ctx)
            recon = self.reconstruction_error(x_rec, h_rec, x, h, b, num_graphs, normalise=True)
        T = cfg.timesteps
        if t_int is None:
            t_int = torch.randint(0, T + 1, (num_graphs,), device=x.device, **rng(generator))
        t_int = torch.as_tensor(t_int, device=x.device).long().reshape(num_graphs)
        _, a_t, s_t = coeffs(t_int)
        if noise is None:
            noise = self._vlb_draw(b, num_graphs, cfg.latent_nf, x.dtype, x.device, generator)(None)
        eps_x, eps_h = noise[0].to(x.dtype), noise[1].to(x.dtype)
        a, s = self.per_node(a_t, b, x.dtype), self.per_node(s_t, b, x.dtype)
        pred_x, pred_h = self.dynamics(a * z_x + s * eps_x, a * z_h + s * eps_h, t_int.to(x.dtype) / T, b,
                                       edge_index, ctx)
        error = self._vlb_per_molecule(torch.cat([pred_x - eps_x, pred_h - eps_h], -1) ** 2, b, num_graphs)
        diffusion = 0.5 * error / self._denominator(b, num_graphs, cfg.latent_nf, x.dtype)
        kl_prior = self._latent_prior_kl(z_x, z_h, b, num_graphs)
        return {"loss": kl_prior + diffusion + recon, "diffusion": diffusion, "recon": recon, "kl_prior": kl_prior,
                "t": t_int}

    def _latent_prior_kl(self, z_x, z_h, b, num_graphs):
        """KL(q(z_T | z) || N(0, I)) (B,), EDM's prior term on the latents with GeoLDM's 1e-8 guards (they
        change it by ~1e-16 per dimension: ``likelihood_terms`` uses EDM's, without them)."""
        coeffs = self._vlb_coeffs(z_x.dtype, z_x.device)
        _, a_T, s_T = coeffs(torch.full((num_graphs,), self.config.timesteps, device=z_x.device))
        ones = torch.ones_like(z_h)
        return latent_kl(a_T[b, None] * z_x, a_T[b, None] * z_h, s_T, s_T[b, None] * ones, b, num_graphs)

    def device_loss(self, inputs: dict, generator=None) -> tuple[torch.Tensor, dict]:
        """The device part of ``training_loss`` (``EDM.training_loss``: the mean over molecules of ``loss_terms``'s
        loss, the same objective in validation, with its terms): size histogram (training), ``_loss_terms``."""
        if self.training:
            self.size_counts += inputs["size_counts"].to(self.size_counts)
        terms = self._loss_terms(inputs, generator)
        return terms["loss"].mean(), {k: v.mean().detach() for k, v in terms.items() if k not in ("loss", "t")}

    # ------------------------------------------------------------------ likelihood
    def likelihood_terms(self, batch, generator: torch.Generator | None = None, *,
                         t_int: torch.Tensor | None = None, noise: tuple | None = None,
                         noise0: tuple | None = None, noise_enc: tuple | None = None,
                         context: torch.Tensor | None = None, include_size: bool = True) -> dict[str, torch.Tensor]:
        """The terms of GeoLDM's variational bound on -log p(x, h, N) per molecule (B,), in nats (module
        docstring): ``kl_prior``, ``diffusion``, ``neg_log_constants`` (x part), ``loss_0``, ``recon``,
        ``neg_log_constants_h``, ``log_pN`` and ``nll``. ``noise_enc``, ``t_int`` (1..T), ``noise``, ``noise0``
        fix the draws (drawn in that order from ``generator`` otherwise)."""
        self.require_eps("the likelihood bound")
        b, num_graphs = self._batch_info(batch)
        x, h = self.encode(batch[K.NUMBERS], batch[K.POS], b, num_graphs)
        dt, dev = x.dtype, x.device
        sizes = torch.bincount(b, minlength=num_graphs)
        edge_index = fully_connected_edges(b, num_graphs)
        ctx = self.batch_context(batch) if context is None else context
        coeffs = self._vlb_coeffs(dt, dev)
        zero = torch.zeros(num_graphs, dtype=torch.long, device=dev)
        g_0, a_0, s_0 = coeffs(zero)
        ae = self.autoencoder
        mu_x, _, mu_h, _ = ae.encode(x, h, b, edge_index, num_graphs, ctx)
        z_x, z_h = self._latent(mu_x, mu_h, s_0, b, num_graphs, noise_enc, generator)
        recon = torch.zeros(num_graphs, dtype=dt, device=dev)
        if self.config.trainable_ae:
            x_rec, h_rec = ae.decode(z_x, z_h, b, edge_index, num_graphs, ctx)
            recon = self.reconstruction_error(x_rec, h_rec, x, h, b, num_graphs, normalise=False)
        kl_prior, diffusion, t_int, neg_log_constants = self._vlb_diffusion_terms(
            z_x, z_h, b, num_graphs, edge_index, ctx, t_int, noise, generator)
        eps0_x, eps0_h = self._vlb_draw(b, num_graphs, self.config.latent_nf, dt, dev, generator)(noise0)
        a, s = a_0[b, None], s_0[b, None]
        pred0_x, pred0_h = self.dynamics(a * z_x + s * eps0_x, a * z_h + s * eps0_h, zero.to(dt), b, edge_index, ctx)
        loss_0 = 0.5 * self._vlb_per_molecule(torch.cat([pred0_x - eps0_x, pred0_h - eps0_h], -1) ** 2, b,
                                              num_graphs)
        neg_log_constants_h = (sizes * 3).to(dt) * (0.5 * g_0 + 0.5 * np.log(2 * np.pi))
        log_pN = self.log_size_probability(sizes).to(dt) if include_size else torch.zeros_like(g_0)
        nll = kl_prior + diffusion + neg_log_constants + loss_0 + recon + neg_log_constants_h - log_pN
        return {"nll": nll, "kl_prior": kl_prior, "diffusion": diffusion, "neg_log_constants": neg_log_constants,
                "loss_0": loss_0, "recon": recon, "neg_log_constants_h": neg_log_constants_h, "log_pN": log_pN,
                "t": t_int}

    @torch.no_grad()
    def diffusion_data(self, batch, generator=None):
        """(z_x, z_h): what the latent diffusion runs on for a batch of molecules, as in training: the frozen
        encoder's mean plus sigma_0 noise, z = mu + sigma_0 eps_enc (``molequi distill``'s data)."""
        b, num_graphs = self._batch_info(batch)
        x, h = self.encode(batch[K.NUMBERS], batch[K.POS], b, num_graphs)
        edge_index = fully_connected_edges(b, num_graphs)
        mu_x, _, mu_h, _ = self.autoencoder.encode(x, h, b, edge_index, num_graphs, self.batch_context(batch))
        sigma_0 = self._vlb_coeffs(x.dtype, x.device)(torch.zeros(num_graphs, dtype=torch.long, device=x.device))[2]
        return self._latent(mu_x, mu_h, sigma_0, b, num_graphs, None, generator)

    # ------------------------------------------------------------------ sampling
    def decode_sample(self, x, h, batch, edge_index, num_graphs, context=None, generator=None):
        """GeoLDM's p(z | z_0) (z = x_hat + exp(gamma_0 / 2) eps, eps_x zero mean) and its decoder."""
        g_0 = self._coeffs(0, x.dtype, x.device)[0]
        sigma = torch.exp(0.5 * g_0).to(x.dtype)
        z_x, z_h = self._latent(x, h, sigma, batch, num_graphs, None, generator)
        x_rec, h_rec = self.autoencoder.decode(z_x, z_h, batch, edge_index, num_graphs, context)
        return self.decode(x_rec, h_rec)

    def extra_repr(self) -> str:
        c = self.config
        return f"{super().extra_repr()}, latent_nf={c.latent_nf}, trainable_ae={c.trainable_ae}"


__all__ = ["GeoLDM", "GeoLDMAutoencoder", "latent_kl", "ENCODER_SIGMA"]
