"""Import mace-torch models (``*.model`` files written by ``mace_run_train``) as molequi MACE models.

Reading is split in two processes so that molequi never unpickles a foreign module:

1. ``inspect_model_file`` looks at the file without executing it (zip layout, the globals its pickle
   names) and refuses TorchScript archives, state dicts, non-torch files and pickles that name anything
   outside torch / e3nn / mace / numpy / collections, saying where the file comes from.
2. A python that has mace-torch (the peer venv of ``scripts/bench/setup_peers.sh``; mace-torch pins e3nn
   0.4.4, molequi needs 0.6) runs ``_mace_export.py``, which loads the module and writes a dict of plain
   values and float64 tensors; molequi reads that with ``torch.load(weights_only=True)``.

``mace_config`` maps the hyperparameters onto ``MACE.Config`` (unsupported options raise
``UnsupportedModelError`` listing all of them) and ``mace_state_dict`` maps the weights, each one with its
normalisation made explicit (mace-torch's effective matrices M, molequi's weights W):

    embedding            W[z, c]           = M[z, c]                          (one-hot @ M)
    linear / linear_up   W_l               = M_l sqrt(c_in)                   (molequi divides by sqrt(c_in))
    skip (element)       W_l[z, u, v]      = M_l[u, z, v] sqrt(c_in)
    radial MLP layer k   W_k               = M_k sqrt(in_k) a_{k-1} / SILU_NORM   (a: e3nn's silu constant)
    last radial layer    columns of path p times g_p / sqrt(2 l3 + 1)         (g_p: e3nn path weight)
    conv mix             W_L[(p, u), v]    = M_{p -> L}[u, v] sqrt(paths(L) c)
    symmetric contraction w = w_mace R     (R = ``change_of_basis`` of mace-torch's U on molequi's basis)
    readouts             w = M sqrt(c),  w2 = M2 a sqrt(hidden) / SILU_NORM  (the chosen head's slice)

so an imported model computes mace-torch's function up to floating-point round-off (checked by
``scripts/parity/check.py mace``). One head of a multi-head model is imported (default: the one mace-torch's
calculator picks: the only head, else the one named "default").
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickletools
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ForeignModelError, UnsupportedModelError
from molequi.nn.equivariant import ChannelIrreps
from molequi.nn.radial import SILU_NORM
from molequi.nn.symmetric_contraction import change_of_basis

ORIGIN = "mace-torch model file"
EXPORTER = Path(__file__).with_name("_mace_export.py")
_ALLOWED_ROOTS = {"torch", "e3nn", "mace", "numpy", "collections", "builtins", "__builtin__", "copyreg",
                  "_codecs", "opt_einsum_fx", "opt_einsum", "typing"}
_FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
                       "globals", "locals", "vars", "input", "breakpoint"}
_KNOWN_CLASSES = {
    "mace.modules.models.MACE", "mace.modules.models.ScaleShiftMACE",
    "mace.modules.blocks.AtomicEnergiesBlock", "mace.modules.blocks.EquivariantProductBasisBlock",
    "mace.modules.blocks.LinearNodeEmbeddingBlock", "mace.modules.blocks.LinearReadoutBlock",
    "mace.modules.blocks.NonLinearReadoutBlock", "mace.modules.blocks.RadialEmbeddingBlock",
    "mace.modules.blocks.RealAgnosticInteractionBlock", "mace.modules.blocks.RealAgnosticResidualInteractionBlock",
    "mace.modules.blocks.ScaleShiftBlock", "mace.modules.irreps_tools.reshape_irreps",
    "mace.modules.radial.BesselBasis", "mace.modules.radial.GaussianBasis", "mace.modules.radial.ChebychevBasis",
    "mace.modules.radial.PolynomialCutoff", "mace.modules.radial.ZBLBasis", "mace.modules.radial.AgnesiTransform",
    "mace.modules.radial.SoftTransform", "mace.modules.symmetric_contraction.Contraction",
    "mace.modules.symmetric_contraction.SymmetricContraction",
    "mace.modules.wrapper_ops.SymmetricContractionWrapper",
    "e3nn.math._normalize_activation.normalize2mom", "e3nn.nn._activation.Activation",
    "e3nn.nn._fc.FullyConnectedNet", "e3nn.nn._fc._Layer", "e3nn.o3._linear.Linear",
    "e3nn.o3._spherical_harmonics.SphericalHarmonics",
    "e3nn.o3._tensor_product._sub.FullyConnectedTensorProduct",
    "e3nn.o3._tensor_product._tensor_product.TensorProduct",
    "torch.fx.graph_module.GraphModule", "torch.jit._script.RecursiveScriptModule",
    "torch.nn.modules.container.ModuleList", "torch.nn.modules.container.ParameterList",
    "torch.nn.modules.container.Sequential",
}
_TRANSFORMS = {"None": "none", "AgnesiTransform": "agnesi", "SoftTransform": "soft"}


# ---------------------------------------------------------------------------------------------- reading
def _pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every global a pickle names (GLOBAL, INST, STACK_GLOBAL), read without executing it.

    A STACK_GLOBAL counts only when the two values under it were pushed as strings by the opcodes right before
    it (directly or from the memo); anything else (strings rearranged by POP / memo tricks, an extension-registry
    code) is recorded as ("?", "?"), which no allow-list admits."""
    found: set[tuple[str, str]] = set()
    recent: list[str | None] = []  # what the last opcodes pushed: a string, or None for anything else
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):  # INST 'module name' also calls the class it names
            module, name = arg.split(" ", 1)
            found.add((module, name))
            recent.append(None)
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            recent.append(arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):  # the stack is unchanged
            memo[arg if op.name != "MEMOIZE" else len(memo)] = recent[-1] if recent else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            module, name = recent[-2:] if len(recent) >= 2 else (None, None)
            found.add((module, name) if isinstance(module, str) and isinstance(name, str) else ("?", "?"))
            recent.append(None)
        elif op.name in ("EXT1", "EXT2", "EXT4"):  # a global from copyreg's extension registry
            found.add(("?", "?"))
            recent.append(None)
        else:
            recent.append(None)
    return found


