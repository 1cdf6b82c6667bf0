"""Import a trained EDM (Hoogeboom et al. 2022, github.com/ehoogeboom/e3_diffusion_for_molecules) run folder.

An EDM run folder ``outputs/<exp_name>/`` holds

- ``args.pickle``: the pickled ``argparse.Namespace`` of the run (architecture, schedule, dataset),
- ``generative_model_ema.npy`` / ``generative_model.npy`` (and ``..._<epoch>.npy``): the state dict of
  ``EnVariationalDiffusion``, written by EDM's ``utils.save_model`` with ``torch.save`` despite the name.

``read_edm_args`` reads the namespace with a restricted unpickler (``argparse.Namespace`` and plain values
only); ``edm_config`` maps it onto ``EDM.Config`` (options molequi's EDM lacks raise
``UnsupportedEDMOptionError`` listing them); ``edm_state_to_molequi`` maps the weights (loaded with
``torch.load(weights_only=True)``); ``import_edm_run`` does all of it and writes an ordinary molequi
checkpoint (``molequi.models.generative.io.save_checkpoint``).

Weight mapping (EDM name -> molequi name, block k, H = nf)::

    dynamics.egnn.embedding / embedding_out           -> dynamics.embedding / embedding_out
    e_block_k.gcl_0.edge_mlp.{0,2}                    -> blocks.k.gcl.phi_e.{0,2}      ([h_i, h_j, d_ij, d0_ij])
    e_block_k.gcl_0.node_mlp.{0,2}                    -> blocks.k.gcl.phi_h.{0,2}      ([h_i, sum_j m_ij])
    e_block_k.gcl_0.att_mlp.0                         -> blocks.k.gcl.phi_att.0
    e_block_k.gcl_equiv.coord_mlp.0 W (H, 2H + 2), b  -> coords.coord_in.lin_i (W[:, :H], b),
                                                         lin_j (W[:, H:2H]), lin_e (W[:, 2H:])
    e_block_k.gcl_equiv.coord_mlp.{2,4}               -> blocks.k.coords.coord_mlp.{1,3}

EDM's tabulated ``gamma.gamma`` (float32) is not copied: molequi recomputes the same schedule in float64.
The molecule-size histogram (log p(N) and the sizes ``sample`` draws) and the property normalisation of a
conditioned model are not stored in a run folder: EDM takes them from ``configs/datasets_config.py`` and the
training data. ``read_size_histogram`` reads the histogram from an EDM source tree (parsed as literals,
nothing executed); ``context_norms`` gives (mean, mean absolute deviation) per conditioning property.
"""

from __future__ import annotations

import argparse
import ast
import copyreg
import io
from pathlib import Path

import numpy as np
import torch

from molequi.data.pickle_safe import RestrictedUnpickler, UnsafePickleError
from molequi.data.qm9 import edm_qm9_split, edm_qm9_subsets  # EDM's QM9 split (data.options.split: edm)
from molequi.errors import CheckpointError, ConfigError, FormatError, InputError

# atom decoders of EDM's datasets (configs/datasets_config.py ``atom_decoder``), as atomic numbers
_DECODERS = {
    ("qm9", False): [1, 6, 7, 8, 9],
    ("qm9", True): [6, 7, 8, 9],
    ("qm9_second_half", False): [1, 6, 7, 8, 9],
    ("geom", False): [1, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 33, 35, 53, 80, 83],
}
_LARGEST = {"qm9": 29, "qm9_second_half": 29, "geom": 181}  # largest molecule of each dataset (atoms)

# options that shape the network or the diffusion, with the value molequi's EDM supports where it is fixed
_ARCH = {"model", "probabilistic_model", "condition_time", "n_layers", "inv_sublayers", "nf", "tanh",
         "attention", "norm_constant", "sin_embedding", "normalization_factor", "aggregation_method",
         "include_charges", "diffusion_steps", "diffusion_noise_schedule", "diffusion_noise_precision",
         "normalize_factors", "conditioning", "context_node_nf", "dataset", "remove_h"}
# options that only steer EDM's training loop, logging or data loading: read and ignored
_TRAINING_ONLY = {"exp_name", "diffusion_loss_type", "n_epochs", "batch_size", "lr", "brute_force", "actnorm",
                  "break_train_epoch", "dp", "clip_grad", "trace", "ode_regularization", "datadir",
                  "filter_n_atoms", "dequantization", "n_report_steps", "wandb_usr", "no_wandb", "online",
                  "no_cuda", "save_model", "generate_epochs", "num_workers", "test_epochs", "data_augmentation",
                  "resume", "start_epoch", "ema_decay", "augment_noise", "n_stability_samples",
                  "visualize_every_batch", "filter_molecule_size", "sequential", "cuda", "current_epoch"}
