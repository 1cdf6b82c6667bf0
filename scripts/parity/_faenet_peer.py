"""Peer side of the FAENet parity check: the FAENet authors' package ``faenet`` 0.1.3, run by the python of
its venv (``bash scripts/bench/setup_peers.sh faenet``), never by molequi's venv.

    PY _faenet_peer.py build SPEC.json GRAPHS.pt OUT.pt
        for each spec of SPEC.json (one or a list): FAENet with seeded random weights, evaluated on the graphs
        with the package's full 3D frame averaging and, for periodic graphs, 2D; OUT.pt has, per model, its
        state dict and energies / forces per graph and frame mode
    PY _faenet_peer.py table OUT.json
        the package's element table (molequi/resources/faenet/elements.json)

The code run is the package's, unmodified: ``faenet.FAENet`` (its default ``pbc_preprocess`` reads the graph
given: ``edge_index``, ``cell_offsets``, ``neighbors``), ``faenet.frame_averaging.frame_averaging_3D`` /
``_2D`` for the frames and ``faenet.model_forward`` for the average over frames (rotating direct forces back).
Torch's default dtype is float64 here, so that the package's float tensors (its ``torch.eye(3)`` in 2D frames,
the Gaussian offsets) are float64 too; its ``pbc_preprocess`` still computes the periodic offsets in float32
(``cell_offsets.float() ... bmm(cell.float())``), which limits agreement on periodic cells to ~1e-7 relative.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch

# this folder (first on sys.path when run as a script) holds molequi's faenet.py driver, not the package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def table(out_path: str) -> None:
    from faenet.embedding import PhysEmbedding

    e = PhysEmbedding(props=True, props_grad=False, pg=True)
    out = {
        "faenet": version("faenet"),
        "mendeleev": version("mendeleev"),
        "properties_list": list(e.properties_list),
        "period_size": int(e.period_size),
        "group_size": int(e.group_size),
        "period": e.period.tolist(),
        "group": e.group.tolist(),
        "properties": [[float(v) for v in row] for row in e.properties.tolist()],
    }
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))


def randomise(model: torch.nn.Module, seed: int, gain: float) -> None:
    """Seeded random values for every float parameter and buffer that the package initialises to constants
    (biases 0, GraphNorm 1 / 0, BatchNorm running statistics 0 / 1), so that a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "graph_norm" in name or "decoder.model.1" in name:
                p.copy_(
                    0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
                    + (1.0 if name.endswith(("graph_norm.weight", "mean_scale", "model.1.weight")) else 0.0)
                )
            elif p.dim() == 2 and "embedding" not in name and "emb." not in name:
                p.mul_(gain)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))


def build(spec_path: str, graphs_path: str, out_path: str) -> None:
    torch.set_default_dtype(torch.float64)
    specs = json.loads(open(spec_path).read())
    models = []
    for spec in specs if isinstance(specs, list) else [specs]:
        models.append(build_one(dict(spec), graphs_path))
    torch.save({"models": models, "faenet": version("faenet")}, out_path)


def build_one(spec: dict, graphs_path: str) -> dict:
    import time

    from faenet import FAENet, model_forward
    from faenet.frame_averaging import frame_averaging_2D, frame_averaging_3D
    from torch_geometric.data import Data

    seed, gain = spec.pop("seed"), spec.pop("_gain", 1.0)
    torch.manual_seed(seed)
    model = FAENet(**spec).double()
    randomise(model, seed, gain)
    model.eval()
    results = []
    for g, fa in (
        (g, fa)
        for g in torch.load(graphs_path, weights_only=True)
        for fa in ("3D", "2D")
        if fa == "3D" or g["periodic"]
    ):
        fa_func = frame_averaging_3D if fa == "3D" else frame_averaging_2D
        n, ei = g["pos"].shape[0], g["edge_index"]
        data = Data(
            pos=g["pos"],
            atomic_numbers=g["numbers"],
            batch=torch.zeros(n, dtype=torch.long),
            cell=g["cell"].reshape(1, 3, 3),
            edge_index=ei,
            cell_offsets=g["cell_offsets"],
            neighbors=torch.tensor([ei.shape[1]]),
            tags=g["tags"],
            natoms=torch.tensor([n]),
        )
        data.fa_pos, data.fa_cell, data.fa_rot = fa_func(data.pos, data.cell, "all")
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            preds = model_forward(data, model, fa, mode="inference", crystal_task=True)
        results.append(
            {
                "frame_averaging": fa,
                "energy": preds["energy"].detach().clone(),
                "forces": preds["forces"].detach().clone(),
                "frames": len(data.fa_pos),
                "cpu_s": time.process_time() - c0,
                "wall_s": time.perf_counter() - w0,
            }
        )
    return {
        "state_dict": model.state_dict(),
        "results": results,
        "num_params": sum(p.numel() for p in model.parameters()),
    }


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "build":
        build(*sys.argv[2:5])
    elif cmd == "table":
        table(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {cmd!r} (build, table)")