def inspect_model_file(path: str | os.PathLike) -> str:
    """Check a mace-torch file without executing it; return its origin (a phrase) or raise ForeignModelError.

    Accepts a ``torch.save`` zip archive whose pickle names only torch / e3nn / mace / numpy / collections
    globals and a MACE model class. Refuses, naming the file: a missing or unreadable file, a TorchScript
    archive (``*_compiled.model``), a state dict or training checkpoint (no hyperparameters), anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise ForeignModelError("does not exist", source=str(path), origin=ORIGIN)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"\x80\x02\x8a\x0a"):  # pickle protocol 2 + torch's legacy magic-number header
        raise ForeignModelError(
            "is in torch's legacy (pre-1.6, non-zip) serialisation, which molequi does not inspect; load and "
            "torch.save it again in a python with mace-torch, then import the new file",
            source=str(path), origin="legacy torch.save file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ForeignModelError(
            f"not a torch.save zip archive ({type(exc).__name__}: {exc}); the file is corrupt, truncated, or "
            "not a model written by mace-torch", source=str(path), origin="unknown file") from exc
    with archive:
        names = archive.namelist()
        if any(n.split("/", 1)[-1].startswith("code/") for n in names) or any(
                n.endswith("constants.pkl") for n in names):
            raise ForeignModelError(
                "is a TorchScript archive (a compiled model, e.g. *_compiled.model): its hyperparameters are "
                "compiled away; import the *.model file mace_run_train wrote next to it",
                source=str(path), origin="TorchScript archive")
        pkl = [n for n in names if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ForeignModelError("zip archive without one data.pkl: not written by torch.save",
                                    source=str(path), origin="zip archive")
        try:
            data = archive.read(pkl[0])
            found = _pickle_globals(data)
        except Exception as exc:  # noqa: BLE001  (truncated member, bad pickle opcodes)
            raise ForeignModelError(f"corrupt pickle ({type(exc).__name__}: {exc})", source=str(path),
                                    origin="torch.save archive") from exc
    unsafe = sorted(f"{m}.{n}" if m != "?" else "a global not readable without running the pickle"
                    for m, n in found
                    if m.split(".")[0] not in _ALLOWED_ROOTS
                    or (m in ("builtins", "__builtin__") and n in _FORBIDDEN_BUILTINS))
    if unsafe:
        raise ForeignModelError(f"its pickle names globals outside torch/e3nn/mace ({', '.join(unsafe)}); "
                                "refused without loading it", source=str(path), origin="torch.save archive")
    models = sorted(f"{m}.{n}" for m, n in found if m.startswith("mace.modules.models"))
    if not models:
        kind = "a state dict or checkpoint" if ("collections", "OrderedDict") in found else "no mace model"
        raise ForeignModelError(
            f"holds {kind}, not a pickled mace-torch model: the hyperparameters are not in it; import the "
            "*.model file mace_run_train wrote", source=str(path), origin="torch.save archive")
    return f"torch.save archive of {models[0]} ({ORIGIN})"


def peer_python(python: str | os.PathLike | None = None) -> str:
    """The python that can import mace-torch: ``python``, $MOLEQUI_MACE_PYTHON, or the peer venv."""
    candidates = [python, os.environ.get("MOLEQUI_MACE_PYTHON")]
    root = os.environ.get("MOLEQUI_PEERS", os.path.join(os.path.expanduser("~"), ".cache", "molequi", "peers"))
    candidates.append(os.path.join(root, "mace", "bin", "python"))
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    raise ForeignModelError(
        "reading a mace-torch model needs a python with mace-torch (its e3nn 0.4.4 cannot share molequi's "
        "environment): run `bash scripts/bench/setup_peers.sh mace`, or pass python=/--peer-python, or set "
        "MOLEQUI_MACE_PYTHON", origin=ORIGIN)


def export_mace(path: str | os.PathLike, python: str | os.PathLike | None = None,
                timeout: float = 1800.0) -> dict:
    """Inspect ``path``, export it in a mace-torch python (separate process), return the plain dict."""
    origin = inspect_model_file(path)
    py = peer_python(python)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export.pt"
        env = dict(os.environ, PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        try:
            # the exporter runs in the temporary folder: a relative path must be made absolute first
            proc = subprocess.run([py, "-I", str(EXPORTER), str(Path(path).resolve()), str(out)], capture_output=True,
                                  text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise ForeignModelError(f"reading it with {py} took over {timeout:.0f} s", source=str(path),
                                    origin=origin) from exc
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mace-export:")]
            reason = lines[-1].removeprefix("mace-export:").strip() if lines else proc.stderr.strip()[-800:]
            raise ForeignModelError(f"mace-torch ({py}) could not read it: {reason}", source=str(path),
                                    origin=origin)
        try:
            export = torch.load(out, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ForeignModelError(f"the exported weights cannot be read ({type(exc).__name__}: {exc})",
                                    source=str(path), origin=origin) from exc
    if not isinstance(export, dict) or export.get("format") != "molequi-mace-export":
        raise ForeignModelError("the exporter wrote an unexpected payload", source=str(path), origin=origin)
    export["source"], export["origin"] = str(path), origin
    return export


# ---------------------------------------------------------------------------------------------- mapping
def _irreps(text: str) -> list[tuple[int, int]]:
    from e3nn import o3

    return [(ir.l, ir.p) for _, ir in o3.Irreps(text)]


def _muls(text: str) -> list[int]:
    from e3nn import o3

    return [mul for mul, _ in o3.Irreps(text)]


def select_head(export: dict, head: str | None) -> int:
    heads = list(export["hyper"]["heads"])
    if head is None:
        if len(heads) == 1:
            return 0
        named = [i for i, h in enumerate(heads) if h.lower() == "default"]
        if named:
            return named[0]
        raise ForeignModelError(f"has heads {heads} and none is named 'default'; choose one with head=/--head",
                                source=export.get("source"), origin=export.get("origin"))
    if head not in heads:
        raise ForeignModelError(f"has no head '{head}'; its heads are {heads}", source=export.get("source"),
                                origin=export.get("origin"))
    return heads.index(head)


def _unsupported(export: dict) -> list[str]:
    h, layers, readouts = export["hyper"], export["layers"], export["readouts"]
    bad = []
    if h["model_class"] not in ("MACE", "ScaleShiftMACE"):
        bad.append(f"model class {h['model_class']} (MACE and ScaleShiftMACE are supported)")
    extra = sorted(set(export["classes"]) - _KNOWN_CLASSES)
    if extra:
        bad.append("modules " + ", ".join(extra))
    for key in ("use_so3", "use_agnostic_product", "use_last_readout_only", "joint_embedding",
                "embedding_readout", "lammps_mliap"):
        if h.get(key):
            bad.append(f"{key}=True")
    if h.get("edge_irreps") is not None:
        bad.append(f"edge_irreps={h['edge_irreps']}")
    if h["radial_type"] not in ("bessel", "gaussian", "chebyshev"):
        bad.append(f"radial basis {h['radial_type']}")
    if h["distance_transform"] not in _TRANSFORMS:
        bad.append(f"distance transform {h['distance_transform']}")
    if not h["sh_normalize"] or h["sh_normalization"] != "component":
        bad.append("spherical harmonics not normalize=True, normalization='component'")
    if h["num_interactions"] < 2:
        bad.append("num_interactions=1 (its only readout is linear; molequi's last readout is an MLP)")
    if layers and layers[0]["class"] not in ("RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock"):
        bad.append(f"first interaction block {layers[0]['class']}")
    for t, layer in enumerate(layers[1:], start=1):
        if layer["class"] != "RealAgnosticResidualInteractionBlock":
            bad.append(f"interaction block {t}: {layer['class']}")
    for key in ("avg_num_neighbors", "radial_MLP"):
        values = {repr(layer[key]) for layer in layers}
        if len(values) > 1:
            bad.append(f"{key} differs between layers ({', '.join(sorted(values))})")
    corr = {e["correlation"] for layer in layers for e in layer["product"]}
    if len(corr) > 1:
        bad.append(f"correlation differs between layers or irreps ({sorted(corr)})")
    if layers:
        hidden = layers[0]["hidden_irreps"] if len(layers) > 1 else layers[-1]["hidden_irreps"]
        if len(set(_muls(hidden))) != 1:
            bad.append(f"hidden_irreps {hidden} with unequal multiplicities")
        if (0, -1) in _irreps(hidden):
            bad.append(f"hidden_irreps {hidden} with pseudo-scalars 0o")
        last = layers[-1]["hidden_irreps"]
        if _irreps(last) != [(0, 1)]:
            bad.append(f"last layer keeps irreps {last} (keep_last_layer_irreps)")
        c = _muls(hidden)[0]
        want = str(ChannelIrreps.spherical(c, h["max_ell"]))
        for t, layer in enumerate(layers):
            if layer["target_irreps"].replace(" ", "") != want:
                bad.append(f"interaction {t} target irreps {layer['target_irreps']} (expected {want})")
    for t, ro in enumerate(readouts):
        last = t == len(readouts) - 1
        want = "NonLinearReadoutBlock" if last else "LinearReadoutBlock"
        if ro["class"] != want:
            bad.append(f"readout {t}: {ro['class']} (expected {want})")
        elif last and ro["gate"] != "silu":
            bad.append(f"readout gate {ro['gate']} (molequi's MLP readout uses silu)")
    return bad


def mace_config(export: dict, head: str | None = None):
    """(MACE.Config, Statistics) of an exported mace-torch model; UnsupportedModelError lists what does not map."""
    from molequi.models.mace import MACE

    bad = _unsupported(export)
    if bad:
        raise UnsupportedModelError(bad, source=export.get("source"), origin=export.get("origin"))
    h, layers, readouts = export["hyper"], export["layers"], export["readouts"]
    k = select_head(export, head)
    num_heads = len(h["heads"])
    hidden = layers[0]["hidden_irreps"]
    mlp_hidden = sum(_muls(readouts[-1]["hidden_irreps"])) // num_heads
    cfg = MACE.Config(
        r_max=float(h["r_max"]),
        num_bessel=int(h["num_bessel"]),
        num_polynomial_cutoff=int(h["num_polynomial_cutoff"]),
        max_ell=int(h["max_ell"]),
        hidden_irreps=str(ChannelIrreps.parse(hidden)),
        correlation=int(layers[0]["product"][0]["correlation"]),
        num_interactions=int(h["num_interactions"]),
        MLP_irreps=f"{mlp_hidden}x0e",
        radial_MLP=[int(x) for x in layers[0]["radial_MLP"]],
        avg_num_neighbors=float(layers[0]["avg_num_neighbors"]),
        tensor_product="native",
        radial_type=h["radial_type"],
        distance_transform=_TRANSFORMS[h["distance_transform"]],
        envelope="basis" if h["apply_cutoff"] else "weights",
        first_interaction="nonresidual" if layers[0]["class"] == "RealAgnosticInteractionBlock" else "residual",
        pair_repulsion=bool(h["pair_repulsion"]),
    )
    elements = [int(z) for z in h["atomic_numbers"]]
    e0 = h["atomic_energies"]
    e0 = e0[k] if e0.shape[0] > k else e0[0]
    scale = shift = None
    if "scale" in h:
        scale = float(h["scale"][k] if h["scale"].numel() > k else h["scale"][0])
        shift = float(h["shift"][k] if h["shift"].numel() > k else h["shift"][0])
    stats = Statistics(elements=elements, e0s={z: float(e) for z, e in zip(elements, e0.tolist())},
                       energy_shift=0.0 if shift is None else shift,
                       energy_scale=1.0 if scale is None else scale,
                       avg_num_neighbors=float(layers[0]["avg_num_neighbors"]))
    return cfg, stats


def _blocks(linear: dict) -> dict[tuple[tuple[int, int], tuple[int, int]], torch.Tensor]:
    """o3.Linear export -> {(irrep in, irrep out): M}; the irreps must be simplified (one entry each)."""
    ins, outs = _irreps(linear["irreps_in"]), _irreps(linear["irreps_out"])
    out = {}
    for i_in, i_out, m in linear["blocks"]:
        key = (ins[i_in], outs[i_out])
        if key in out:
            raise ConfigError(f"linear map with repeated irreps {linear['irreps_in']} -> {linear['irreps_out']}")
        out[key] = m
    return out


def _irreps_linear_weights(module, blocks, scale: float, prefix: str, state: dict) -> None:
    """Fill ``IrrepsLinear`` / ``ElementIrrepsLinear`` weights (their _plan order) from mace blocks."""
    index = 0
    for irrep in module.irreps_out.irreps:
        if irrep not in module.irreps_in.irreps:
            continue
        m = blocks.get((irrep, irrep))
        key = f"{prefix}.weights.{index}"
        if m is None:
            state[key] = torch.zeros_like(state[key])
        else:
            state[key] = m * scale
        index += 1


@functools.lru_cache(maxsize=32)
def _cached_change(irreps_in: tuple, target: tuple, nu: int, digest: str, u_bytes: bytes, shape: tuple,
                   tol: float):
    u = np.frombuffer(u_bytes, dtype=np.float64).reshape(shape)
    return change_of_basis(irreps_in, target, nu, u, tol=tol)


def product_basis_change(irreps_in: tuple, target: tuple, nu: int, u_mace: torch.Tensor,
                         tol: float = 1e-10) -> np.ndarray:
    """R (K_mace, K_molequi) for one of mace-torch's U_matrix_nu, cached per (irreps, target, nu, U).

    ``tol``: relative residual allowed; 1e-10 for a model saved in float64, about 1e-6 for one saved in
    float32, whose U is the exact one rounded (the projection onto the exact basis then drops the rounding).
    """
    u = u_mace.double().numpy()
    if target[0] == 0:
        u = u[None]  # mace-torch omits the M axis of scalar outputs
    u = np.ascontiguousarray(np.moveaxis(u, -1, 0))  # [K, 2L+1, dim, ..., dim]
    raw = u.tobytes()
    return _cached_change(tuple(irreps_in), tuple(target), nu, hashlib.sha1(raw).hexdigest(), raw, u.shape,
                          float(tol))


def mace_state_dict(export: dict, model, head: str | None = None) -> dict[str, torch.Tensor]:
    """molequi state dict (float64) for ``model`` (built from ``mace_config``) holding the export's weights."""
    h, layers, readouts, tens = export["hyper"], export["layers"], export["readouts"], export["tensors"]
    k_head = select_head(export, head)
    num_heads = len(h["heads"])
    elements = [int(z) for z in h["atomic_numbers"]]
    state = {key: v.detach().clone().double() for key, v in model.state_dict().items()}
    u_tol = 1e-10 if h.get("dtype", "float64") == "float64" else 1e-6  # float32 files hold a rounded U
    filled = set()

    def put(key, value):
        if key not in state:
            raise ConfigError(f"internal: no parameter {key}")
        value = torch.as_tensor(value, dtype=torch.float64)
        if value.shape != state[key].shape:
            raise ConfigError(f"internal: {key} has shape {tuple(state[key].shape)}, mapped {tuple(value.shape)}")
        state[key] = value.clone()
        filled.add(key)

    (emb,) = _blocks(tens["embedding"]).values()
    put("embedding.weight", emb)
    rb = tens["radial_basis"]
    if h["radial_type"] == "bessel":
        put("bessel.frequencies", rb["bessel_weights"])
    elif h["radial_type"] == "gaussian":
        put("bessel.centres", rb["gaussian_weights"])
    z_index = torch.tensor(elements)
    if h["distance_transform"] != "None":
        dt = tens["distance_transform"]
        for name, value in dt.items():
            put(f"distance_transform.{name}", value[z_index] if name == "covalent_radii" else value)
    if h["pair_repulsion"]:
        zbl = tens["pair_repulsion"]
        for name in ("c", "a_exp", "a_prefactor"):
            put(f"zbl.{name}", zbl[name])
        put("zbl.covalent_radii", zbl["covalent_radii"][z_index])
        put("zbl.numbers", z_index.to(torch.float64))
        if int(h["pair_repulsion_p"]) != model.zbl.p:
            raise ConfigError("internal: ZBL envelope power differs")
    f64 = torch.float64  # python floats through torch.tensor would round to the default dtype
    put("head.e0", torch.tensor([model.statistics.e0s[z] for z in elements], dtype=f64))
    put("head.scale", torch.tensor(model.statistics.energy_scale, dtype=f64))
    put("head.shift", torch.tensor(model.statistics.energy_shift, dtype=f64))

    for t, (layer, src) in enumerate(zip(model.layers, layers)):
        p = f"layers.{t}"
        c_in = layer.linear_up.irreps_in.channels
        lin = _blocks(src["linear_up"])
        for name in [n for n in state if n.startswith(f"{p}.linear_up.")]:
            filled.add(name)
        _irreps_linear_weights(layer.linear_up, lin, math.sqrt(c_in), f"{p}.linear_up", state)
        # skip: M [c, n_el, c_out] -> [n_el, c, c_out] sqrt(c)
        skip_src = src["skip_tp"]
        ins, outs = _irreps(skip_src["irreps_in"]), _irreps(skip_src["irreps_out"])
        skip = {(ins[i], outs[o]): m.permute(1, 0, 2) for i, o, m in skip_src["blocks"]}
        for name in [n for n in state if n.startswith(f"{p}.skip.")]:
            filled.add(name)
        _irreps_linear_weights(layer.skip, skip, math.sqrt(layer.skip.irreps_in.channels), f"{p}.skip", state)
        # convolution: mace path order (tp instruction order) -> molequi's
        conv = layer.conv
        tp = src["conv_tp"]
        mace_paths = []
        for ir1, ir2, ir3, mul1, mul3, mode, g in tp["paths"]:
            if mode != "uvu":
                raise UnsupportedModelError([f"conv tensor product mode {mode}"], source=export.get("source"))
            mace_paths.append((_irreps(ir1)[0], _irreps(ir2)[0][0], _irreps(ir3)[0], g))
        lookup = {(a, b, c): (i, g) for i, (a, b, c, g) in enumerate(mace_paths)}
        if len(lookup) != len(mace_paths) or len(mace_paths) != conv.num_paths:
            raise ConfigError(f"layer {t}: {len(mace_paths)} tensor-product paths in the file, molequi has "
                              f"{conv.num_paths}")
        order, factors = [], []
        for path in conv.paths:
            key = (conv.irreps_in.irreps[path.i_in], path.l_edge, conv.irreps_out.irreps[path.i_out])
            if key not in lookup:
                raise ConfigError(f"layer {t}: path {key} missing in the file")
            i, g = lookup[key]
            order.append(i)
            factors.append(g / math.sqrt(2 * key[2][0] + 1))
        # radial MLP
        mats, scales = src["radial"]["matrices"], src["radial"]["scales"]
        if len(mats) != len(layer.radial.weights):
            raise ConfigError(f"layer {t}: radial MLP depth differs")
        for j, m in enumerate(mats):
            w = m * math.sqrt(m.shape[0])
            if j > 0:
                w = w * (scales[j - 1] / SILU_NORM)
            if j == len(mats) - 1:
                c = conv.irreps_in.channels
                cols = w.view(w.shape[0], -1, c)  # [in, mace paths, c]
                f = torch.tensor(factors, dtype=torch.float64).view(1, -1, 1)
                w = (cols[:, order, :] * f).reshape(w.shape[0], -1)
            put(f"{p}.radial.weights.{j}", w)
        # mix: irreps_mid index = tp instruction index; blocks (i_mid, i_out)
        mid_blocks = {(i_mid, i_out): m for i_mid, i_out, m in src["linear"]["blocks"]}
        outs = _irreps(src["linear"]["irreps_out"])
        for g_index, (_, start, n_paths, _, i_out) in enumerate(conv._groups):
            target = conv.irreps_out.irreps[i_out]
            o = outs.index(target)
            rows = [mid_blocks[(order[q], o)] for q in range(start, start + n_paths)]
            w = torch.cat(rows, dim=0) * math.sqrt(n_paths * conv.irreps_in.channels)
            put(f"{p}.conv.mix.{g_index}", w)
        # symmetric contraction
        prod = layer.product
        entries = {_irreps(e["irrep"])[0]: e for e in src["product"]}
        for i_t, (target, plan) in enumerate(zip(prod.irreps_out.irreps, prod._plan)):
            e = entries[target]
            by_nu = {nu: (block, w_index, k) for nu, block, _, w_index, k in plan}
            for nu in range(1, prod.correlation + 1):
                u, w_mace = e["U"][nu], e["w"][nu]  # w: [n_el, K_mace, c]
                r = torch.from_numpy(product_basis_change(prod.irreps_in.irreps, target, nu, u, tol=u_tol))
                if nu not in by_nu:
                    if r.shape[1] != 0:
                        raise ConfigError(f"layer {t}: molequi has no weights for {target} at order {nu}")
                    continue
                _, w_index, k = by_nu[nu]
                put(f"{p}.product.weights.{w_index}", torch.einsum("ak,eac->kec", r, w_mace))
        pl = _blocks(src["product_linear"])
        for name in [n for n in state if n.startswith(f"{p}.linear.")]:
            filled.add(name)
        _irreps_linear_weights(layer.linear, pl, math.sqrt(layer.linear.irreps_in.channels), f"{p}.linear", state)

    for t, (ro, src) in enumerate(zip(model.readouts, readouts)):
        if src["class"] == "LinearReadoutBlock":
            m = _blocks(src["linear"])[((0, 1), (0, 1))]  # [c, heads]
            put(f"readouts.{t}.weight", m[:, k_head] * math.sqrt(m.shape[0]))
        else:
            m1 = _blocks(src["linear_1"])[((0, 1), (0, 1))]  # [c, heads * hidden]
            m2 = _blocks(src["linear_2"])[((0, 1), (0, 1))]  # [heads * hidden, heads]
            hid = m1.shape[1] // num_heads
            sl = slice(k_head * hid, (k_head + 1) * hid)
            put(f"readouts.{t}.w1", m1[:, sl] * math.sqrt(m1.shape[0]))
            put(f"readouts.{t}.w2", m2[sl, k_head] * (src["gate_scale"] / SILU_NORM) * math.sqrt(hid))
    missing = sorted(set(state) - filled)
    if missing:
        raise ConfigError(f"internal: imported model leaves parameters unset: {missing}")
    return state