WEIGHT_FILES = ("generative_model_ema.npy", "generative_model.npy")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# the type every option edm_config converts must have (EDM's argparse types), and how to say it
_OPTION_TYPES = {
    "nf": (_count, "a positive integer"), "n_layers": (_count, "a positive integer"),
    "diffusion_steps": (_count, "a positive integer"), "inv_sublayers": (_count, "a positive integer"),
    "context_node_nf": (lambda v: v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        "a non-negative integer"),
    "diffusion_noise_precision": (_number, "a finite number"), "normalization_factor": (_number, "a finite number"),
    "norm_constant": (_number, "a finite number"),
    "normalize_factors": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_number, v)),
                          "three finite numbers"),
    "conditioning": (lambda v: v is None or isinstance(v, (list, tuple)) and all(isinstance(u, str) for u in v),
                     "a list of property names"),
    "dataset": (lambda v: isinstance(v, str), "a dataset name"),
    "diffusion_noise_schedule": (lambda v: isinstance(v, str), "a schedule name"),
    **{k: (lambda v: isinstance(v, (bool, int)), "true or false")
       for k in ("remove_h", "include_charges", "attention", "tanh", "condition_time", "sin_embedding")},
}


class UnsupportedEDMOptionError(ConfigError):
    """An EDM run uses an option (or a value of one) that molequi's EDM does not implement."""


class MissingEDMWeightsError(CheckpointError):
    """An EDM run folder without a ``generative_model*.npy`` state dict."""


class _NamespaceUnpickler(RestrictedUnpickler):
    """``RestrictedUnpickler`` admitting only ``argparse.Namespace`` (and the protocol 0/1 helpers that
    rebuild a plain object): ``args.pickle`` holds nothing else."""

    _TABLE = {("argparse", "Namespace"): argparse.Namespace,
              ("copyreg", "_reconstructor"): copyreg._reconstructor,
              ("copy_reg", "_reconstructor"): copyreg._reconstructor,
              ("builtins", "object"): object, ("__builtin__", "object"): object}

    def find_class(self, module: str, name: str):
        try:
            return self._TABLE[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to unpickle global {module}.{name}: an EDM args.pickle holds "
                                    "only an argparse.Namespace of plain values (nothing was executed)",
                                    source=self.source) from None


