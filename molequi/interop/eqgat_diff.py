"""Import checkpoints of the reference EQGAT-diff code (github.com/jule-c/eqgat_diff) as molequi checkpoints.

The reference trains ``experiments/diffusion_discrete.py``'s ``Trainer`` (a Lightning module) and its
``best_mol_stab.ckpt`` is a Lightning checkpoint: ``{"state_dict": ..., "hyper_parameters": {...}, "epoch",
"global_step", optimiser / callback / loop state}``. It is saved while the EMA callback has copied the
averaged weights into the module (validation), so ``state_dict`` holds the EMA weights. The file is read
with ``torch.load(weights_only=True)`` (tensors and plain values only; ``argparse.Namespace`` is admitted for
hyperparameters stored as one); a bare ``DenoisingEdgeNetwork`` state dict is accepted too.

What is taken from the state dict (keys under ``model.`` in a Lightning file)::

    model.*                       the denoiser (``DenoisingEdgeNetwork``) -> EQGATDiffusion.net (names below)
    atoms_prior, charges_prior,   the marginal priors -> type / charge / bond counts (scaled so that
    bonds_prior                   molequi's +1-smoothed marginals equal them to ~1e-11)
    empirical_num_nodes           the molecule-size distribution -> size_counts (max_atoms = its length - 1)
    sde_*, cat_*                  tabulated schedules and transition matrices: not copied (molequi computes
                                  its cosine schedule; see the limitation below)

Sizes (scalar, vector and edge channels, layers, cross products, classes) come from the weights' shapes;
``hyper_parameters`` give the timesteps and are checked for options molequi does not implement
(``UnsupportedEQGATOptionError`` lists them): edge message passing, context / property conditioning, bond-
only prediction, latent models, noise parameterisation, absorbing-state priors, non-mean vector
aggregation, a schedule other than cosine. Atom types are the reference's ``full_atom_encoder`` (16 elements,
H..Bi; 15 without H for ``remove_hs``), charges its ``-2..3`` (charge_offset 2, 6 classes).

Limitation: an imported model's *denoiser* is the reference's (``scripts/parity/check.py eqgat_diff``), its
sampler is molequi's: the same cosine schedule family, tabulated as molequi does (the reference's table has
T + 2 grid points and step ratios clipped at 0.05: alpha_bar up to 0.4 % lower; ``categorical`` module
docstring), and molequi's ancestral loop over t = T .. 0.

Weight names (reference -> molequi, layer k)::

    time_mapping_atom / time_mapping_bond       -> time_atoms / time_bonds
    atom_mapping / bond_mapping                 -> atom_in / bond_in
    atom_time_mapping / bond_time_mapping       -> atom_mix / bond_mix
    gnn.norms.k                                 -> norms.k
    gnn.convs.k.edge_pre / edge_post            -> layers.k.edge_pre / edge_post
    gnn.convs.k.edge_net.{0,1}                  -> layers.k.message.{0,2}
    gnn.convs.k.scalar_net / vector_net         -> layers.k.scalar_values / vector_values
    gnn.convs.k.posnorm.weight                  -> layers.k.position_scale
    gnn.convs.k.update_net.Wv0 / Wv1            -> layers.k.update.vector_in / vector_out
    gnn.convs.k.update_net.Ws[.0, .1]           -> layers.k.update.scalar_mlp[.0, .2]
    prediction_head.shared_mapping / atoms_lin  -> node_out / atom_out
    prediction_head.coords_lin / bond_mapping   -> coords_out / pair_edge
    prediction_head.bonds_lin_0 / bonds_lin_1   -> bond_hidden / bond_out
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from molequi.errors import CheckpointError, UnsupportedModelError

ORIGIN = "EQGAT-diff reference code (jule-c/eqgat_diff)"
# experiments/data/qm9/qm9_dataset.py full_atom_encoder (H, B, C, N, O, F, Al, Si, P, S, Cl, As, Br, I, Hg, Bi)
REFERENCE_ELEMENTS = [1, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 33, 35, 53, 80, 83]
REFERENCE_CHARGES = [-2, -1, 0, 1, 2, 3]  # one-hot of charge + 2 (charge_offset), num_charge_classes 6
PRIOR_SCALE = 1e12  # counts = prior * PRIOR_SCALE, so (counts + 1) / sum(counts + 1) = prior to ~1e-11

_TOP = {"time_mapping_atom": "time_atoms", "time_mapping_bond": "time_bonds", "atom_mapping": "atom_in",
        "bond_mapping": "bond_in", "atom_time_mapping": "atom_mix", "bond_time_mapping": "bond_mix",
        "prediction_head.shared_mapping": "node_out", "prediction_head.atoms_lin": "atom_out",
        "prediction_head.coords_lin": "coords_out", "prediction_head.bond_mapping": "pair_edge",
        "prediction_head.bonds_lin_0": "bond_hidden", "prediction_head.bonds_lin_1": "bond_out"}
_CONV = {"edge_pre": "edge_pre", "edge_post": "edge_post", "edge_net.0": "message.0", "edge_net.1": "message.2",
         "scalar_net": "scalar_values", "vector_net": "vector_values", "update_net.Wv0": "update.vector_in",
         "update_net.Wv1": "update.vector_out", "update_net.Ws.0": "update.scalar_mlp.0",
         "update_net.Ws.1": "update.scalar_mlp.2", "update_net.Ws": "update.scalar_mlp"}
_NOT_COPIED = re.compile(r"^(sde_\w+|cat_\w+)\.")
# hyperparameter -> the value molequi implements (absent keys take the reference's default)
_FIXED = {"edge_mp": False, "context_mapping": False, "bond_prediction": False, "property_prediction": False,
          "continuous_param": "data", "use_absorbing_state": False, "vector_aggr": "mean",
          "fully_connected": True, "local_global_model": False, "noise_scheduler": "cosine",
          "latent_dim": None, "additional_feats": False}


class UnsupportedEQGATOptionError(UnsupportedModelError):
    """A reference EQGAT-diff checkpoint with options molequi's ``eqgat_diff`` does not implement."""


