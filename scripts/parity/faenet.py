"""Parity of molequi's FAENet (``model.name: faenet``) with the FAENet authors' package ``faenet`` 0.1.3.

    python scripts/parity/check.py faenet --peer-python PY [--size SIZE[,SIZE...]] [--frames 0,1] [--seed 0]

Sizes (``SIZES``): ``tiny`` (the test's model), ``options_a`` / ``_b`` / ``_c`` (the package's other message
types, skip connections, energy heads, force decoders and embedding choices; the default checks these four)
and ``default`` (the package's constructor defaults, 128 wide). ``mp_type: updown_local_env`` is not checked:
the package's own code fails under torch_geometric 2.8.1.

``PY`` is the python of the package's venv (``bash scripts/bench/setup_peers.sh faenet`` prints it). The peer
(``scripts/parity/_faenet_peer.py``) builds ``faenet.FAENet`` with direct forces and seeded random weights
(biases, GraphNorm and BatchNorm statistics randomised too), evaluates it in float64 with the package's full
frame averaging (``fa_method='all'``, so no randomness) through ``faenet.model_forward``; molequi builds its
FAENet with the same hyperparameters, loads the package's state dict as is and evaluates the same structures
in eval mode:

- the shipped real OC20 frames (``data/oc20/oc20_real.extxyz``, with their tags) with 3D frames and, as slabs,
  with 2D frames (``frame_averaging: 2D``),
- a distorted ethanol molecule (3D frames, no cell).

Both read molequi's radius graph (the package's ``pbc_preprocess`` takes the graph it is given; its cell
offsets are molequi's unit shifts with the opposite sign, because its edge vectors are x_source - x_target).

Prints one JSON object {"peer", "peer_version", "dtype", "max_abs_err_energy", "max_abs_err_forces",
"tolerance", "ok", "relative", "structures" (per size, structure and frame mode: errors, frames, forward CPU /
wall seconds of each side)} and exits 1 when a relative error (max abs error / max abs reference value, per
quantity and model) exceeds the tolerance (default 1e-5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PEER = Path(__file__).with_name("_faenet_peer.py")
FRAMES = ROOT / "data" / "oc20" / "oc20_real.extxyz"

_TINY_BASE = {
    "cutoff": 6.0,
    "hidden_channels": 40,
    "num_filters": 16,
    "num_gaussians": 10,
    "tag_hidden_channels": 4,
    "pg_hidden_channels": 4,
    "num_interactions": 2,
    "regress_forces": "direct",
    "_gain": 2.0,
}

SIZES = {
    # tiny: the test's model; "_gain" (peer side, not a package option) multiplies the weight matrices so that
    # the activations are nonlinear and the frames change the outputs by far more than the tolerance
    "tiny": {
        "cutoff": 6.0,
        "hidden_channels": 32,
        "num_filters": 16,
        "num_gaussians": 10,
        "tag_hidden_channels": 4,
        "pg_hidden_channels": 4,
        "phys_hidden_channels": 0,
        "phys_embeds": True,
        "num_interactions": 2,
        "mp_type": "updownscale_base",
        "graph_norm": True,
        "second_layer_MLP": True,
        "skip_co": "concat",
        "energy_head": None,
        "complex_mp": False,
        "regress_forces": "direct",
        "force_decoder_type": "mlp",
        "force_decoder_model_config": {"mlp": {"hidden_channels": 16}},
        "_gain": 2.0,
    },
    # the package's constructor defaults, with direct forces (the 'mlp' decoder of width 128)
    # the other options of the package, each against molequi's: 'updownscale' messages, per-atom skip
    # connections, weighted energy head, residual decoder with LayerNorm, learnable physics embedding, ...
    # (mp_type 'updown_local_env' is not checked: the package's own code fails under torch_geometric 2.8.1,
    # "propagate() got an unexpected keyword argument 'local_env'")
    "options_a": {
        **_TINY_BASE,
        "mp_type": "updownscale",
        "skip_co": "concat_atom",
        "energy_head": "weighted-av-final-embeds",
        "complex_mp": True,
        "phys_hidden_channels": 6,
        "force_decoder_type": "res_updown",
        "force_decoder_model_config": {"res_updown": {"hidden_channels": 12, "norm": "layer"}},
    },
    # ... plain 'base' messages without GraphNorm, additive skip connections, initial-embedding weights, 'res'
    "options_b": {
        **_TINY_BASE,
        "mp_type": "base",
        "graph_norm": False,
        "skip_co": "add",
        "energy_head": "weighted-av-initial-embeds",
        "second_layer_MLP": False,
        "force_decoder_type": "res",
        "force_decoder_model_config": {"res": {"hidden_channels": 12}},
        "_gain": 1.0,  # without GraphNorm a gain of 2 makes energies ~1e6
    },
    # ... 'simple' messages (the package then sets num_filters = hidden_channels), no skip connection, no
    # physics / period-group embeddings, 'simple' decoder
    "options_c": {
        **_TINY_BASE,
        "mp_type": "simple",
        "skip_co": False,
        "phys_embeds": False,
        "pg_hidden_channels": 0,
        "force_decoder_type": "simple",
        "force_decoder_model_config": {"simple": {"hidden_channels": 12}},
    },
    "default": {
        "regress_forces": "direct",
        "force_decoder_type": "mlp",
        "force_decoder_model_config": {"mlp": {"hidden_channels": 128}},
    },
}


# the package's FAENet arguments that molequi's FAENet.Config has under the same name and meaning
SAME_NAMES = (
    "num_gaussians",
    "num_filters",
    "hidden_channels",
    "tag_hidden_channels",
    "pg_hidden_channels",
    "phys_hidden_channels",
    "phys_embeds",
    "num_interactions",
    "mp_type",
    "graph_norm",
    "complex_mp",
    "second_layer_MLP",
    "force_decoder_type",
)


def molequi_config(spec: dict, frame_averaging: str):
    """molequi's FAENet.Config for the package's FAENet(**spec) (direct forces), evaluated with all frames."""
    from molequi.models.faenet import FAENet

    decoder = spec.get("force_decoder_model_config", {}).get(spec.get("force_decoder_type", "mlp"), {})
    d = FAENet.Config()
    return FAENet.Config(
        **{k: spec[k] for k in SAME_NAMES if k in spec},
        r_max=spec.get("cutoff", 6.0),
        skip_co=spec.get("skip_co", d.skip_co) or "",
        energy_head=spec.get("energy_head") or "",
        forces="direct",
        force_decoder_hidden=decoder.get("hidden_channels", d.force_decoder_hidden),
        force_decoder_norm=decoder.get("norm", "batch1d") or "",
        frame_averaging=frame_averaging,
        fa_method="all",
        fa_method_eval="all",
    )


def structures(frames: list[int]):
    import ase.build
    import ase.io
    import numpy as np

    oc20 = ase.io.read(FRAMES, ":")
    out = [(f"oc20[{i}]", oc20[i]) for i in frames]
    mol = ase.build.molecule("CH3CH2OH")
    mol.positions += np.random.default_rng(0).normal(scale=0.05, size=mol.positions.shape)
    out.append(("ethanol", mol))
    return out


def run(
    py: str,
    size: str = "tiny",  # one of SIZES or a comma list (one peer process builds them all)
    frames: list[int] | None = None,
    seed: int = 0,
    tolerance: float = 1e-5,
    work: Path | None = None,
) -> dict:
    from torch_geometric.data import Batch

    from molequi import keys as K
    from molequi.calculators.predict import build_records
    from molequi.data.statistics import Statistics
    from molequi.models.faenet import FAENet

    frames = [0, 1] if frames is None else frames
    chosen = structures(frames)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        sizes = size.split(",")
        specs = [dict(SIZES[s], seed=seed) for s in sizes]
        cutoff = float(specs[0].get("cutoff", 6.0))
        if any(float(s.get("cutoff", 6.0)) != cutoff for s in specs):
            raise SystemExit("faenet parity: the sizes checked together need the same cutoff")
        records = build_records([a for _, a in chosen], cutoff, torch.float64, validate=False)
        for rec, (_, a) in zip(records, chosen):
            rec[K.TAGS] = torch.as_tensor(a.get_tags(), dtype=torch.long)
        graphs = [
            {
                "pos": r.pos,
                "cell": r.cell.reshape(3, 3),
                "numbers": r.numbers.reshape(-1).long(),
                "edge_index": r.edge_index,
                "cell_offsets": -r.unit_shifts.to(torch.float64),
                "tags": r[K.TAGS],
                "periodic": bool(a.pbc.any()),
            }
            for r, (_, a) in zip(records, chosen)
        ]
        torch.save(graphs, work / "graphs.pt")
        rows, err = [], {"energy": 0.0, "forces": 0.0}
        peer_version = None
        (work / "spec.json").write_text(json.dumps(specs))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [py, str(PEER), "build", str(work / "spec.json"), str(work / "graphs.pt"), str(work / "ref.pt")],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"faenet peer failed:\n{proc.stderr[-3000:]}")
        peer_wall = time.perf_counter() - t0
        ref = torch.load(work / "ref.pt", weights_only=True)
        peer_version = ref["faenet"]
        runs = [
            (k, g) for k, g in enumerate(graphs) for mode in ("3D", "2D") if mode == "3D" or g["periodic"]
        ]
        for size_name, spec, peer in zip(sizes, specs, ref["models"], strict=True):
            for mode in ("3D", "2D"):
                which = [(k, r) for (k, _), r in zip(runs, peer["results"]) if r["frame_averaging"] == mode]
                elements = sorted({int(z) for g in graphs for z in g["numbers"]})
                # E0 = 0, scale 1, shift 0, force RMS 1: molequi's outputs are the package's
                stats = Statistics(elements=elements)
                model = FAENet(molequi_config(spec, mode), stats).double()
                state = model.state_dict()
                missing = (
                    set(state)
                    - set(peer["state_dict"])
                    - {"force_scale", "head.e0", "head.scale", "head.shift"}
                )
                unexpected = set(peer["state_dict"]) - set(state)
                if missing or unexpected:
                    raise SystemExit(
                        f"state dicts differ: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
                    )
                state.update(peer["state_dict"])
                model.load_state_dict(state)
                model.eval()
                for k, r in which:
                    name, a = chosen[k]
                    c0, w0 = time.process_time(), time.perf_counter()
                    with torch.no_grad():
                        out = model(Batch.from_data_list([records[k]]))
                    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                    e_err = float((out["energy"] - r["energy"]).abs().max())
                    f_err = float((out["forces"] - r["forces"]).abs().max())
                    rows.append(
                        {
                            "size": size_name,
                            "structure": name,
                            "frame_averaging": mode,
                            "atoms": len(a),
                            "edges": int(graphs[k]["edge_index"].shape[1]),
                            "frames": r["frames"],
                            "energy": float(out["energy"][0]),
                            "peer_energy": float(r["energy"][0]),
                            "abs_err_energy": e_err,
                            "abs_err_forces": f_err,
                            "max_abs_force": float(r["forces"].abs().max()),
                            "forward_cpu_s": round(cpu, 4),
                            "peer_forward_cpu_s": round(r["cpu_s"], 4),
                            "forward_wall_s": round(wall, 4),
                            "peer_forward_wall_s": round(r["wall_s"], 4),
                        }
                    )
    # relative errors per model (max abs error / max abs reference value of that model), then the worst model
    rel = {"energy": 0.0, "forces": 0.0}
    for size_name in sizes:
        mine = [r for r in rows if r["size"] == size_name]
        for k, ref_key in (("energy", "peer_energy"), ("forces", "max_abs_force")):
            e = max(r[f"abs_err_{k}"] for r in mine)
            s = max(abs(r[ref_key]) for r in mine)
            err[k] = max(err[k], e)
            rel[k] = max(rel[k], e / max(s, 1e-300))
    ok = all(v <= tolerance for v in rel.values())
    return {
        "peer": "faenet",
        "peer_version": peer_version,
        "dtype": "float64",
        "size": size,
        "seed": seed,
        "max_abs_err_energy": err["energy"],
        "max_abs_err_forces": err["forces"],
        "tolerance": tolerance,
        "ok": ok,
        "relative": rel,
        "peer_process_wall_s": round(peer_wall, 2),
        "structures": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--peer-python", required=True, help="python of the faenet venv (setup_peers.sh faenet)"
    )
    parser.add_argument(
        "--size",
        default="tiny,options_a,options_b,options_c",
        help=f"one or a comma list of {', '.join(SIZES)} (default: the tiny model and the three option sets)",
    )
    parser.add_argument("--frames", default="0,1", help="indices into data/oc20/oc20_real.extxyz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--workdir", help="keep the spec, graphs and peer results here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.size.split(",")) - set(SIZES))
    if unknown:
        parser.error(f"unknown --size {', '.join(unknown)} (known: {', '.join(SIZES)})")
    result = run(
        args.peer_python,
        args.size,
        [int(i) for i in args.frames.split(",") if i],
        args.seed,
        args.tolerance,
        Path(args.workdir) if args.workdir else None,
    )
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