def read_edm_args(path: str | Path) -> dict:
    """The options of an EDM run (``args.pickle``) as a plain dict; anything but an ``argparse.Namespace`` of
    plain values (str, numbers, bool, None, lists/tuples/dicts of them) raises ``UnsafePickleError``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="an EDM run folder has args.pickle next to its weights")
    try:
        obj = _NamespaceUnpickler(io.BytesIO(path.read_bytes()), source=str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or not a pickle; nothing ran
        raise FormatError(f"cannot unpickle ({type(exc).__name__}: {exc})", source=str(path)) from None
    if not isinstance(obj, argparse.Namespace):
        raise UnsafePickleError(f"holds a {type(obj).__name__}, not an argparse.Namespace", source=str(path))
    options = vars(obj)

    def plain(v) -> bool:  # iterative walk: a pickle can nest deeper than Python's recursion limit (or in a cycle)
        # height / size: nesting depth and number of values of each container checked, counting shared ones
        # every time they appear (as repr and == would)
        visiting, height, size, todo = set(), {}, {}, [(v, False)]
        while todo:
            u, leaving = todo.pop()
            items = list(u.values()) if isinstance(u, dict) else u
            if leaving:  # every child is checked: far deeper or larger than any EDM option is refused
                visiting.discard(id(u))
                height[id(u)] = 1 + max((height.get(id(w), 0) for w in items), default=0)
                size[id(u)] = 1 + sum(size.get(id(w), 1) for w in items)
                if height[id(u)] > 8 or size[id(u)] > 100_000:
                    return False
                continue
            if u is None or isinstance(u, (str, int, float, bool)) or id(u) in height:
                continue  # shared through the pickle's memo: checked once
            if not isinstance(u, (list, tuple, dict)) or id(u) in visiting:  # not plain, or a cycle
                return False
            if isinstance(u, dict) and not all(isinstance(k, (str, int)) for k in u):
                return False
            visiting.add(id(u))
            todo.append((u, True))
            todo.extend((w, False) for w in items)
        return True

    bad = sorted(k for k, v in options.items() if not plain(v))
    if bad:
        raise UnsafePickleError(f"options {bad} are not plain values (str, numbers, bool, None and lists / "
                                "tuples / dicts of them, at most 8 deep and 100000 values, without cycles)",
                                source=str(path))
    return dict(options)


def edm_config(options: dict, *, size_histogram: dict[int, int] | None = None):
    """``EDM.Config`` of an EDM run's options (``read_edm_args``).

    Raises ``UnsupportedEDMOptionError`` naming every option molequi's EDM lacks: unknown option names, the
    GNN dynamics, a learned or EDM-cosine noise schedule, sinusoidal distance embeddings, more than one
    invariant sublayer, mean aggregation, no time conditioning, an unknown dataset."""
    from molequi.models.generative.edm import EDM

    unknown = sorted(set(options) - _ARCH - _TRAINING_ONLY)
    problems = [f"unknown option '{k}'" for k in unknown]
    wrong = [f"{k}={options[k]!r} ({what})" for k, (ok, what) in _OPTION_TYPES.items()
             if k in options and not ok(options[k])]
    if wrong:  # checked first: the mapping below converts these values
        raise UnsupportedEDMOptionError("this EDM run's options have values of the wrong type: "
                                        + "; ".join(wrong) + " (is the args.pickle damaged?)")
    get = options.get
    fixed = {"model": "egnn_dynamics", "probabilistic_model": "diffusion", "condition_time": True,
             "inv_sublayers": 1, "sin_embedding": False, "aggregation_method": "sum"}
    for key, value in fixed.items():
        if get(key, value) != value:
            problems.append(f"{key}={get(key)!r} (molequi supports {value!r})")
    schedule = str(get("diffusion_noise_schedule", "polynomial_2"))
    if not schedule.startswith("polynomial_"):
        problems.append(f"diffusion_noise_schedule={schedule!r} (molequi supports EDM's polynomial_<p>)")
    dataset, remove_h = get("dataset", "qm9"), bool(get("remove_h", False))
    if (dataset, remove_h) not in _DECODERS:
        problems.append(f"dataset={dataset!r} with remove_h={remove_h} (known: "
                        f"{sorted({d for d, _ in _DECODERS})})")
    conditioning = list(get("conditioning", []) or [])
    if int(get("context_node_nf", len(conditioning)) or 0) != len(conditioning):
        problems.append(f"context_node_nf={get('context_node_nf')} with conditioning={conditioning}")
    if problems:
        raise UnsupportedEDMOptionError("this EDM run uses options molequi's EDM does not implement: "
                                        + "; ".join(problems))
    for key in ("nf", "n_layers", "diffusion_steps", "normalize_factors", "include_charges", "attention", "tanh"):
        if key not in options:
            raise UnsupportedEDMOptionError(f"the EDM run's options lack '{key}'; is this an EDM args.pickle?")
    largest = max(size_histogram) if size_histogram else _LARGEST[dataset]
    return EDM.Config(
        elements=list(_DECODERS[(dataset, remove_h)]), hidden=int(options["nf"]), layers=int(options["n_layers"]),
        timesteps=int(options["diffusion_steps"]), schedule=schedule,
        precision=float(get("diffusion_noise_precision", 1e-5)),
        include_charges=bool(options["include_charges"]),
        norm_values=[float(v) for v in options["normalize_factors"]], coords_range=15.0,
        coords_range_per_layer=15.0,  # EDM's EGNN gives every block the whole range (its default 15)
        normalization_factor=float(get("normalization_factor", 1.0)), attention=bool(options["attention"]),
        tanh=bool(options["tanh"]), norm_constant=float(get("norm_constant", 1.0)),
        condition_on=conditioning, max_atoms=max(64, int(largest)))


class StateMapper:
    """Copies the weights of a foreign state dict (EDM's, GeoLDM's) onto a molequi model's state dict by name:
    ``take`` a foreign key, ``put`` a molequi key (shapes checked), ``egnn`` one EGNN's weights (the mapping in
    the module docstring), ``result`` the full state dict once every foreign weight is used and every molequi
    weight filled (else ``CheckpointError`` naming the keys)."""

    def __init__(self, state: dict, model, what: str = "EDM", keep=lambda key: False, used=()):
        self.state = {k.removeprefix("module."): v for k, v in state.items()}
        self.target = model.state_dict()
        self.out = {k: v.clone() for k, v in self.target.items() if keep(k)}  # buffers kept as they are
        self.used, self.what = set(used), what

    def take(self, key):
        if key not in self.state:
            raise CheckpointError(f"the {self.what} state dict lacks '{key}' (n_layers / options do not match "
                                  "the weights?)")
        self.used.add(key)
        return self.state[key]

    def put(self, key, value):
        if key not in self.target:
            raise CheckpointError(f"molequi's {self.what} has no parameter '{key}'")
        if tuple(value.shape) != tuple(self.target[key].shape):
            raise CheckpointError(f"'{key}': {self.what} weight of shape {tuple(value.shape)}, molequi expects "
                                  f"{tuple(self.target[key].shape)} (nf / features / context do not match)")
        self.out[key] = value.detach().clone().to(self.target[key].dtype)

    def linear(self, src: str, dst: str):
        for p in ("weight", "bias"):
            self.put(f"{dst}.{p}", self.take(f"{src}.{p}"))

    def egnn(self, src: str, dst: str, layers: int, hidden: int, attention: bool):
        """EDM's ``EGNN`` under prefix ``src`` (e.g. ``dynamics.egnn.``) -> an ``EDMDynamics`` under ``dst``."""
        H = hidden
        for name in ("embedding", "embedding_out"):
            self.linear(f"{src}{name}", f"{dst}{name}")
        for k in range(layers):
            s, d = f"{src}e_block_{k}.", f"{dst}blocks.{k}."
            for a, b in (("edge_mlp.0", "phi_e.0"), ("edge_mlp.2", "phi_e.2"), ("node_mlp.0", "phi_h.0"),
                         ("node_mlp.2", "phi_h.2")) + ((("att_mlp.0", "phi_att.0"),) if attention else ()):
                self.linear(f"{s}gcl_0.{a}", f"{d}gcl.{b}")
            w, bias = self.take(f"{s}gcl_equiv.coord_mlp.0.weight"), self.take(f"{s}gcl_equiv.coord_mlp.0.bias")
            self.put(f"{d}coords.coord_in.lin_i.weight", w[:, :H])
            self.put(f"{d}coords.coord_in.lin_i.bias", bias)
            self.put(f"{d}coords.coord_in.lin_j.weight", w[:, H:2 * H])
            self.put(f"{d}coords.coord_in.lin_e.weight", w[:, 2 * H:])
            for a, b in (("2.weight", "1.weight"), ("2.bias", "1.bias"), ("4.weight", "3.weight")):
                self.put(f"{d}coords.coord_mlp.{b}", self.take(f"{s}gcl_equiv.coord_mlp.{a}"))

    def result(self) -> dict:
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise CheckpointError(f"{self.what} weights molequi's {self.what} has no place for: {unused[:6]}"
                                  f"{' ...' if len(unused) > 6 else ''} (inv_sublayers or options do not match)")
        missing = sorted(k for k in self.target if k not in self.out)
        if missing:
            raise CheckpointError(f"molequi weights left unfilled by the {self.what} state dict: {missing[:6]}")
        return self.out


