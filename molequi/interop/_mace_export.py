"""Run by a python that has mace-torch (never imported by molequi): mace-torch ``*.model`` -> plain dict.

    PY _mace_export.py IN.model OUT.pt

Loads the pickled ``torch.nn.Module`` (in this separate process, so molequi's process never unpickles it)
and writes, with ``torch.save``, a dict of plain Python values and float64 tensors that molequi reads with
``weights_only=True`` (``molequi.interop.mace``). Weights are written as *effective* matrices: e3nn's path
normalisations are multiplied in, so the reader needs no knowledge of e3nn's conventions:

    o3.Linear            y_out = sum_in x_in @ M[in -> out]                  M: (mul_in, mul_out)
    skip tensor product  y_out[i] = x_in[i] @ M[:, z_i, :]                   M: (mul_in, num_elements, mul_out)
    conv tensor product  m_p = g_p * W3j(l1, l2, l3) x_j Y(r_ji) w_p(r)      g_p: one float per path
    FullyConnectedNet    h_{k+1} = a_k * silu(h_k @ M_k)  (a_k = e3nn's normalize2mom constant, last: none)

Every module class in the model is listed, so the reader can refuse what it does not implement. Exit code 0
on success; on failure one line ``mace-export: <reason>`` on stderr and exit code 2.
"""

from __future__ import annotations

import math
import sys


def _fail(message: str) -> None:
    print(f"mace-export: {message}", file=sys.stderr)
    raise SystemExit(2)


def _f64(t):
    return t.detach().to("cpu").double().clone()


def _linear(lin) -> dict:
    """o3.Linear -> {"irreps_in", "irreps_out", "blocks": [(i_in, i_out, M)]}."""
    if getattr(lin, "bias", None) is not None and lin.bias.numel() > 0:
        _fail(f"{type(lin).__name__} with biases is not supported")
    blocks = []
    for _, ins, view in lin.weight_views(yield_instruction=True):
        blocks.append([int(ins.i_in), int(ins.i_out), _f64(view) * float(ins.path_weight)])
    return {"irreps_in": str(lin.irreps_in), "irreps_out": str(lin.irreps_out), "blocks": blocks}


def _skip_tp(tp) -> dict:
    """FullyConnectedTensorProduct(x, one-hot element) -> {"blocks": [(i_in, i_out, M (c, n_el, c_out))]}."""
    import torch
    from e3nn import o3

    blocks = []
    for _, ins, view in tp.weight_views(yield_instruction=True):
        mul1, ir1 = tp.irreps_in1[ins.i_in1]
        _, ir2 = tp.irreps_in2[ins.i_in2]
        _, ir3 = tp.irreps_out[ins.i_out]
        if ir2.l != 0 or ir1 != ir3 or ins.connection_mode != "uvw":
            _fail(f"unexpected skip tensor-product path {ir1} x {ir2} -> {ir3} ({ins.connection_mode})")
        w3j = o3.wigner_3j(ir1.l, 0, ir1.l, dtype=torch.float64)[:, 0, :]
        factor = float(w3j[0, 0])
        if not torch.allclose(w3j, factor * torch.eye(2 * ir1.l + 1, dtype=torch.float64), atol=1e-12):
            _fail("e3nn's W3j(l, 0, l) is not a multiple of the identity")
        blocks.append([int(ins.i_in1), int(ins.i_out), _f64(view) * float(ins.path_weight) * factor])
    return {
        "irreps_in": str(tp.irreps_in1),
        "irreps_attr": str(tp.irreps_in2),
        "irreps_out": str(tp.irreps_out),
        "blocks": blocks,
    }


def _mlp(net) -> dict:
    """e3nn FullyConnectedNet -> {"matrices": [M_k], "scales": [a_k or None for the last]}."""
    matrices, scales = [], []
    for layer in net:
        w = _f64(layer.weight)
        h_in, var_in, var_out = layer.h_in, layer.var_in, layer.var_out
        if layer.act is not None:
            matrices.append(w / math.sqrt(h_in * var_in))
            act = layer.act
            f = getattr(act, "f", act)
            if getattr(f, "__name__", "") != "silu":
                _fail(f"radial MLP activation {getattr(f, '__name__', f)} is not silu")
            cst = 1.0 if getattr(act, "_is_id", False) else float(getattr(act, "cst", 1.0))
            scales.append(cst * math.sqrt(var_out))
        else:
            matrices.append(w / math.sqrt(h_in * var_in / var_out))
            scales.append(None)
    return {"matrices": matrices, "scales": scales}