def import_mace(path: str | os.PathLike, head: str | None = None, python: str | os.PathLike | None = None,
                dtype: torch.dtype = torch.float64, export: dict | None = None):
    """A molequi ``MACE`` (eval mode, ``dtype``) computing the mace-torch model in ``path``."""
    from molequi.models.mace import MACE

    export = export_mace(path, python) if export is None else export
    cfg, stats = mace_config(export, head)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = MACE(cfg, stats)
    finally:
        torch.set_default_dtype(previous)
    model = model.double()
    model.load_state_dict(mace_state_dict(export, model, head), strict=True)
    return model.to(dtype).eval()


def mace_payload(path: str | os.PathLike, head: str | None = None, python: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float64) -> dict:
    """The molequi model payload (``molequi.checkpoint.make_payload``) of the mace-torch model in ``path``,
    with an ``imported_from`` note (file, origin, mace-torch version, head)."""
    from molequi.checkpoint import make_payload
    from molequi.config import Config

    export = export_mace(path, python)
    model = import_mace(path, head=head, python=python, dtype=dtype, export=export)
    config = Config.from_dict({"model": {"name": "mace", **model.config_dict()}}).to_dict()
    payload = make_payload(config=config, statistics=model.statistics.to_dict(),
                           model_state=model.state_dict(), dtype=dtype, metrics={})
    payload["imported_from"] = {"file": str(path), "origin": export["origin"],
                                "mace_version": str(export["hyper"].get("mace_version", "?")),
                                "head": export["hyper"]["heads"][select_head(export, head)]}
    return payload


def import_mace_checkpoint(path: str | os.PathLike, out: str | os.PathLike, head: str | None = None,
                           python: str | os.PathLike | None = None,
                           dtype: torch.dtype = torch.float64) -> dict:
    """Import ``path`` and write an ordinary molequi checkpoint (``molequi.checkpoint``) to ``out``; returns
    its payload."""
    from molequi.checkpoint import save_model

    payload = mace_payload(path, head=head, python=python, dtype=dtype)
    save_model(payload, out)
    return payload


__all__ = ["inspect_model_file", "peer_python", "export_mace", "mace_config", "mace_state_dict",
           "product_basis_change", "import_mace", "mace_payload", "import_mace_checkpoint", "select_head",
           "ORIGIN"]
