"""Peer side of the eSCN parity check: fairchem-core's eSCN, run by a python that has fairchem-core 1.10.0
(``bash scripts/bench/setup_peers.sh fairchem``), never by molequi's venv.

    PY _escn_peer.py build SPEC.json CKPT.pt [GRAPHS.pt OUT.pt]   eSCN with random weights (seeded), saved
                                                    as fairchem's trainer saves it (and evaluated, as eval)
    PY _escn_peer.py eval CKPT.pt GRAPHS.pt OUT.pt  energies / forces of the graphs, float64 (+ per-layer
                                                    node features for locating differences), with the raw
                                                    weights and, when the file has an EMA, with fairchem's
                                                    ExponentialMovingAverage.copy_to() weights

The code run is fairchem-core's ``fairchem/core/models/escn/escn.py`` and ``so3.py``, unmodified. Only package
``__init__`` files are bypassed and two modules that import torch_geometric / torch_scatter (not installed in
the peer venv) are stood in for: ``fairchem.core.common.utils`` gets fairchem's own ``conditional_grad``,
``get_counts``, ``sum_partitions``, ``get_max_neighbors_mask`` and ``radius_graph_pbc`` (their source,
compiled from that file) and
``fairchem.core.models.base`` empty interface classes. ``generate_graph`` (in that base module) is replaced by
what it does for eSCN on periodic structures: fairchem's own ``radius_graph_pbc`` (compiled from its source as
above) with eSCN's cutoff, ``max_neighbors`` and the strict cut, from the positions and cell the driver sends.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import torch


@functools.cache
def import_escn():
    base = Path(list(importlib.util.find_spec("fairchem").submodule_search_locations)[0])
    for name, sub in [("fairchem", ""), ("fairchem.core", "core"), ("fairchem.core.models", "core/models"),
                      ("fairchem.core.models.escn", "core/models/escn"), ("fairchem.core.models.scn", "core/models/scn"),
                      ("fairchem.core.common", "core/common"), ("fairchem.core.modules", "core/modules")]:
        module = types.ModuleType(name)
        module.__path__ = [str(base / sub)]
        sys.modules[name] = module
    utils = types.ModuleType("fairchem.core.common.utils")
    src = (base / "core/common/utils.py").read_text()
    tree = ast.parse(src)
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name in ("conditional_grad", "get_counts", "sum_partitions", "get_max_neighbors_mask",
                           "radius_graph_pbc")]
    import numpy as np

    utils.__dict__.update({"torch": torch, "np": np, "wraps": functools.wraps})
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(base / "core/common/utils.py"), "exec"), utils.__dict__)
    sys.modules["fairchem.core.common.utils"] = utils
    mbase = types.ModuleType("fairchem.core.models.base")

    class GraphModelMixin:
        pass

    mbase.GraphModelMixin = GraphModelMixin
    mbase.BackboneInterface = type("BackboneInterface", (), {})
    mbase.HeadInterface = type("HeadInterface", (), {"use_amp": property(lambda self: False)})  # as base.py
    sys.modules["fairchem.core.models.base"] = mbase
    from fairchem.core.models.escn import escn
    from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

    escn.ExponentialMovingAverage = ExponentialMovingAverage  # carried along for build / evaluate
    return escn, utils


@functools.cache
def import_hydra():
    """fairchem's real ``HydraModel`` (``models/base.py``): torch_geometric stood in for (only its
    ``radius_graph`` name is imported there, unused with a replaced generate_graph)."""
    _, utils = import_escn()
    tg, tgn = types.ModuleType("torch_geometric"), types.ModuleType("torch_geometric.nn")
    tgn.radius_graph, tg.nn = None, tgn
    sys.modules.setdefault("torch_geometric", tg)
    sys.modules.setdefault("torch_geometric.nn", tgn)
    for name in ("compute_neighbors", "get_pbc_distances", "load_model_and_weights_from_checkpoint"):
        setattr(utils, name, getattr(utils, name, None))
    stub = sys.modules.pop("fairchem.core.models.base")
    try:
        base = importlib.import_module("fairchem.core.models.base")
    finally:
        sys.modules["fairchem.core.models.base"] = stub  # eSCN's classes were built on the stub interfaces
    return base.HydraModel


HYDRA_HEADS = {"energy": {"module": "escn_energy_head"}, "forces": {"module": "escn_force_head"}}


class Data(types.SimpleNamespace):
    def values(self):  # HydraModel.forward reads the device from data.values()
        return list(vars(self).values())


def build(spec_file: str, out: str) -> None:
    escn, _ = import_escn()
    spec = json.loads(Path(spec_file).read_text())
    seed = spec.pop("seed")
    prefix = spec.pop("_prefix", "module.")
    gain = spec.pop("_gain", 1.0)
    with_ema = spec.pop("_ema", False)
    hydra = spec.pop("_hydra", False)
    torch.manual_seed(seed)  # fairchem trains in float32: weights, sphere points and offsets as it saves them
    if hydra:  # fairchem >= 1.1's backbone + heads model: escn_backbone, escn_energy_head, escn_force_head
        model_cfg = {"name": "hydra", "backbone": {"model": "escn_backbone", **spec}, "heads": HYDRA_HEADS}
        model = import_hydra()(backbone=dict(model_cfg["backbone"]), heads=json.loads(json.dumps(HYDRA_HEADS)))
        net = model.backbone
    else:
        model_cfg = {"name": "escn", **spec}
        model = net = escn.eSCN(**spec)
    with torch.no_grad():  # the edge-atom embeddings start at +-0.001; give them a scale that matters
        for block in net.layer_blocks:
            eb = block.message_block.edge_block
            eb.source_embedding.weight.normal_(0.0, 0.5)
            eb.target_embedding.weight.normal_(0.0, 0.5)
        # PyTorch's default init makes the messages small, where SiLU is nearly linear and the random edge
        # frames hardly matter (1e-8); a gain on every linear map makes the nonlinearities (and the frames) count
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embedding" not in name:
                p.mul_(gain)
    ema = None
    if with_ema:  # fairchem's EMA holds these weights; the raw ones then move away (x1.1), as in training
        ema = escn.ExponentialMovingAverage(model.parameters(), 0.999)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(1.1)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "normalizers": {}, "elementrefs": {},
                "config": {"model": model_cfg, "task": {"dataset": "trajectory_lmdb"},
                           "optim": {"batch_size": 1}},
                "val_metrics": None, "amp": None, "epoch": 0, "step": 0,
                "ema": ema.state_dict() if ema is not None else None}, out)


def evaluate(ckpt_file: str, graphs_file: str, out: str) -> None:
    escn, utils = import_escn()
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    cfg = json.loads(json.dumps(ckpt["config"]["model"]))
    name = cfg.pop("name")
    # built in float32 as fairchem's trainer builds it (the Gaussian width is computed at construction from a
    # float32 linspace; it is not in the state dict), then evaluated in float64
    model = import_hydra()(**cfg) if name == "hydra" else escn.eSCN(**cfg)
    net = model.backbone if name == "hydra" else model
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    # eSCN's forward re-enables grad (conditional_grad); without parameters that require grad it records no
    # graph (an OC20-size graph holds ~5 GB per frame)
    model = model.double().eval()
    ema = None
    if ckpt.get("ema") is not None:  # what fairchem's trainer validates with: ema.copy_to() of its EMA
        ema = escn.ExponentialMovingAverage(model.parameters(), 0.999)
        ema.load_state_dict(ckpt["ema"])
    model.requires_grad_(False)
    torch.set_default_dtype(torch.float64)  # fairchem allocates Wigner matrices, grids, energies in it
    features = []
    for block in net.layer_blocks:
        block.register_forward_hook(lambda mod, inp, outp: features.append(outp.embedding.detach().clone()))
    graphs = torch.load(graphs_file, weights_only=True)
    out_all = {"raw": run_graphs(model, net, utils, graphs, features), "ema": None}
    if ema is not None:
        ema.copy_to()
        out_all["ema"] = run_graphs(model, net, utils, graphs, features)
    torch.save(out_all, out)


def run_graphs(model, net, utils, graphs, features) -> list[dict]:
    """Energies / forces of ``model`` (eSCN, or a HydraModel whose backbone ``net`` is eSCN's)."""
    results = []
    for g in graphs:
        pos = g["pos"].double()
        natoms = torch.tensor([pos.shape[0]])
        cell = g["cell"].double().view(1, 3, 3)
        # fairchem's own graph, as eSCN's generate_graph builds it (otf_graph, use_pbc): radius_graph_pbc with
        # the strict neighbour cut (enforce_max_neighbors_strictly defaults to True for eSCN). It only runs in
        # float32 (its cell offsets are float32 tensors), as fairchem's data are; the vectors are then
        # pos[j] - pos[i] + offsets in float64 (get_pbc_distances would round the offsets to float32)
        gdata = types.SimpleNamespace(pos=pos.float(), natoms=natoms, cell=cell.float(), pbc=g["pbc"].view(1, 3))
        torch.set_default_dtype(torch.float32)  # its distance table is allocated in the default dtype
        ei, unit_cell, _ = utils.radius_graph_pbc(gdata, net.cutoff, net.max_neighbors, True)
        torch.set_default_dtype(torch.float64)
        vec = pos[ei[0]] - pos[ei[1]] + unit_cell.double() @ cell[0]
        graph = types.SimpleNamespace(edge_index=ei, edge_distance=torch.sqrt(torch.sum(vec**2, dim=1)),
                                      edge_distance_vec=vec)
        net.generate_graph = lambda data, graph=graph: graph
        data = Data(pos=pos, atomic_numbers=g["numbers"].long(), natoms=natoms,
                    batch=torch.zeros(pos.shape[0], dtype=torch.long))
        features.clear()
        torch.manual_seed(int(g["seed"]))
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            o = model(data)
        if net is not model:  # HydraModel: {head name: {property: tensor}}
            o = {"energy": o["energy"]["energy"], "forces": o["forces"]["forces"]}
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        results.append({"energy": o["energy"].detach(), "forces": o["forces"].detach(), "cpu_s": cpu,
                        "wall_s": wall, "edges": int(ei.shape[1]), "edge_index": ei, "edge_vec": vec,
                        "layers": list(features)})
    return results


def cli(build, evaluate, argv: list[str]) -> None:
    """The peers' command line: ``build SPEC CKPT [GRAPHS OUT]`` (build, and evaluate in the same process) or
    ``eval CKPT GRAPHS OUT``."""
    if argv[1] == "build":
        build(argv[2], argv[3])
        if len(argv) > 4:
            evaluate(argv[3], argv[4], argv[5])
    else:
        evaluate(argv[2], argv[3], argv[4])


if __name__ == "__main__":
    cli(build, evaluate, sys.argv)