def _conv_tp(tp) -> dict:
    paths = []
    for ins in tp.instructions:
        mul1, ir1 = tp.irreps_in1[ins.i_in1]
        _, ir2 = tp.irreps_in2[ins.i_in2]
        mul3, ir3 = tp.irreps_out[ins.i_out]
        paths.append(
            [str(ir1), str(ir2), str(ir3), int(mul1), int(mul3), ins.connection_mode, float(ins.path_weight)]
        )
    return {"irreps_in1": str(tp.irreps_in1), "irreps_in2": str(tp.irreps_in2),
            "irreps_out": str(tp.irreps_out), "paths": paths}


def _contraction(sc) -> list:
    """SymmetricContraction -> per output irrep {"irrep", "correlation", "U": {nu: U}, "w": {nu: (E, K, c)}}."""
    out = []
    for irrep, contraction in zip(sc.irreps_out, sc.contractions):
        corr = int(contraction.correlation)
        entry = {"irrep": str(irrep.ir), "correlation": corr, "U": {}, "w": {}}
        for nu in range(1, corr + 1):
            entry["U"][nu] = _f64(contraction.U_tensors(nu))
        entry["w"][corr] = _f64(contraction.weights_max)
        for i, w in enumerate(contraction.weights):
            entry["w"][corr - 1 - i] = _f64(w)
        out.append(entry)
    return out


def _readout(ro) -> dict:
    cls = type(ro).__name__
    if cls == "LinearReadoutBlock":
        return {"class": cls, "linear": _linear(ro.linear)}
    if cls == "NonLinearReadoutBlock":
        acts = list(ro.non_linearity.acts)
        f = getattr(acts[0], "f", acts[0]) if acts else None
        gate = getattr(f, "__name__", str(f))
        cst = 1.0 if getattr(acts[0], "_is_id", False) else float(getattr(acts[0], "cst", 1.0))
        return {
            "class": cls,
            "linear_1": _linear(ro.linear_1),
            "linear_2": _linear(ro.linear_2),
            "gate": gate,
            "gate_scale": cst,
            "num_heads": int(getattr(ro, "num_heads", 1)),
            "hidden_irreps": str(ro.hidden_irreps),
        }
    return {"class": cls}


def _buffers(module) -> dict:
    return {name: _f64(b) for name, b in module.named_buffers(recurse=False) if b.is_floating_point()}