def edm_state_to_molequi(state: dict, model) -> dict:
    """Map an ``EnVariationalDiffusion`` state dict onto ``model`` (an ``EDM`` of ``edm_config``): returns
    a full state dict for ``model.load_state_dict``. Every EDM weight must be used and every molequi weight
    filled, with matching shapes, else ``CheckpointError`` names the key."""
    m = StateMapper(state, model, "EDM", keep=lambda k: not k.startswith("dynamics."),
                    used={"buffer", "gamma.gamma"})  # buffers: size histogram, context normalisation
    m.egnn("dynamics.egnn.", "dynamics.", model.config.layers, model.config.hidden, model.config.attention)
    return m.result()


def find_weights(run_dir: str | Path, weights: str | Path | None = None) -> Path:
    """The weights file of a run folder: ``weights`` if given (a name inside the folder or a path), else
    ``generative_model_ema.npy`` (EDM's EMA weights, what it evaluates), else ``generative_model.npy``."""
    run_dir = Path(run_dir)
    if weights is not None:
        path = Path(weights) if Path(weights).is_absolute() or Path(weights).exists() else run_dir / weights
        if not path.is_file():
            raise MissingEDMWeightsError(f"{path}: no such EDM weights file")
        return path
    for name in WEIGHT_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    found = sorted(p.name for p in run_dir.glob("generative_model*.npy"))
    raise MissingEDMWeightsError(
        f"{run_dir}: no EDM weights ({' or '.join(WEIGHT_FILES)})"
        + (f"; epoch snapshots {found} exist: pass one with --weights" if found else
           "; copy the run's generative_model_ema.npy (EDM writes it next to args.pickle) into the folder"))


