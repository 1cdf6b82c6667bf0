"""Import checkpoints of the reference QHNet code (divelab/AIRS ``OpenDFT/QHNet``) as molequi checkpoints.

The reference's ``train_wH.py`` writes ``torch.save({"state_dict": model.state_dict(), "eval": {...},
"batch_idx": n}, "results.pt")`` (EMA weights when EMA is on); a bare state dict is accepted too. The file
is read with ``torch.load(weights_only=True)``: it can hold tensors and plain values only.

Nothing in the reference's state dict says which of its models wrote it, so ``version`` says it:

- ``QHNet_w_bias`` (default): ``models/ori_QHNet_with_bias.py``, what ``get_model`` builds for the
  config's default ``version: QHNet_w_bias`` and what the published MD17 models are. Its node layers'
  invariants use the receiver's scalars twice (``QHNetConfig.receiver_scalars``).
- ``QHNet``: ``models/QHNet.py``, the same with that fixed (divelab/AIRS issue 23).
- ``QHNet_wo_bias`` (no expansion biases) is refused (``UnsupportedQHNetOptionError``).

Sizes come from the weights' shapes (hidden size, layers, radial functions, embedding rows) and the radial
cutoff from the stored buffer; the reference's expansion is fixed to def2-SVP shells of H..Ne (3s 2p 1d,
H and He 2s 1p), the orbital layout of molequi's def2-SVP padded blocks. Parameters the reference builds
but never uses in ``forward`` (``expand_*.weights``, ``tp_node_pair_2``, ``linear_node_pair_2``, the fixed
radial ``_alpha``) are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from molequi.errors import CheckpointError, UnsupportedModelError

ORIGIN = "QHNet reference code (divelab/AIRS OpenDFT/QHNet)"
VERSIONS = {"QHNet_w_bias": True, "QHNet": False}  # version -> receiver_scalars
REFERENCE_ELEMENTS = [1, 6, 7, 8, 9]

# reference name -> molequi name, applied to each dotted path segment in the context of its module
_TOP = {"node_embedding": "embedding", "distance_expansion": "radial", "output_ii": "diag_out",
        "output_ij": "pair_out", "fc_ii.hamiltonian": "diag_weights", "fc_ii_bias.hamiltonian": "diag_biases",
        "fc_ij.hamiltonian": "pair_weights", "fc_ij_bias.hamiltonian": "pair_biases"}
_RADIAL = {"cutoff": "cutoff", "logc": "log_binomial", "n": "decay", "v": "rise"}
_GATE = {"norm": "norm", "mul": "scale", "fc": "mlp"}
_NODE = {"tp_node": "tp", "fc_node": "radial_mlp", "layer_l0": "scalar_mlp", "linear_out": "out",
         "norm_gate": "gate", "linear_node": "mix", "linear_node_pre": "pre", "inner_product": "invariants"}
_DIAG = {"linear_node_1": "lin_a", "linear_node_2": "lin_b", "tp": "tp", "norm_gate": "gate_out",
         "norm_gate_1": "gate_a", "norm_gate_2": "gate_b", "linear_node_3": "lin_out"}
_PAIR = {"linear_node_pair_inner": "pre", "inner_product": "invariants", "norm_gate_pre": "gate_in",
         "linear_node_pair_n": "lin_in", "tp_node_pair": "tp", "fc_node_pair": "radial_mlp",
         "fc": "scalar_mlp",
         "norm_gate": "gate_out", "linear_node_pair": "lin_out"}
_UNUSED = re.compile(r"^(expand_i[ij]\.hamiltonian\.weights|distance_expansion\._alpha|"
                     r"e3_gnn_node_pair_layer\.\d+\.(tp_node_pair_2|linear_node_pair_2|norm)\..*)$")


class UnsupportedQHNetOptionError(UnsupportedModelError):
    """A reference QHNet checkpoint (or the version asked for) that molequi's QHNet does not implement."""