def read_eqgat_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict with the denoiser under ``model.``, hyperparameters) of a reference checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, or a pickle of a class
        raise CheckpointError(f"{path}: cannot be read as an EQGAT-diff checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:300]}); the file is damaged, is not a torch.save file, or stores "
                              "objects other than tensors and plain values") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a Lightning checkpoint or state dict")
    state = obj.get("state_dict", obj)
    hparams = obj.get("hyper_parameters", {}) if "state_dict" in obj else {}
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (expected the reference's Lightning "
                              "checkpoint {'state_dict': ..., 'hyper_parameters': ...} or a model.state_dict())")
    if "gnn.convs.0.edge_net.0.weight" in state:  # a bare DenoisingEdgeNetwork state dict
        state = {f"model.{k}": v for k, v in state.items()}
    if "model.gnn.convs.0.edge_net.0.weight" not in state:
        raise CheckpointError(f"{path}: no model.gnn.convs.0.edge_net.0.weight; not an EQGAT-diff "
                              "(DenoisingEdgeNetwork) checkpoint")
    return state, dict(hparams or {})


def eqgat_config(state: dict, hparams: dict, source: str | None = None):
    """The ``EQGATDiffusion.Config`` a reference state dict and its hyperparameters describe."""
    from molequi.models.generative.categorical import N_BOND_TYPES, EQGATDiffusion

    problems = [f"{k}={hparams[k]!r} (molequi implements {v!r})" for k, v in _FIXED.items()
                if k in hparams and hparams[k] != v and not (v is None and not hparams[k])]
    if any(k.startswith("model.gnn.convs.") and ".edge_lin." in k for k in state):
        problems.append("edge message passing weights (edge_lin)")
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.gnn\.convs\.(\d+)\.", k))})
    S, features = state["model.atom_mapping.weight"].shape
    V = state["model.prediction_head.coords_lin.weight"].shape[1]
    D = state["model.bond_mapping.weight"].shape[0]
    if state["model.bond_mapping.weight"].shape[1] != N_BOND_TYPES:
        problems.append(f"{state['model.bond_mapping.weight'].shape[1]} bond classes (molequi: {N_BOND_TYPES})")
    n_charges = int(hparams.get("num_charge_classes", len(REFERENCE_CHARGES)))
    if n_charges != len(REFERENCE_CHARGES):
        problems.append(f"num_charge_classes={n_charges} (molequi reads the reference's 6: charges -2..3)")
    n_types = int(features) - n_charges
    prior = state.get("atoms_prior")
    if prior is not None and prior.numel() != n_types:
        problems.append(f"atoms_prior has {prior.numel()} classes but the input has {n_types} atom types")
    if n_types == len(REFERENCE_ELEMENTS):
        elements = list(REFERENCE_ELEMENTS)
    elif n_types == len(REFERENCE_ELEMENTS) - 1:  # remove_hs
        elements = REFERENCE_ELEMENTS[1:]
    else:
        elements = []
        problems.append(f"{n_types} atom types: not the reference's full_atom_encoder (16, or 15 without H)")
    cross = False
    if len(layers) > 1:
        out = state["model.gnn.convs.1.edge_net.1.weight"].shape[0]
        terms = (out - S - D - 1) // V
        if terms not in (2, 3) or S + terms * V + D + 1 != out:
            problems.append(f"layer 1 message width {out} fits neither 2 nor 3 vector terms")
        cross = terms == 3
    if "use_cross_product" in hparams and bool(hparams["use_cross_product"]) != cross and len(layers) > 1:
        problems.append(f"use_cross_product={hparams['use_cross_product']} but the weights say {cross}")
    if problems:
        raise UnsupportedEQGATOptionError(problems, source=source, origin=ORIGIN)
    sizes = state.get("empirical_num_nodes")
    return EQGATDiffusion.Config(
        elements=elements, charges=list(REFERENCE_CHARGES), timesteps=int(hparams.get("timesteps", 500)),
        hidden=int(S), vectors=int(V), edge_hidden=int(D), layers=len(layers), cross_product=cross,
        weight_x=float(hparams.get("lc_coords", 3.0)), weight_types=float(hparams.get("lc_atoms", 0.4)),
        weight_charges=float(hparams.get("lc_charges", 1.0)), weight_bonds=float(hparams.get("lc_bonds", 2.0)),
        weight_clamp=[float(hparams.get("snr_clamp_min", 0.05)), float(hparams.get("snr_clamp_max", 1.5))],
        max_atoms=int(sizes.numel() - 1) if sizes is not None else 64)


