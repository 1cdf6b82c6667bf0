"""Parity of molequi's QHNet with the reference QHNet code (divelab/AIRS, folder OpenDFT/QHNet).

    python scripts/parity/check.py qhnet --peer-code PATH [--checkpoint CKPT] [--version V] [--size S]
    python scripts/parity/qhnet.py --peer-code PATH [...]                  (the same, directly)

PATH is the reference's OpenDFT/QHNet folder (github.com/divelab/AIRS at commit
4a16c68a7da707c521019067dec51c227c10de45; here ../shared/peers/qhnet).

1. Builds the reference model in float64 (``models/ori_QHNet_with_bias.py`` for ``--version QHNet_w_bias``,
   the default and what its MD17 config trains; ``models/QHNet.py`` for ``--version QHNet``) with the MD17
   sizes of its ``get_model`` (``--size paper``: hidden 128, bottleneck 32, 5 layers, lmax 4, 16 radial
   functions, cutoff 15 Å) or a small one (``--size tiny``), seeded random init plus seeded N(0, 0.02^2)
   noise on every parameter (e3nn's zero-initialised biases would otherwise not be tested). With
   ``--checkpoint`` the weights come from that file (a ``results.pt`` of its train_wH.py) instead.
2. Saves them as ``train_wH.py`` does (``torch.save({"state_dict": ..., "eval": ..., "batch_idx": ...})``),
   imports that file with ``molequi.interop.qhnet.import_qhnet`` (float64).
3. Runs both on one batch of the same geometries: a water and two displaced waters, three rMD17 ethanol
   frames (``data/md17/rmd17_ethanol_train_01.npz``). The reference's ``keep_blocks=True`` output (diagonal
   blocks per atom, off-diagonal blocks per directed pair, its orbital layout) is compared with molequi's
   blocks taken back to that layout (``harmonics_to_pyscf``): max |diff| and max |diff| / max |reference|
   for the diagonal and off-diagonal blocks; goal 1e-6 relative.

``torch_cluster`` and ``torch_scatter`` (compiled extensions that do not install with torch 2.13) are
replaced in the reference's import by shims: ``radius_graph`` from a distance matrix with torch_cluster's
edge order (grouped by the centre atom, edge_index[1]) and neighbour cap, ``scatter`` (sum) by
``index_add``. Prints one JSON object {"peer", "max_abs_err_diagonal", "max_abs_err_offdiagonal",
"tolerance", "ok", ...}; exit status 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOLERANCE = 1e-6
SIZES = {  # reference QHNet(...) keyword arguments
    "paper": dict(in_node_features=1, sh_lmax=4, hidden_size=128, bottle_hidden_size=32, num_gnn_layers=5,
                  max_radius=15, num_nodes=10, radius_embed_dim=16),
    "tiny": dict(in_node_features=1, sh_lmax=4, hidden_size=8, bottle_hidden_size=4, num_gnn_layers=4,
                 max_radius=15, num_nodes=10, radius_embed_dim=6),
}
FILES = {"QHNet_w_bias": "ori_QHNet_with_bias", "QHNet": "QHNet"}
WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])
ETHANOL = REPO / "data" / "md17" / "rmd17_ethanol_train_01.npz"


def _radius_graph(x, r, batch=None, loop=False, max_num_neighbors=32, flow="source_to_target", **_):
    """torch_cluster.radius_graph: pairs closer than r in the same graph, ordered by centre (row 1)."""
    batch = torch.zeros(len(x), dtype=torch.long) if batch is None else batch
    d = torch.cdist(x, x)
    ok = (d < r) & (batch[:, None] == batch[None, :])
    if not loop:
        ok.fill_diagonal_(False)
    rows, cols = [], []
    for centre in range(len(x)):
        nb = torch.nonzero(ok[:, centre]).squeeze(1)[:max_num_neighbors]
        rows.append(nb)
        cols.append(torch.full_like(nb, centre))
    edge = torch.stack([torch.cat(rows), torch.cat(cols)])
    return edge if flow == "source_to_target" else edge.flip(0)


def _scatter(src, index, dim=0, dim_size=None, reduce="sum", **_):
    if reduce not in ("sum", "add") or dim != 0:
        raise NotImplementedError("the QHNet parity shim only sums over dim 0")
    size = int(index.max()) + 1 if dim_size is None else dim_size
    return src.new_zeros((size, *src.shape[1:])).index_add_(0, index, src)


def import_peer(peer_code: Path, version: str):
    """The reference QHNet class of ``version``, imported from ``peer_code`` with the shims installed."""
    sys.modules.setdefault("torch_cluster", types.SimpleNamespace(radius_graph=_radius_graph))
    sys.modules.setdefault("torch_scatter", types.SimpleNamespace(scatter=_scatter))
    if str(peer_code) not in sys.path:
        sys.path.insert(0, str(peer_code))
    import importlib

    return importlib.import_module(f"models.{FILES[version]}").QHNet


def geometries():
    """[(name, numbers, positions Å)]: waters and rMD17 ethanol frames."""
    rng = np.random.default_rng(0)
    out = [("water", [8, 1, 1], WATER)]
    out += [(f"water+{k}", [8, 1, 1], WATER + rng.normal(0, 0.05, (3, 3))) for k in (1, 2)]
    with np.load(ETHANOL) as d:
        out += [(f"ethanol[{i}]", d["nuclear_charges"].tolist(), d["coords"][i]) for i in (0, 7, 13)]
    return out


def build_reference(cls, size: str, seed: int):
    torch.manual_seed(seed)
    model = cls(**SIZES[size])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def reference_blocks(model, geoms):
    """Reference keep_blocks output: ({atom: (14, 14)}, {(dst, src): (14, 14)}) with batch atom indices."""
    from torch_geometric.data import Batch, Data

    data = Batch.from_data_list([Data(atoms=torch.tensor(z).view(-1, 1), pos=torch.as_tensor(p))
                                 for _, z, p in geoms])
    with torch.no_grad():
        out = model(data, keep_blocks=True)
    dst, src = data.full_edge_index
    diag = dict(enumerate(out["hamiltonian_diagonal_blocks"]))
    offd = {(int(a), int(b)): blk for a, b, blk in zip(dst, src, out["hamiltonian_non_diagonal_blocks"])}
    return diag, offd


def molequi_blocks(model, geoms):
    """molequi's blocks in the reference's layout, keyed like ``reference_blocks``."""
    from torch_geometric.data import Batch, Data

    from molequi.models.hamiltonian.blocks import molecule_pairs

    batch = Batch.from_data_list([Data(numbers=torch.tensor(z), pos=torch.as_tensor(p)) for _, z, p in geoms])
    with torch.no_grad():
        out = model(batch)
    q = model.to_pyscf
    blocks = q @ out["blocks"] @ q.T  # PySCF order -> the internal (reference) harmonics
    i, j, _, _ = molecule_pairs(batch.ptr)
    diag, offd = {}, {}
    for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
        (diag.__setitem__(a, blocks[k]) if a == b else offd.__setitem__((a, b), blocks[k]))
    return diag, offd


def _masked(blk, za, zb):
    """Zero the padded orbitals the reference leaves out for H / He (its orbital_mask): only the entries
    both programs define are compared."""
    keep = {True: [0, 1, 3, 4, 5], False: list(range(14))}
    rows, cols = keep[za <= 2], keep[zb <= 2]
    out = torch.zeros_like(blk)
    out[np.ix_(rows, cols)] = blk[np.ix_(rows, cols)]
    return out


def run(peer_code, checkpoint=None, *, version="QHNet_w_bias", size="paper", seed=0, work=None) -> dict:
    from molequi.interop.qhnet import import_qhnet, qhnet_config, read_qhnet_state

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cls = import_peer(Path(peer_code), version)
        geoms = geometries()
        numbers = [z for _, zs, _ in geoms for z in zs]
        if checkpoint is not None:  # the reference built at the sizes its weights have
            state = read_qhnet_state(checkpoint)
            cfg = qhnet_config(state, version)
            ref = cls(in_node_features=1, sh_lmax=cfg.lmax, hidden_size=cfg.hidden_size,
                      bottle_hidden_size=cfg.bottle_hidden_size, num_gnn_layers=cfg.num_layers,
                      max_radius=cfg.max_radius, num_nodes=cfg.num_embeddings,
                      radius_embed_dim=cfg.num_radial)
            ref.load_state_dict(state)
            ref = ref.double().eval()
            path = Path(checkpoint)
        else:
            ref = build_reference(cls, size, seed)
            path = Path(work) / "results.pt"
            torch.save({"state_dict": ref.state_dict(), "eval": {"hamiltonian_mae": 0.0}, "batch_idx": 0},
                       path)
        t0 = time.perf_counter()
        ref_diag, ref_off = reference_blocks(ref, geoms)
        t_ref = time.perf_counter() - t0
        model = import_qhnet(path, version=version, dtype=torch.float64)
        t0 = time.perf_counter()
        our_diag, our_off = molequi_blocks(model, geoms)
        t_ours = time.perf_counter() - t0
    finally:
        torch.set_default_dtype(previous)
    if set(ref_off) != set(our_off):
        raise SystemExit(f"pair sets differ: {sorted(set(ref_off) ^ set(our_off))[:5]}")
    result = {}
    for name, ref_b, our_b, keyz in (("diagonal", ref_diag, our_diag, lambda k: (k, k)),
                                     ("offdiagonal", ref_off, our_off, lambda k: k)):
        err = scale = 0.0
        for k in ref_b:
            a, b = keyz(k)
            r = _masked(ref_b[k], numbers[a], numbers[b])
            o = _masked(our_b[k], numbers[a], numbers[b])
            err = max(err, float((r - o).abs().max()))
            scale = max(scale, float(r.abs().max()))
        result[name] = (err, scale)
    rel = {k: e / max(s, 1e-300) for k, (e, s) in result.items()}
    return {
        "peer": "QHNet (divelab/AIRS OpenDFT/QHNet @ 4a16c68)", "version": version,
        "size": "the checkpoint's" if checkpoint else size,
        "checkpoint": str(checkpoint) if checkpoint else None, "dtype": "float64",
        "max_abs_err_diagonal": result["diagonal"][0], "max_abs_err_offdiagonal": result["offdiagonal"][0],
        "max_abs_ref_diagonal": result["diagonal"][1], "max_abs_ref_offdiagonal": result["offdiagonal"][1],
        "relative": rel, "tolerance": TOLERANCE, "ok": all(v <= TOLERANCE for v in rel.values()),
        "geometries": [g[0] for g in geoms], "pairs": len(ref_off),
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_s": {"reference": round(t_ref, 3), "molequi": round(t_ours, 3)},
    }


def step_times(peer_code, version="QHNet_w_bias", size="paper", repeats=3) -> dict:
    """CPU and wall seconds of one training step (forward, mean squared block loss, backward; median of
    ``repeats`` after one warm-up) in float32 on one thread: the reference QHNet, molequi's QHNet (the same
    sizes) and ``hamiltonian_conv`` at its defaults, on a batch of 10 waters and one of 5 ethanols."""
    from torch_geometric.data import Batch, Data

    from molequi.models.hamiltonian import HamiltonianConv, QHNet, QHNetConfig

    torch.set_num_threads(1)
    ref = build_reference(import_peer(Path(peer_code), version), size, 0).float().train()
    kw = SIZES[size]
    ours = QHNet(QHNetConfig(hidden_size=kw["hidden_size"], bottle_hidden_size=kw["bottle_hidden_size"],
                             num_layers=kw["num_gnn_layers"], max_radius=float(kw["max_radius"]),
                             num_radial=kw["radius_embed_dim"])).float().train()
    conv = HamiltonianConv().float().train()
    geoms = geometries()
    batches = {"water x10": [geoms[k % 3] for k in range(10)],
               "ethanol x5": [geoms[3 + k % 3] for k in range(5)]}

    def ref_step(mols):
        data = Batch.from_data_list([Data(atoms=torch.tensor(z).view(-1, 1), pos=torch.as_tensor(p).float())
                                     for _, z, p in mols])
        out = ref(data, keep_blocks=True)
        return (out["hamiltonian_diagonal_blocks"].pow(2).mean()
                + out["hamiltonian_non_diagonal_blocks"].pow(2).mean())

    def our_step(model):
        def step(mols):
            batch = Batch.from_data_list([Data(numbers=torch.tensor(z), pos=torch.as_tensor(p).float())
                                          for _, z, p in mols])
            return model(batch)["fock"].pow(2).mean()
        return step

    out = {}
    for name, model, step in (("reference QHNet", ref, ref_step), ("molequi qhnet", ours, our_step(ours)),
                              ("molequi hamiltonian_conv", conv, our_step(conv))):
        row = {"parameters": sum(p.numel() for p in model.parameters())}
        for bname, mols in batches.items():
            cpu, wall = [], []
            for k in range(repeats + 1):
                model.zero_grad()
                c0, w0 = time.process_time(), time.perf_counter()
                step(mols).backward()
                if k:
                    cpu.append(time.process_time() - c0)
                    wall.append(time.perf_counter() - w0)
            row[bname] = {"cpu_s": round(float(np.median(cpu)), 3),
                          "wall_s": round(float(np.median(wall)), 3)}
        out[name] = row
    return out


def build_argparser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-code", required=True, metavar="PATH",
                        help="the reference's OpenDFT/QHNet folder (divelab/AIRS @ 4a16c68)")
    parser.add_argument("--checkpoint", help="a results.pt written by the reference's train_wH.py "
                        "(default: random weights)")
    parser.add_argument("--version", choices=sorted(FILES), default="QHNet_w_bias",
                        help="which reference model (default QHNet_w_bias, what its MD17 config trains)")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper",
                        help="reference sizes (paper: its MD17 get_model; tiny: for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true",
                        help="also time one training step (float32, one thread) of the reference, molequi's "
                        "QHNet and hamiltonian_conv")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.peer_code, args.checkpoint, version=args.version, size=args.size, seed=args.seed,
                  work=tmp)
    if args.timing:
        res["train_step"] = step_times(args.peer_code, args.version, args.size)
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