def read_qhnet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a reference QHNet checkpoint (``{"state_dict": ...}`` or a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, or a pickle of a class
        raise CheckpointError(f"{path}: cannot be read as a QHNet checkpoint ({type(exc).__name__}: {exc}); "
                              "the file is damaged or is not a torch.save file") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (expected train_wH.py's "
                              "{'state_dict': ...} or model.state_dict())")
    if "node_embedding.weight" not in state:
        raise CheckpointError(f"{path}: no node_embedding.weight; not a QHNet state dict", )
    return state


def qhnet_config(state: dict, version: str = "QHNet_w_bias", elements=None, source: str | None = None):
    """The ``QHNetConfig`` the reference state dict describes (module docstring)."""
    from molequi.models.hamiltonian.qhnet import QHNetConfig

    if version not in VERSIONS:
        raise UnsupportedQHNetOptionError(
            [f"version {version!r}: molequi implements {', '.join(VERSIONS)} (QHNet_wo_bias has no expansion "
             "biases)"], source=source, origin=ORIGIN)
    if "fc_ii_bias.hamiltonian.0.weight" not in state:
        raise UnsupportedQHNetOptionError(["no fc_ii_bias / fc_ij_bias weights: a QHNet_wo_bias checkpoint"],
                                          source=source, origin=ORIGIN)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"e3_gnn_layer\.(\d+)\.", k))}
    pair_layers = {int(m.group(1)) for k in state if (m := re.match(r"e3_gnn_node_pair_layer\.(\d+)\.", k))}
    rows, hidden = state["node_embedding.weight"].shape
    return QHNetConfig(
        basis="def2-svp", elements=list(elements or REFERENCE_ELEMENTS), hidden_size=int(hidden),
        bottle_hidden_size=int(state["output_ii.weight"].numel() // (5 * hidden)),
        num_layers=len(layers), start_layer=len(layers) - len(pair_layers) - 1, lmax=4,
        max_radius=float(state["distance_expansion.cutoff"]),
        num_radial=int(state["e3_gnn_layer.0.conv.fc_node.layer0.weight"].shape[0]),
        num_embeddings=int(rows), receiver_scalars=VERSIONS[version], parity_paths=False)


def _rename(key: str) -> str | None:
    """molequi's name of a reference parameter / buffer, None for the ones its forward never uses."""
    if _UNUSED.match(key):
        return None
    for old, new in _TOP.items():
        if key.startswith(old + "."):
            rest = key[len(old) + 1:]
            return f"{new}.{_RADIAL.get(rest, rest)}" if old == "distance_expansion" else f"{new}.{rest}"
    for pattern, table, prefix in ((r"e3_gnn_layer\.(\d+)\.conv\.", _NODE, "interactions"),
                                   (r"e3_gnn_node_layer\.(\d+)\.", _DIAG, "diag_layers"),
                                   (r"e3_gnn_node_pair_layer\.(\d+)\.", _PAIR, "pair_layers")):
        m = re.match(pattern, key)
        if not m:
            continue
        module, _, rest = key[m.end():].partition(".")
        if module not in table:
            return f"?{key}"
        if table[module] in ("gate", "gate_in", "gate_out", "gate_a", "gate_b"):
            sub, _, tail = rest.partition(".")
            rest = f"{_GATE.get(sub, '?' + sub)}.{tail}"
        return f"{prefix}.{m.group(1)}.{table[module]}.{rest}"
    return f"?{key}"


def qhnet_state_to_molequi(state: dict, model, source: str | None = None) -> dict[str, torch.Tensor]:
    """The reference state dict under molequi's names, checked against ``model``'s own (every parameter
    and buffer present with its shape; anything unknown refused)."""
    ours = model.state_dict()
    out, unknown, shapes = {}, [], []
    for key, value in state.items():
        new = _rename(key)
        if new is None:
            continue
        if new.startswith("?") or new not in ours:
            unknown.append(key)
        elif tuple(ours[new].shape) != tuple(value.shape):
            shapes.append(f"{key}: {tuple(value.shape)} vs molequi {tuple(ours[new].shape)}")
        else:
            out[new] = value
    missing = [k for k in ours if k not in out]
    if unknown or shapes or missing:
        raise UnsupportedQHNetOptionError(
            ([f"unknown parameters {unknown[:5]}" + (" ..." if len(unknown) > 5 else "")] if unknown else [])
            + ([f"shapes that differ (another lmax, basis or size): {shapes[:3]}"] if shapes else [])
            + ([f"parameters molequi needs that the file lacks: {missing[:5]}"] if missing else []),
            source=source, origin=ORIGIN)
    return out


def import_qhnet(path: str | Path, version: str = "QHNet_w_bias", elements=None,
                 dtype: torch.dtype = torch.float64):
    """molequi's ``QHNet`` with the weights of the reference checkpoint ``path`` (eval mode, ``dtype``)."""
    from molequi.models.hamiltonian.qhnet import QHNet

    state = read_qhnet_state(path)
    cfg = qhnet_config(state, version, elements, source=str(path))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # fixed constants (CG, normalisations) computed in the target precision
    try:
        model = QHNet(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.load_state_dict(qhnet_state_to_molequi(state, model, source=str(path)), strict=True)
    return model.to(dtype).eval()


def import_qhnet_checkpoint(path: str | Path, out: str | Path, version: str = "QHNet_w_bias",
                            elements=None, dtype: torch.dtype = torch.float64) -> dict:
    """Write the reference checkpoint ``path`` as a molequi checkpoint ``out`` (atomically); returns its
    payload (``molequi.checkpoint.make_payload``; model ``qhnet``, task ``hamiltonian``)."""
    from molequi.checkpoint import make_payload, save_model
    from molequi.config import to_plain

    model = import_qhnet(path, version, elements, dtype)
    payload = make_payload(config={"model": {"name": "qhnet", **to_plain(model.cfg)},
                                   "task": {"name": "hamiltonian"}},
                           statistics={"elements": list(model.cfg.elements)}, model_state=model.state_dict(),
                           dtype=dtype)
    save_model(payload, out)
    return payload


__all__ = ["read_qhnet_state", "qhnet_config", "qhnet_state_to_molequi", "import_qhnet",
           "import_qhnet_checkpoint", "UnsupportedQHNetOptionError", "VERSIONS"]
