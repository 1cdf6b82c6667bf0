"""Peer side of the EquiformerV2 parity check: fairchem-core 1.10.0's ``EquiformerV2Backbone`` with its
``EqV2ScalarHead`` (energy) and ``EqV2VectorHead`` (forces), run by a python that has fairchem-core
(``bash scripts/bench/setup_peers.sh fairchem``), never by molequi's venv.

    PY _equiformer_v2_peer.py build SPEC.json CKPT.pt [GRAPHS.pt OUT.pt]   random weights (seeded), saved as
                                        fairchem's trainer saves a HydraModel, or with "_layout": "plain" in
                                        SPEC fairchem's one-class ``equiformer_v2`` model (and evaluated, as eval)
    PY _equiformer_v2_peer.py eval CKPT.pt GRAPHS.pt OUT.pt     energies / forces (float64, eval mode) and
                                        every block's output

The code run is fairchem-core's ``models/equiformer_v2`` (backbone, heads, SO(2) / SO(3) ops, norms,
activations), unmodified. Stood in for, as in ``_escn_peer.py`` (whose stubs this reuses): package
``__init__`` files, ``fairchem.core.common.utils`` (fairchem's own functions compiled from its source) and
``fairchem.core.models.base`` (empty interface classes); and ``torch_geometric.utils.softmax`` (torch_geometric is
not installed in the peer venv): PyG's algorithm (max-shifted exp, scatter sum + 1e-16). A HydraModel is what
``backbone`` + ``output_heads`` name in the state dict; its forward is the backbone followed by each head, as here.
The graph is fairchem's ``radius_graph_pbc`` with the strict ``max_neighbors`` cut (``generate_graph``'s result
for periodic structures).
"""

from __future__ import annotations

import functools
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _escn_peer import Data, cli, import_escn  # noqa: E402

HEADS = {"energy": {"module": "equiformer_v2_energy_head"}, "forces": {"module": "equiformer_v2_force_head"}}


def pyg_softmax(src, index, ptr=None, num_nodes=None, dim=0):
    n = int(index.max()) + 1 if num_nodes is None else num_nodes
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    src_max = src.new_zeros((n,) + src.shape[1:]).scatter_reduce(0, idx, src.detach(), reduce="amax",
                                                                   include_self=False)
    out = (src - src_max.index_select(0, index)).exp()
    out_sum = src.new_zeros((n,) + src.shape[1:]).scatter_add_(0, idx, out) + 1e-16
    return out / out_sum.index_select(0, index)


@functools.cache
def import_eqv2():
    _, utils = import_escn()
    base = Path(sys.modules["fairchem"].__path__[0])
    module = types.ModuleType("fairchem.core.models.equiformer_v2")  # its __init__ imports the deprecated model
    module.__path__ = [str(base / "core/models/equiformer_v2")]
    sys.modules[module.__name__] = module
    heads = types.ModuleType("fairchem.core.models.equiformer_v2.heads")  # its __init__: rank2 (torch_scatter)
    heads.__path__ = [str(base / "core/models/equiformer_v2/heads")]
    sys.modules[heads.__name__] = heads
    tg, tgu = types.ModuleType("torch_geometric"), types.ModuleType("torch_geometric.utils")
    tgu.softmax, tg.utils = pyg_softmax, tgu
    sys.modules["torch_geometric"], sys.modules["torch_geometric.utils"] = tg, tgu
    mbase = sys.modules["fairchem.core.models.base"]
    mbase.GraphData = type("GraphData", (), {})
    from fairchem.core.models.equiformer_v2.heads.scalar import EqV2ScalarHead
    from fairchem.core.models.equiformer_v2.heads.vector import EqV2VectorHead

    heads.EqV2ScalarHead, heads.EqV2VectorHead = EqV2ScalarHead, EqV2VectorHead
    from fairchem.core.models.equiformer_v2 import equiformer_v2 as eqv2

    return eqv2, EqV2ScalarHead, EqV2VectorHead, utils


def make(spec: dict):
    eqv2, Scalar, Vector, _ = import_eqv2()
    backbone = eqv2.EquiformerV2Backbone(**spec)
    return backbone, Scalar(backbone, reduce="sum"), Vector(backbone)


def make_plain(spec: dict):
    """fairchem's one-class (deprecated) ``equiformer_v2`` model."""
    import_eqv2()
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2

    return EquiformerV2(**spec)


