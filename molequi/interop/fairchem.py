"""Import fairchem-core checkpoints (``torch.save`` of the trainer's state) as molequi checkpoints: eSCN and
EquiformerV2.

fairchem's trainer (``BaseTrainer.save``, fairchem-core 1.x) writes ``{"state_dict": model.state_dict(),
"config": {...}, "normalizers": {...}, "optimizer": ..., "ema": ..., ...}``; the state dict's names carry one
``module.`` per wrapper the model had when it was saved (none for one process, one for DistributedDataParallel,
two in the published OC20 checkpoints of OCPDataParallel + DDP). Older checkpoints keep the model's name in
``config["model"]`` and its options in ``config["model_attributes"]``; newer ones a dict with ``name``.

Reading is safe: the pickle inside the zip archive is scanned without running it (``_pickle_globals``) and any
global outside torch's tensor rebuilding, ``collections.OrderedDict`` and NumPy scalars is refused, naming the
file and the global; the file is then loaded with ``torch.load(weights_only=True)``.

Model: ``escn`` (``molequi.models.escn.ESCN``) with one resolution and ``regress_forces: True`` (fairchem's
direct force head), or a ``hydra`` model (fairchem >= 1.1) made of ``escn_backbone`` with one
``escn_energy_head`` (reduce 'sum') and one ``escn_force_head``. EquiformerV2 (``equiformer_v2``, fairchem's
deprecated one-class model, or a ``hydra`` model of ``equiformer_v2_backbone`` with one energy head
``equiformer_v2_energy_head`` / ``equiformerV2_scalar_head`` (reduce 'sum') and one force head
``equiformer_v2_force_head`` / ``equiformerV2_vector_head``) becomes molequi's ``equiformer_v2``
(``molequi.models.equiformer_v2_fairchem``; fairchem's fixed tables - Wigner / coefficient mappings, index
buffers - are not read, its two S2 grids the model uses are). SCN (``scn``, one class, no HydraModel in
fairchem 1.10) becomes ``molequi.models.scn.SCN``. Other models (other backbones or heads, ...)
and options molequi does not implement are refused by name. Options missing from the config take fairchem's constructor
defaults (cutoff 8, max_neighbors 40, 8 layers, lmax [6], mmax [2], width 1.0, ...), as fairchem would.

Weights: the raw ``state_dict`` (what fairchem's ``OCPCalculator`` loads), or with ``ema=True`` / ``--ema`` the
EMA weights of a training checkpoint (``ckpt["ema"]["shadow_params"]``, what fairchem validates with).

The imported model computes what fairchem's ``model(data)`` returns (energy = 0.001 sum of the per-atom
sphere energies, direct forces), with zero E0s, unit scale and zero shift; the trainer's ``normalizers``
(label mean / std that fairchem's trainer applies after the model) are NOT folded in: they are returned and
printed, so that a user can apply them.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from molequi.errors import CheckpointError, UnsupportedModelError

ORIGIN = "fairchem-core checkpoint"
MODELS = ("escn", "equiformer_v2", "scn")

# fairchem SCN constructor defaults (fairchem-core 1.10.0, models/scn/scn.py) for keys a config leaves out
_SCN_DEFAULTS = {
    "use_pbc": True, "use_pbc_single": True, "regress_forces": True, "otf_graph": False, "max_num_neighbors": 20,
    "cutoff": 8.0, "max_num_elements": 90, "num_interactions": 8, "lmax": 6, "mmax": 1, "num_resolutions": 2,
    "sphere_channels": 128, "sphere_channels_reduce": 128, "hidden_channels": 256, "num_taps": -1,
    "use_grid": True, "num_bands": 1, "num_sphere_samples": 128, "num_basis_functions": 128,
    "distance_function": "gaussian", "basis_width_scalar": 1.0, "distance_resolution": 0.02,
    "show_timing_info": False, "direct_forces": True,
}
# fairchem name -> molequi SCN.Config field (the other keys: use_pbc, regress_forces checked; the rest no effect;
# fairchem's direct_forces argument is unused by its code)
_SCN_FIELDS = {"cutoff": "r_max", "max_num_neighbors": "max_neighbors", "num_interactions": "num_layers",
               **{k: k for k in ("max_num_elements", "lmax", "mmax", "num_resolutions", "sphere_channels",
                                 "sphere_channels_reduce", "hidden_channels", "num_taps", "use_grid", "num_bands",
                                 "num_sphere_samples", "num_basis_functions", "distance_function",
                                 "basis_width_scalar", "distance_resolution")}}

# fairchem EquiformerV2Backbone constructor defaults (fairchem-core 1.10.0, models/equiformer_v2/equiformer_v2.py)
_EQV2_DEFAULTS = {
    "use_pbc": True, "use_pbc_single": False, "regress_forces": True, "otf_graph": True, "max_neighbors": 500,
    "max_radius": 5.0, "max_num_elements": 90, "num_layers": 12, "sphere_channels": 128, "attn_hidden_channels": 128,
    "num_heads": 8, "attn_alpha_channels": 32, "attn_value_channels": 16, "ffn_hidden_channels": 512,
    "norm_type": "rms_norm_sh", "lmax_list": [6], "mmax_list": [2], "grid_resolution": None,
    "num_sphere_samples": 128, "edge_channels": 128, "use_atom_edge_embedding": True,
    "share_atom_edge_embedding": False, "use_m_share_rad": False, "distance_function": "gaussian",
    "num_distance_basis": 512, "attn_activation": "scaled_silu", "use_s2_act_attn": False, "use_attn_renorm": True,
    "ffn_activation": "scaled_silu", "use_gate_act": False, "use_grid_mlp": False, "use_sep_s2_act": True,
    "alpha_drop": 0.1, "drop_path_rate": 0.05, "proj_drop": 0.0, "weight_init": "normal",
    "enforce_max_neighbors_strictly": True, "avg_num_nodes": None, "avg_degree": None,
    "use_energy_lin_ref": False, "load_energy_lin_ref": False, "activation_checkpoint": False,
}
_EQV2_FIELDS = {"max_radius": "r_max", "max_neighbors": "max_neighbors", "max_num_elements": "max_num_elements",
                "num_layers": "num_layers", "sphere_channels": "sphere_channels",
                "attn_hidden_channels": "attn_hidden_channels", "num_heads": "num_heads",
                "attn_alpha_channels": "attn_alpha_channels", "attn_value_channels": "attn_value_channels",
                "ffn_hidden_channels": "ffn_hidden_channels", "norm_type": "norm_type",
                "grid_resolution": "grid_resolution", "edge_channels": "edge_channels",
                "use_grid_mlp": "use_grid_mlp", "alpha_drop": "alpha_drop", "drop_path_rate": "drop_path_rate"}
# options molequi's EquiformerV2 implements only at this value (others refused by name); the rest of
# _EQV2_DEFAULTS not in _EQV2_FIELDS change nothing in the outputs (unused by fairchem's code, init, logging)
_EQV2_ONLY = {"use_pbc": True, "regress_forces": True, "use_atom_edge_embedding": True,
              "share_atom_edge_embedding": False, "use_m_share_rad": False, "distance_function": "gaussian",
              "use_s2_act_attn": False, "use_attn_renorm": True, "use_gate_act": False, "use_sep_s2_act": True,
              "proj_drop": 0.0, "enforce_max_neighbors_strictly": True, "use_energy_lin_ref": False}
_EQV2_HEADS = ({"equiformer_v2_energy_head", "equiformerV2_scalar_head"},
               {"equiformer_v2_force_head", "equiformerV2_vector_head"})

# fairchem eSCN constructor defaults (fairchem-core 1.10.0, models/escn/escn.py) for keys a config leaves out
_ESCN_DEFAULTS = {
    "use_pbc": True, "use_pbc_single": False, "regress_forces": True, "otf_graph": False, "max_neighbors": 40,
    "cutoff": 8.0, "max_num_elements": 90, "num_layers": 8, "lmax_list": [6], "mmax_list": [2],
    "sphere_channels": 128, "hidden_channels": 256, "edge_channels": 128, "num_sphere_samples": 128,
    "distance_function": "gaussian", "basis_width_scalar": 1.0, "distance_resolution": 0.02,
    "show_timing_info": False, "resolution": None, "activation_checkpoint": False,
}
# fairchem name -> molequi ESCN.Config field
_FIELDS = {"cutoff": "r_max", "max_neighbors": "max_neighbors", "max_num_elements": "max_num_elements",
           "num_layers": "num_layers", "sphere_channels": "sphere_channels", "hidden_channels": "hidden_channels",
           "edge_channels": "edge_channels", "num_sphere_samples": "num_sphere_samples",
           "distance_function": "distance_function", "basis_width_scalar": "basis_width_scalar",
           "distance_resolution": "distance_resolution", "resolution": "grid_resolution"}
# options that change nothing in the model's outputs (training / graph-building / logging switches)
_NO_EFFECT = {"use_pbc_single", "otf_graph", "show_timing_info", "activation_checkpoint"}
# molequi's own buffers (no fairchem counterpart): E0s, energy scale / shift, direct-force scale
_OWN = ("head.e0", "head.scale", "head.shift", "force_scale")

_TENSOR_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                   ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
                   ("torch", "Size"), ("torch", "device")}
_NUMPY_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
                  ("_codecs", "encode")}  # a pickled NumPy scalar carries its bytes through _codecs.encode


class UnsupportedFairchemOptionError(UnsupportedModelError):
    """A fairchem checkpoint whose model or options molequi does not implement."""


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _TENSOR_GLOBALS or (module, name) in _NUMPY_GLOBALS:
        return True
    if module == "torch" and (name.endswith("Storage") or name in ("float32", "float64", "float16", "bfloat16")):
        return True
    return module == "numpy.dtypes" and name.endswith("DType")


def read_fairchem_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of a fairchem trainer file, read safely (module docstring)."""
    from molequi.interop.mace import _pickle_globals

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pkl) != 1:
                raise CheckpointError(f"{path}: zip archive without one data.pkl; not written by torch.save")
            found = _pickle_globals(archive.read(pkl[0]))
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a torch.save zip archive ({type(exc).__name__}: {exc}); the file is "
                              "damaged or is not a fairchem checkpoint (a legacy pre-1.6 torch file: load and "
                              "torch.save it again with fairchem)") from None
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt pickle opcodes
        raise CheckpointError(f"{path}: corrupt pickle ({type(exc).__name__}: {exc})") from None
    unsafe = sorted(f"{m}.{n}" if m != "?" else "a global not readable without running the pickle"
                    for m, n in found if not _allowed(m, n))
    if unsafe:
        raise CheckpointError(f"{path}: its pickle names globals outside torch's tensors, OrderedDict and NumPy "
                              f"scalars ({', '.join(unsafe)}); refused without loading it (fairchem checkpoints "
                              "hold tensors and plain values only)")
    numpy_globals = []
    if any(m.startswith("numpy") for m, n in found):
        import numpy as np

        # torch's weights_only unpickler checks the dtype's class too (numpy.dtypes.Float64DType, ...)
        numpy_globals = [np.dtype] + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
        core = getattr(np, "_core", None) or np.core
        numpy_globals.append(core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(numpy_globals):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be read as a fairchem checkpoint ({type(exc).__name__}: "
                              f"{exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) \
            or not isinstance(obj.get("config"), dict):
        raise CheckpointError(f"{path}: not a fairchem trainer checkpoint (expected a dict with 'state_dict' and "
                              "'config', as fairchem's BaseTrainer.save writes)")
    return obj


def model_options(config: dict, source: str | None = None) -> tuple[str, dict]:
    """(model name, options) of a fairchem config: ``{"model": {"name": ..., ...}}`` or the older
    ``{"model": NAME, "model_attributes": {...}}``."""
    model = config.get("model")
    if isinstance(model, dict):
        options = dict(model)
        name = options.pop("name", None)
    else:
        name, options = model, dict(config.get("model_attributes") or {})
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: the checkpoint's config names no model (config['model'])")
    if name == "hydra":
        return _hydra_options(options, source)
    return name, options


def _hydra_options(options: dict, source: str | None) -> tuple[str, dict]:
    """("escn", backbone options) of a HydraModel config that is eSCN's backbone with its energy (reduce
    'sum') and force heads; anything else refused by name."""
    backbone = dict(options.get("backbone") or {})
    heads = options.get("heads") or {}
    if backbone.get("model") == "equiformer_v2_backbone":
        return _eqv2_hydra_options(options, backbone, heads, source)
    bad = [f"HydraModel option '{k}'" for k in options
           if k not in ("backbone", "heads", "otf_graph", "pass_through_head_outputs", "freeze_backbone")]
    if backbone.get("model") != "escn_backbone":
        bad.append(f"HydraModel backbone '{backbone.get('model')}' (molequi imports escn_backbone)")
    modules = {h.get("module"): h for h in heads.values() if isinstance(h, dict)}
    if sorted(modules) != ["escn_energy_head", "escn_force_head"] or len(heads) != 2:
        bad.append(f"HydraModel heads {sorted(str(h.get('module')) for h in heads.values() if isinstance(h, dict))}"
                   " (molequi imports one escn_energy_head and one escn_force_head)")
    elif modules["escn_energy_head"].get("reduce", "sum") != "sum" or \
            set(modules["escn_energy_head"]) - {"module", "reduce"} or set(modules["escn_force_head"]) - {"module"}:
        bad.append(f"HydraModel head options {modules} (molequi: escn_energy_head with reduce 'sum')")
    if bad:
        raise UnsupportedFairchemOptionError(bad, source=source, origin=ORIGIN)
    backbone.pop("model")
    names = {h["module"]: k for k, h in heads.items()}
    backbone["_hydra_heads"] = (names["escn_energy_head"], names["escn_force_head"])
    return "escn", backbone


def _eqv2_hydra_options(options: dict, backbone: dict, heads: dict, source: str | None) -> tuple[str, dict]:
    """("equiformer_v2", backbone options) of a HydraModel of equiformer_v2_backbone with one energy head
    (equiformer_v2_energy_head / equiformerV2_scalar_head, reduce 'sum') and one force head
    (equiformer_v2_force_head / equiformerV2_vector_head); anything else refused by name."""
    bad = [f"HydraModel option '{k}'" for k in options
           if k not in ("backbone", "heads", "otf_graph", "pass_through_head_outputs", "freeze_backbone")]
    kinds = {}
    for name, head in heads.items():
        module = head.get("module") if isinstance(head, dict) else None
        kind = "energy" if module in _EQV2_HEADS[0] else "forces" if module in _EQV2_HEADS[1] else None
        extra = set(head) - {"module", "output_name"} - ({"reduce"} if kind == "energy" else set()) \
            if isinstance(head, dict) else set()
        if kind is None or kind in kinds or extra or (kind == "energy" and head.get("reduce", "sum") != "sum"):
            bad.append(f"HydraModel head '{name}' {head} (molequi imports one energy head with reduce 'sum' and one "
                       "force head of EquiformerV2)")
        kinds[kind] = name
    if set(kinds) != {"energy", "forces"}:
        bad.append(f"HydraModel heads {sorted(heads)}: molequi needs an EquiformerV2 energy and force head")
    if bad:
        raise UnsupportedFairchemOptionError(bad, source=source, origin=ORIGIN)
    backbone.pop("model")
    backbone["_hydra_heads"] = (kinds["energy"], kinds["forces"])
    return "equiformer_v2", backbone


def equiformer_v2_config(options: dict, source: str | None = None):
    """The ``EquiformerV2Fairchem.Config`` of fairchem EquiformerV2 options (refusing, by name, what molequi
    does not implement)."""
    from molequi.models.equiformer_v2_fairchem import AVG_DEGREE, AVG_NUM_NODES, EquiformerV2Fairchem

    options = {k: v for k, v in options.items() if k != "_hydra_heads"}
    opts = {**_EQV2_DEFAULTS, **options}
    bad = [f"unknown EquiformerV2 option '{k}'" for k in options if k not in _EQV2_DEFAULTS]
    bad += [f"{k}: {opts[k]!r} (molequi implements {v!r})" for k, v in _EQV2_ONLY.items() if opts[k] != v]
    lmax, mmax = list(opts["lmax_list"]), list(opts["mmax_list"])
    if len(lmax) != 1 or len(mmax) != 1:
        bad.append(f"lmax_list {lmax} / mmax_list {mmax}: molequi's EquiformerV2 has one resolution")
    if bad:
        raise UnsupportedFairchemOptionError(bad, source=source, origin=ORIGIN)
    cfg = EquiformerV2Fairchem.Config(**{new: opts[old] for old, new in _EQV2_FIELDS.items()}, lmax=int(lmax[0]),
                                      mmax=int(mmax[0]), avg_num_nodes=float(opts["avg_num_nodes"] or AVG_NUM_NODES),
                                      avg_degree=float(opts["avg_degree"] or AVG_DEGREE), direct_forces=True,
                                      edge_roll="random")
    cfg.validate()
    return cfg


_EQV2_FIXED = re.compile(r"(^|\.)(SO3_rotation|mappingReduced|SO3_grid)\.|expand_index$|^energy_lin_ref$")


def _eqv2_rename(cfg):
    """fairchem EquiformerV2 name (prefixes removed) -> molequi's, or None for fairchem's fixed tables (Wigner
    / coefficient mappings, grids other than the two molequi uses, index buffers, unused energy references)."""
    def rename(name: str) -> str | None:
        g = re.match(r"^SO3_grid\.(\d+)\.(\d+)\.(to_grid_mat|from_grid_mat)$", name)
        if g and int(g[1]) == cfg.lmax and int(g[2]) in (cfg.mmax, cfg.lmax):
            return tuple(f"{grid}.{g[3]}" for grid, m in (("edge_grid", cfg.mmax), ("node_grid", cfg.lmax))
                         if m == int(g[2]))
        return None if _EQV2_FIXED.search(name) else (name,)
    return rename


def escn_config(options: dict, source: str | None = None):
    """The ``ESCN.Config`` of a fairchem eSCN's options (refusing, by name, what molequi does not implement)."""
    from molequi.models.escn import ESCN

    options = {k: v for k, v in options.items() if k != "_hydra_heads"}
    opts = {**_ESCN_DEFAULTS, **options}
    bad = [f"unknown eSCN option '{k}'" for k in options if k not in _ESCN_DEFAULTS]
    lmax, mmax = list(opts["lmax_list"]), list(opts["mmax_list"])
    if len(lmax) != 1 or len(mmax) != 1:
        bad.append(f"lmax_list {lmax} / mmax_list {mmax}: molequi's eSCN has one resolution")
    if not opts["regress_forces"]:
        bad.append("regress_forces: False (no force head; molequi's gradient-force eSCN uses edge_roll: fixed "
                   "and is not fairchem's model)")
    if not opts["use_pbc"]:
        bad.append("use_pbc: False (molequi's graph follows each structure's pbc flags)")
    if bad:
        raise UnsupportedFairchemOptionError(bad, source=source, origin=ORIGIN)
    cfg = ESCN.Config(**{new: opts[old] for old, new in _FIELDS.items()}, lmax=int(lmax[0]), mmax=int(mmax[0]),
                      direct_forces=True, edge_roll="random")
    cfg.validate()
    return cfg


def scn_config(options: dict, source: str | None = None):
    """The ``SCN.Config`` of a fairchem SCN's options (refusing, by name, what molequi does not implement)."""
    from molequi.errors import ConfigError
    from molequi.models.scn import SCN

    opts = {**_SCN_DEFAULTS, **options}
    bad = [f"unknown SCN option '{k}'" for k in options if k not in _SCN_DEFAULTS]
    if not opts["regress_forces"]:
        bad.append("regress_forces: False (molequi's SCN has fairchem's direct force head)")
    if not opts["use_pbc"]:
        bad.append("use_pbc: False (molequi's graph follows each structure's pbc flags)")
    cfg = SCN.Config(**{new: opts[old] for old, new in _SCN_FIELDS.items()}, direct_forces=True, edge_roll="random")
    try:
        cfg.validate()
    except ConfigError as exc:
        bad.append(str(exc))
    if bad:
        raise UnsupportedFairchemOptionError(bad, source=source, origin=ORIGIN)
    return cfg


def _plain_name(key: str, heads: tuple[str, str] | None = None) -> str:
    """fairchem's parameter name without ``module.`` prefixes, HydraModel's ``backbone.`` and
    ``output_heads.<energy head>.`` / ``output_heads.<force head>.`` (eSCN's own names remain)."""
    name = re.sub(r"^(module\.)+", "", key)
    if heads is not None:
        name = name.removeprefix("backbone.")
        for head in heads:
            name = re.sub(rf"^output_heads\.{re.escape(head)}\.", "", name)
    return {"sphharm_weights.0": "sphharm_weights"}.get(name, name)


def state_to_molequi(state: dict, model, source: str | None = None,
                     heads: tuple[str, str] | None = None, rename=None) -> dict[str, torch.Tensor]:
    """fairchem's eSCN state dict (any number of ``module.`` prefixes; a HydraModel's with ``heads``, the names
    of its energy and force heads) under molequi's names, checked against ``model``'s own: every tensor present
    with its shape, nothing unknown."""
    ours = model.state_dict()
    out, unknown, shapes = {}, [], []
    for key, value in state.items():
        names = rename(_plain_name(key, heads)) if rename is not None else (_plain_name(key, heads),)
        for name in names or ():  # rename: None for fairchem's fixed tables molequi does not read
            if name not in ours:
                unknown.append(key)
            elif tuple(ours[name].shape) != tuple(value.shape):
                shapes.append(f"{key}: {tuple(value.shape)} vs molequi {tuple(ours[name].shape)}")
            else:
                out[name] = value
    for key in _OWN:  # molequi's energy head and force scale: set by the import's statistics (identity)
        if key in ours:
            out[key] = ours[key]
    missing = [k for k in ours if k not in out]
    if unknown or shapes or missing:
        raise UnsupportedFairchemOptionError(
            ([f"unknown parameters {unknown[:5]}" + (" ..." if len(unknown) > 5 else "")] if unknown else [])
            + ([f"shapes that differ from the config's: {shapes[:3]}"] if shapes else [])
            + ([f"parameters molequi needs that the file lacks: {missing[:5]}"] if missing else []),
            source=source, origin=ORIGIN)
    return out


_NOT_TRAINED = re.compile(r"^(sphere_points|sphharm_weights(\.\d+)?|.*distance_expansion\.offset|"
                          r"layer_blocks\.\d+\.message_block\.edge_block\.distance_expansion\..*)$")


_EQV2_NOT_TRAINED = re.compile(_EQV2_FIXED.pattern + r"|distance_expansion\.offset$|balance_degree_weight$|_grid_mat$")


def ema_state_dict(state: dict, ema, source: str | None = None, not_trained: re.Pattern | None = None
                   ) -> dict[str, torch.Tensor]:
    """``state`` with its trainable parameters replaced by fairchem's EMA weights (``ckpt["ema"]``:
    ``shadow_params``, one per parameter that requires grad, in ``model.parameters()`` order: the state dict's
    order without buffers, the fixed sphere points / harmonics and the repeats of the shared distance basis)."""
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list) or not all(torch.is_tensor(t) for t in shadow):
        raise CheckpointError(f"{source}: no EMA weights (ckpt['ema']['shadow_params']) to import; drop --ema")
    if not_trained is None:  # eSCN
        keys = [k for k in state if not _NOT_TRAINED.match(_plain_name(k, ("", "")).removeprefix("backbone."))]
    else:  # EquiformerV2: buffers (fixed tables) and the energy references (requires_grad False) are not in it
        keys = [k for k in state
                if not not_trained.search(re.sub(r"^(module\.)*(backbone\.|output_heads\.[^.]+\.)?", "", k))]
    if len(keys) != len(shadow) or any(tuple(state[k].shape) != tuple(t.shape) for k, t in zip(keys, shadow)):
        raise CheckpointError(f"{source}: the EMA holds {len(shadow)} tensors that do not line up with the "
                              f"{len(keys)} trainable parameters of the state dict; import without --ema")
    return {**state, **dict(zip(keys, shadow))}


def import_fairchem(path: str | Path, dtype: torch.dtype = torch.float64, ema: bool = False):
    """(molequi model in eval mode and ``dtype``, the checkpoint's normalizers) of the fairchem checkpoint;
    ``ema``: fairchem's exponential-moving-average weights instead of the raw ones (``ema_state_dict``)."""
    from molequi.data.statistics import Statistics
    from molequi.models.equiformer_v2_fairchem import EquiformerV2Fairchem
    from molequi.models.escn import ESCN

    ckpt = read_fairchem_checkpoint(path)
    name, options = model_options(ckpt["config"], source=str(path))
    if name not in MODELS:
        raise UnsupportedFairchemOptionError(
            [f"model '{name}': molequi imports fairchem's {', '.join(MODELS)} (also as a hydra model with the "
             "escn_backbone or equiformer_v2_backbone); other backbones are not implemented"],
            source=str(path), origin=ORIGIN)
    heads = options.get("_hydra_heads")
    eqv2 = name == "equiformer_v2"
    if name == "scn":
        from molequi.models.scn import SCN

        cfg = scn_config(options, source=str(path))
    else:
        cfg = equiformer_v2_config(options, source=str(path)) if eqv2 else escn_config(options, source=str(path))
    stats = Statistics(elements=list(range(1, min(cfg.max_num_elements, 119))))
    model = SCN(cfg, stats) if name == "scn" else EquiformerV2Fairchem(cfg, stats) if eqv2 else ESCN(cfg, stats)
    state = ckpt["state_dict"]
    if ema:
        state = ema_state_dict(state, ckpt.get("ema"), str(path), _EQV2_NOT_TRAINED if eqv2 else None)
    model.load_state_dict(state_to_molequi(state, model, source=str(path), heads=heads,
                                           rename=_eqv2_rename(cfg) if eqv2 else None), strict=True)
    normalizers = {k: {kk: float(vv) for kk, vv in v.items() if torch.is_tensor(vv) and vv.numel() == 1}
                   for k, v in (ckpt.get("normalizers") or {}).items() if isinstance(v, dict)}
    return model.to(dtype).eval(), normalizers


def import_fairchem_checkpoint(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float64,
                               ema: bool = False) -> dict:
    """Write the fairchem checkpoint ``path`` as a molequi checkpoint ``out`` (atomically); returns its payload
    (``molequi.checkpoint.make_payload``) with the normalizers under ``payload['fairchem_normalizers']``."""
    from molequi.checkpoint import make_payload, save_model
    from molequi.config import to_plain

    model, normalizers = import_fairchem(path, dtype, ema=ema)
    name = {"ESCN": "escn", "SCN": "scn"}.get(type(model).__name__, "equiformer_v2")
    payload = make_payload(config={"model": {"name": name, **to_plain(model.config)}},
                           statistics=model.statistics.to_dict(), model_state=model.state_dict(), dtype=dtype)
    payload["fairchem_normalizers"] = normalizers
    save_model(payload, out)
    return payload


__all__ = ["read_fairchem_checkpoint", "model_options", "ema_state_dict", "escn_config", "equiformer_v2_config", "scn_config", "state_to_molequi", "import_fairchem",
           "import_fairchem_checkpoint", "UnsupportedFairchemOptionError"]