def export(model) -> dict:
    import torch

    classes = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in model.modules()})
    re = model.radial_embedding
    hyper = {
        "model_class": type(model).__name__,
        "r_max": float(model.r_max),
        "num_interactions": int(model.num_interactions),
        "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
        "heads": list(getattr(model, "heads", ["Default"])),
        "radial_type": {"BesselBasis": "bessel", "GaussianBasis": "gaussian",
                        "ChebychevBasis": "chebyshev"}.get(type(re.bessel_fn).__name__,
                                                            type(re.bessel_fn).__name__),
        "num_bessel": int(re.out_dim),
        "num_polynomial_cutoff": int(re.cutoff_fn.p),
        "distance_transform": type(re.distance_transform).__name__ if hasattr(re, "distance_transform")
        else "None",
        "apply_cutoff": bool(getattr(re, "apply_cutoff", True)),
        "pair_repulsion": bool(hasattr(model, "pair_repulsion")),
        "max_ell": int(model.spherical_harmonics.irreps_out.lmax),
        "sh_irreps": str(model.spherical_harmonics.irreps_out),
        "sh_normalize": bool(model.spherical_harmonics.normalize),
        "sh_normalization": str(model.spherical_harmonics.normalization),
        "use_so3": bool(getattr(model, "use_so3", False)),
        "use_agnostic_product": bool(getattr(model, "use_agnostic_product", False)),
        "use_last_readout_only": bool(getattr(model, "use_last_readout_only", False)),
        "edge_irreps": None if getattr(model, "edge_irreps", None) is None else str(model.edge_irreps),
        "joint_embedding": bool(hasattr(model, "joint_embedding")),
        "embedding_readout": bool(hasattr(model, "embedding_readout")),
        "lammps_mliap": bool(getattr(model, "lammps_mliap", False)),
        "atomic_energies": _f64(torch.atleast_2d(model.atomic_energies_fn.atomic_energies)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "bessel_trainable": bool(isinstance(getattr(re.bessel_fn, "bessel_weights", None),
                                            torch.nn.Parameter)),
    }
    if hasattr(model, "scale_shift"):
        hyper["scale"] = _f64(torch.atleast_1d(model.scale_shift.scale))
        hyper["shift"] = _f64(torch.atleast_1d(model.scale_shift.shift))
    tensors = {
        "embedding": _linear(model.node_embedding.linear),
        "radial_basis": _buffers(re.bessel_fn),
        "distance_transform": _buffers(re.distance_transform) if hasattr(re, "distance_transform") else {},
        "pair_repulsion": _buffers(model.pair_repulsion_fn) if hasattr(model, "pair_repulsion") else {},
    }
    if hasattr(model, "pair_repulsion"):
        hyper["pair_repulsion_p"] = int(model.pair_repulsion_fn.p)
    layers = []
    for inter, prod in zip(model.interactions, model.products):
        layer = {
            "class": type(inter).__name__,
            "avg_num_neighbors": float(inter.avg_num_neighbors),
            "radial_MLP": [int(x) for x in inter.radial_MLP],
            "node_feats_irreps": str(inter.node_feats_irreps),
            "target_irreps": str(inter.target_irreps),
            "hidden_irreps": str(inter.hidden_irreps),
            "linear_up": _linear(inter.linear_up),
            "conv_tp": _conv_tp(inter.conv_tp),
            "radial": _mlp(inter.conv_tp_weights),
            "linear": _linear(inter.linear),
            "skip_tp": _skip_tp(inter.skip_tp),
            "product_class": type(prod.symmetric_contractions).__name__,
            "product_use_sc": bool(prod.use_sc),
            "product": _contraction(prod.symmetric_contractions),
            "product_linear": _linear(prod.linear),
        }
        layers.append(layer)
    readouts = [_readout(ro) for ro in model.readouts]
    return {
        "format": "molequi-mace-export",
        "version": 1,
        "hyper": hyper,
        "classes": classes,
        "tensors": tensors,
        "layers": layers,
        "readouts": readouts,
    }


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        _fail("usage: _mace_export.py IN.model OUT.pt")
    src, dst = argv
    try:
        import mace  # noqa: F401  (e3nn 0.4.4 needs mace imported first under recent torch)
        import torch
    except Exception as exc:  # noqa: BLE001
        _fail(f"this python cannot import mace-torch ({type(exc).__name__}: {exc})")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        _fail(f"torch.load failed ({type(exc).__name__}: {exc})")
    if isinstance(obj, dict):
        _fail("the file holds a dict (a state dict or a training checkpoint), not a pickled model: its "
              "hyperparameters are not in it; import the *.model file mace_run_train wrote")
    if isinstance(obj, torch.jit.ScriptModule):
        _fail("the file is a TorchScript (compiled) model; import the un-compiled *.model file")
    if not isinstance(obj, torch.nn.Module) or not hasattr(obj, "interactions"):
        _fail(f"the file holds a {type(obj).__module__}.{type(obj).__name__}, not a mace-torch MACE model")
    try:
        payload = export(obj)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot read the model's structure ({type(exc).__name__}: {exc})")
    payload["hyper"]["mace_version"] = getattr(mace, "__version__", "?")
    torch.save(payload, dst)


if __name__ == "__main__":
    # this file sits next to molequi's own ``mace.py``: never let ``import mace`` find that one
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else ""
    sys.path[:] = [p for p in sys.path if p not in ("", ".", here)]
    main(sys.argv[1:])