def build(spec_file: str, out: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    seed, prefix = spec.pop("seed"), spec.pop("_prefix", "module.")
    spec.pop("_hydra", None)
    plain = spec.pop("_layout", "hydra") == "plain"
    with_ema = spec.pop("_ema", False)
    torch.manual_seed(seed)
    mods = [("", make_plain(spec))] if plain else list(zip(
        ("backbone.", "output_heads.energy.", "output_heads.forces."), make(spec)))
    with torch.no_grad():  # move the parameters fairchem starts at constants, so that every one is checked
        for _, mod in mods:
            for name, p in mod.named_parameters():
                if "embedding" in name and "sphere_embedding" not in name:
                    p.normal_(0.0, 0.5)  # edge-atom embeddings start at +-0.001
                elif "norm" in name or "bias" in name:
                    p.add_(0.1 * torch.randn_like(p))
    ema = None
    if with_ema:  # fairchem's EMA holds these weights; the raw ones then move away (x1.1), as in training
        escn, _ = import_escn()
        params = [p for _, mod in mods for p in mod.parameters()]  # HydraModel order: backbone, heads
        ema = escn.ExponentialMovingAverage(params, 0.999)
        with torch.no_grad():
            for p in params:
                if p.requires_grad:
                    p.mul_(1.1)
    state = {}
    for pre, mod in mods:
        state.update({prefix + pre + k: v for k, v in mod.state_dict().items()})
    cfg = {"name": "equiformer_v2", **spec} if plain else \
        {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone", **spec}, "heads": HEADS}
    torch.save({"state_dict": state, "normalizers": {}, "elementrefs": {},
                "config": {"model": cfg, "task": {"dataset": "trajectory_lmdb"}, "optim": {"batch_size": 1}},
                "val_metrics": None, "amp": None, "epoch": 0, "step": 0,
                "ema": ema.state_dict() if ema is not None else None}, out)


def evaluate(ckpt_file: str, graphs_file: str, out: str) -> None:
    _, _, _, utils = import_eqv2()
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    cfg = json.loads(json.dumps(ckpt["config"]["model"]))
    plain = cfg.pop("name") == "equiformer_v2"
    if plain:  # built in float32 as fairchem's trainer builds it
        backbone = make_plain(cfg)
        mods = [("", backbone)]
    else:
        spec = cfg["backbone"]
        spec.pop("model")
        backbone, ehead, fhead = make(spec)
        mods = [("backbone.", backbone), ("output_heads.energy.", ehead), ("output_heads.forces.", fhead)]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    for pre, mod in mods:
        mod.load_state_dict({k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}, strict=True)
        mod.double().eval()
    ema = None
    if ckpt.get("ema") is not None:  # what fairchem's trainer validates with: ema.copy_to() of its EMA
        escn, _ = import_escn()
        ema = escn.ExponentialMovingAverage([p for _, mod in mods for p in mod.parameters()], 0.999)
        ema.load_state_dict(ckpt["ema"])
    for _, mod in mods:
        mod.requires_grad_(False)
    torch.set_default_dtype(torch.float64)
    features = []
    for block in backbone.blocks:
        block.register_forward_hook(lambda mod, inp, outp: features.append(outp.embedding.detach().clone()))
    graphs = torch.load(graphs_file, weights_only=True)
    out_all = {"raw": run_graphs(backbone, mods, plain, utils, graphs, features), "ema": None}
    if ema is not None:
        ema.copy_to()
        out_all["ema"] = run_graphs(backbone, mods, plain, utils, graphs, features)
    torch.save(out_all, out)


def run_graphs(backbone, mods, plain, utils, graphs, features) -> list[dict]:
    results = []
    for g in graphs:
        pos = g["pos"].double()
        natoms = torch.tensor([pos.shape[0]])
        cell = g["cell"].double().view(1, 3, 3)
        gdata = types.SimpleNamespace(pos=pos.float(), natoms=natoms, cell=cell.float(), pbc=g["pbc"].view(1, 3))
        torch.set_default_dtype(torch.float32)
        ei, unit_cell, _ = utils.radius_graph_pbc(gdata, backbone.cutoff, backbone.max_neighbors,
                                                  backbone.enforce_max_neighbors_strictly)
        torch.set_default_dtype(torch.float64)
        vec = pos[ei[0]] - pos[ei[1]] + unit_cell.double() @ cell[0]
        numbers = g["numbers"].long()
        graph = types.SimpleNamespace(edge_index=ei, edge_distance=torch.sqrt(torch.sum(vec**2, dim=1)),
                                      edge_distance_vec=vec, atomic_numbers_full=numbers,
                                      batch_full=torch.zeros(pos.shape[0], dtype=torch.long), node_offset=0)
        backbone.generate_graph = lambda data, graph=graph, **kw: graph
        data = Data(pos=pos, atomic_numbers=numbers, natoms=natoms, batch=torch.zeros(pos.shape[0], dtype=torch.long))
        features.clear()
        torch.manual_seed(int(g["seed"]))
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            if plain:
                o = backbone(data)
                energy, forces = o["energy"], o["forces"]
            else:
                emb = backbone(data)
                energy, forces = mods[1][1](data, emb)["energy"], mods[2][1](data, emb)["forces"]
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        results.append({"energy": energy.detach(), "forces": forces.detach(), "cpu_s": cpu, "wall_s": wall,
                        "edges": int(ei.shape[1]), "edge_index": ei, "edge_vec": vec, "layers": list(features)})
    return results


if __name__ == "__main__":
    cli(build, evaluate, sys.argv)