def load_edm_state(path: str | Path) -> dict:
    """EDM's state dict from ``generative_model*.npy`` (a ``torch.save`` file), read with ``weights_only``."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a torch file, truncated, or a pickle of a class
        raise CheckpointError(f"{path}: cannot be read as EDM weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state dict of tensors (names -> tensors); is it EDM's "
                              "generative_model*.npy?")
    return state


def read_size_histogram(edm_code: str | Path, dataset: str = "qm9", remove_h: bool = False) -> dict[int, int]:
    """The molecule-size histogram ``n_nodes`` of an EDM dataset from EDM's ``configs/datasets_config.py``
    (parsed as Python literals with ``ast``; nothing in it is executed)."""
    path = Path(edm_code) / "configs" / "datasets_config.py"
    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="give the root of EDM's source tree")
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            try:
                info = ast.literal_eval(node.value)
            except ValueError:
                continue
            if info.get("name") == dataset and bool(info.get("with_h", True)) == (not remove_h) \
                    and "n_nodes" in info:
                return {int(k): int(v) for k, v in info["n_nodes"].items()}
    raise InputError(f"no n_nodes histogram for dataset '{dataset}' (remove_h={remove_h})", source=str(path))


def build_edm_model(options: dict, state: dict, *, size_histogram: dict[int, int] | None = None,
                    context_norms: dict[str, tuple[float, float]] | None = None):
    """A molequi ``EDM`` carrying an EDM run's architecture and weights (float32, eval mode)."""
    from molequi.models.generative.edm import EDM

    cfg = edm_config(options, size_histogram=size_histogram)
    model = EDM(cfg)
    model.load_state_dict(edm_state_to_molequi(state, model))
    if size_histogram:
        for n, count in size_histogram.items():
            model.size_counts[int(n)] = float(count)
    if context_norms:
        missing = [k for k in cfg.condition_on if k not in context_norms]
        extra = [k for k in context_norms if k not in cfg.condition_on]
        if missing or extra:
            raise InputError(f"context_norms must give (mean, mad) for exactly {cfg.condition_on}; "
                             f"missing {missing}, not conditioned on {extra}")
        with torch.no_grad():
            for i, key in enumerate(cfg.condition_on):
                mean, mad = context_norms[key]
                model.context_shift[i], model.context_scale[i] = float(mean), float(mad)
            model.context_ready.fill_(True)
    return model.eval()


def import_edm_run(run_dir: str | Path, out: str | Path, *, weights: str | Path | None = None,
                   edm_code: str | Path | None = None,
                   context_norms: dict[str, tuple[float, float]] | None = None):
    """Read an EDM run folder and write it as a molequi checkpoint ``out``; returns the model.

    edm_code       EDM's source tree: the size histogram comes from its ``configs/datasets_config.py``
                   (without it the checkpoint has no histogram: sampling needs explicit sizes, and the
                   likelihood cannot add log p(N))
    context_norms  {property: (mean, mean absolute deviation)} of a conditioned model, in the property's
                   QM9 units (EDM computes them on its training split)
    """
    from molequi.models.generative.io import save_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder", hint="give an EDM run folder, outputs/<exp_name>")
    options = read_edm_args(run_dir / "args.pickle")
    edm_config(options)  # refuse unsupported options before touching the (large) weights
    state = load_edm_state(find_weights(run_dir, weights))
    hist = None
    if edm_code is not None:
        hist = read_size_histogram(edm_code, options.get("dataset", "qm9"), bool(options.get("remove_h", False)))
    model = build_edm_model(options, state, size_histogram=hist, context_norms=context_norms)
    save_checkpoint(model, out)
    return model


__all__ = ["StateMapper", "edm_qm9_split", "edm_qm9_subsets", "read_edm_args", "edm_config", "edm_state_to_molequi", "find_weights", "load_edm_state",
           "read_size_histogram", "build_edm_model", "import_edm_run", "UnsupportedEDMOptionError",
           "MissingEDMWeightsError"]