def _rename(key: str) -> str | None:
    """molequi's name (under ``net.``) of a reference denoiser key; None for keys not copied; '?key' unknown."""
    if not key.startswith("model."):
        return None
    key = key[len("model."):]
    m = re.match(r"gnn\.norms\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"net.norms.{m.group(1)}.{m.group(2)}"
    m = re.match(r"gnn\.convs\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m:
        k, module, kind = m.groups()
        if module == "posnorm" and kind == "weight":
            return f"net.layers.{k}.position_scale"
        return f"net.layers.{k}.{_CONV[module]}.{kind}" if module in _CONV else f"?{key}"
    module, _, kind = key.rpartition(".")
    return f"net.{_TOP[module]}.{kind}" if module in _TOP else f"?{key}"


def eqgat_state_to_molequi(state: dict, model, source: str | None = None) -> dict[str, torch.Tensor]:
    """The reference state dict under molequi's names (denoiser weights, priors as counts), checked against
    ``model``'s own: every parameter and buffer present with its shape, anything unknown refused."""
    ours = model.state_dict()
    out, unknown, shapes = {}, [], []
    for key, value in state.items():
        if _NOT_COPIED.match(key) or key in ("atoms_prior", "charges_prior", "bonds_prior", "empirical_num_nodes"):
            continue
        new = _rename(key)
        if new is None or new.startswith("?") or new not in ours:
            unknown.append(key)
        elif tuple(ours[new].shape) != tuple(value.shape):
            shapes.append(f"{key}: {tuple(value.shape)} vs molequi {tuple(ours[new].shape)}")
        else:
            out[new] = value
    for ref, ours_name in (("atoms_prior", "type_counts"), ("charges_prior", "charge_counts"),
                           ("bonds_prior", "bond_counts"), ("empirical_num_nodes", "size_counts")):
        if ref not in state:
            continue
        if state[ref].numel() != ours[ours_name].numel():
            shapes.append(f"{ref}: {state[ref].numel()} classes vs molequi {ours[ours_name].numel()}")
            continue
        p = state[ref].double().flatten()
        out[ours_name] = p / p.sum().clamp_min(1e-300) * PRIOR_SCALE
    missing = [k for k in ours if k not in out and not k.endswith("_counts")]
    if unknown or shapes or missing:
        raise UnsupportedEQGATOptionError(
            ([f"unknown parameters {unknown[:5]}" + (" ..." if len(unknown) > 5 else "")] if unknown else [])
            + ([f"shapes that differ: {shapes[:3]}"] if shapes else [])
            + ([f"parameters molequi needs that the file lacks: {missing[:5]}"] if missing else []),
            source=source, origin=ORIGIN)
    return out


def import_eqgat_diff(path: str | Path, dtype: torch.dtype = torch.float64):
    """molequi's ``EQGATDiffusion`` with the weights and priors of the reference checkpoint ``path`` (eval)."""
    from molequi.models.generative.categorical import EQGATDiffusion

    state, hparams = read_eqgat_checkpoint(path)
    model = EQGATDiffusion(eqgat_config(state, hparams, source=str(path))).to(dtype)
    mapped = eqgat_state_to_molequi(state, model, source=str(path))
    model.load_state_dict({**model.state_dict(), **mapped}, strict=True)
    return model.eval()


def import_eqgat_diff_checkpoint(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float64) -> dict:
    """Write the reference checkpoint ``path`` as a molequi checkpoint ``out`` (atomically, through
    ``molequi.models.generative.io.save_checkpoint``); returns its payload (model ``eqgat_diff``, task
    ``diffusion``), loadable with ``molequi generate``."""
    from molequi.checkpoint import read_checkpoint
    from molequi.models.generative.io import save_checkpoint

    save_checkpoint(import_eqgat_diff(path, dtype), out, extra_config={"task": {"name": "diffusion"}})
    return read_checkpoint(out)


__all__ = ["read_eqgat_checkpoint", "eqgat_config", "eqgat_state_to_molequi", "import_eqgat_diff",
           "import_eqgat_diff_checkpoint", "UnsupportedEQGATOptionError", "REFERENCE_ELEMENTS",
           "REFERENCE_CHARGES"]
