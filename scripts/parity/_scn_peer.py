"""Peer side of the SCN parity check: fairchem-core's SCN (``fairchem/core/models/scn/``, unmodified), run by a
python that has fairchem-core 1.10.0 (``bash scripts/bench/setup_peers.sh fairchem``), never by molequi's venv.

    PY _scn_peer.py build SPEC.json CKPT.pt [GRAPHS.pt OUT.pt]   SCN with random weights (seeded), saved as
                                                    fairchem's trainer saves it (and evaluated, as eval)
    PY _scn_peer.py eval CKPT.pt GRAPHS.pt OUT.pt   energies / forces of the graphs, float64, per-layer outputs

The stand-ins for modules needing torch_geometric / torch_scatter and the graph (fairchem's own
``radius_graph_pbc`` with the strict ``max_neighbors`` cut, which is what SCN's ``generate_graph`` does on
periodic structures) are the eSCN peer's (``_escn_peer.py``: ``import_escn``, ``run_graphs``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _escn_peer import cli, import_escn, run_graphs  # noqa: E402


def import_scn():
    _, utils = import_escn()  # registers the package stand-ins
    from fairchem.core.models.scn import scn

    return scn, utils


def build(spec_file: str, out: str) -> None:
    scn, _ = import_scn()
    spec = json.loads(Path(spec_file).read_text())
    seed, gain = spec.pop("seed"), spec.pop("_gain", 1.0)
    spec.pop("_hydra", None)
    torch.manual_seed(seed)  # fairchem trains in float32: weights and offsets as it saves them
    model = scn.SphericalChannelNetwork(**spec)
    with torch.no_grad():  # edge-atom embeddings start at +-0.001: give them a scale that matters, and a gain on
        for block in model.edge_blocks:  # the linear maps so that the SiLUs (and the random frames) count
            block.dist_block.source_embedding.weight.normal_(0.0, 0.5)
            block.dist_block.target_embedding.weight.normal_(0.0, 0.5)
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embedding" not in name:
                p.mul_(gain)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "normalizers": {}, "elementrefs": {},
                "config": {"model": {"name": "scn", **spec}, "task": {"dataset": "trajectory_lmdb"},
                           "optim": {"batch_size": 1}},
                "val_metrics": None, "amp": None, "epoch": 0, "step": 0, "ema": None}, out)


def evaluate(ckpt_file: str, graphs_file: str, out: str) -> None:
    scn, utils = import_scn()
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    cfg = json.loads(json.dumps(ckpt["config"]["model"]))
    cfg.pop("name")
    model = scn.SphericalChannelNetwork(**cfg)  # built in float32 as fairchem builds it, evaluated in float64
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    model = model.double().eval()
    model.requires_grad_(False)
    torch.set_default_dtype(torch.float64)  # Wigner matrices, grids, sphere points are built in it
    features = []
    for block in model.edge_blocks:
        block.register_forward_hook(lambda mod, inp, outp: features.append(outp.detach().clone()))
    graphs = torch.load(graphs_file, weights_only=True)
    torch.save({"raw": run_graphs(model, model, utils, graphs, features), "ema": None}, out)


if __name__ == "__main__":
    cli(build, evaluate, sys.argv)
