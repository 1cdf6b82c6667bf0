"""Parity of molequi's eSCN (``model.name: escn``) and its fairchem import with fairchem-core 1.10.0's eSCN.

    python scripts/parity/check.py escn --peer-python PY [--checkpoint CKPT] [--size tiny|oc20] [--frames ...]

``PY`` is a python with fairchem-core (``bash scripts/bench/setup_peers.sh fairchem`` prints it). Without
``--checkpoint`` the peer builds fairchem's eSCN with random weights (seeded; ``--size tiny`` for tests, ``oc20``
the OC20 S2EF All+MD sizes of ``eSCN-L6-M2-Lay12-All-MD.yml``) and saves it as fairchem's trainer does
(``{"state_dict": ... "module."-prefixed as under DistributedDataParallel, "config": {"model": {...}}, ...}``).
molequi imports the file (``molequi.interop.fairchem``); both evaluate energies and forces in float64 on the
shipped real OC20 frames (``data/oc20/oc20_real.extxyz``), each with its own graph (molequi's neighbour list and
neighbour cut; fairchem's ``radius_graph_pbc`` with eSCN's strict ``max_neighbors`` cut: the check requires the
same edges in the same order with the same vectors) and the same random edge-frame rolls (both draw them with
``torch.rand`` from the same seed, edge by edge in that order). The peer also returns every layer's output,
so a difference is located per layer.

Prints one JSON object {"peer", "dtype", "max_abs_err_energy", "max_abs_err_forces", "tolerance", "ok",
"relative", "structures" (per frame: errors, edges, per-layer relative errors, forward CPU / wall seconds of
each side, no-grad, one structure, ``OMP_NUM_THREADS`` threads), ...} and exits 1 when a relative error (max abs error / max abs reference value,
per quantity) exceeds the tolerance (default 1e-5), or the graphs differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PEER = Path(__file__).with_name("_escn_peer.py")
FRAMES = ROOT / "data" / "oc20" / "oc20_real.extxyz"

SIZES = {
    # tiny: the test's model; a 6 Å cutoff and 12 neighbours so that the neighbour cut is exercised; "_gain"
    # (peer-side, not a fairchem option) multiplies the linear maps by 3 so that the SiLUs are nonlinear and
    # the random edge-frame rolls change the forces by ~1e-2 relative (1e-8 at PyTorch's default init): a
    # frame that differed from fairchem's would fail the 1e-5 tolerance
    "tiny": {"num_layers": 2, "lmax_list": [3], "mmax_list": [2], "sphere_channels": 8, "hidden_channels": 12,
             "edge_channels": 8, "num_sphere_samples": 16, "cutoff": 6.0, "max_neighbors": 12,
             "distance_resolution": 0.25, "basis_width_scalar": 2.0, "distance_function": "gaussian",
             "max_num_elements": 90, "use_pbc": True, "otf_graph": True, "regress_forces": True,
             "_gain": 3.0, "_ema": True},
    # eSCN-L6-M2-Lay12-All-MD.yml (fairchem configs/s2ef/all/escn)
    "oc20": {"num_layers": 12, "max_neighbors": 20, "cutoff": 12.0, "sphere_channels": 128, "hidden_channels": 256,
             "lmax_list": [6], "mmax_list": [2], "num_sphere_samples": 128, "distance_function": "gaussian",
             "regress_forces": True, "use_pbc": True, "basis_width_scalar": 2.0, "otf_graph": True},
}


def run_peer(py: str, *args: str, peer: Path = PEER) -> None:
    proc = subprocess.run([py, str(peer), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fairchem peer failed ({args[0]}):\n{proc.stderr[-3000:]}")


def peer_version(py: str) -> str:
    out = subprocess.run([py, "-c", "from importlib.metadata import version; print(version('fairchem-core'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run(py: str, checkpoint: str | None, size: str, frames: list[int], seed: int, work: Path,
        tolerance: float, hydra: bool = False, peer: Path = PEER, sizes: dict = SIZES,
        model_name: str = "escn") -> dict:
    """The check for eSCN, or with ``peer`` / ``sizes`` / ``model_name`` another fairchem model whose peer script
    speaks the same protocol (``equiformer_v2.py``)."""
    import ase.io

    from molequi.calculators.predict import build_records
    from molequi.interop.fairchem import import_fairchem

    atoms = ase.io.read(FRAMES, ":")
    chosen = [(i, atoms[i]) for i in frames]

    def save_graphs(cutoff: float):  # molequi's radius graphs; the peer builds its own from pos, cell, pbc
        records = build_records([a for _, a in chosen], cutoff, torch.float64, validate=False)
        graphs = [{"pos": r.pos, "cell": r.cell.reshape(3, 3), "numbers": r.numbers, "pbc": r.pbc.reshape(3),
                   "seed": seed + k} for k, r in enumerate(records)]
        torch.save(graphs, work / "graphs.pt")
        return records, graphs

    t0 = time.perf_counter()
    if checkpoint is None:  # the peer builds the checkpoint and evaluates it in one process
        spec = dict(sizes[size], seed=seed, _hydra=hydra)
        (work / "spec.json").write_text(json.dumps(spec))
        checkpoint = str(work / f"{model_name}.pt")
        records, graphs = save_graphs(float(spec.get("cutoff", spec.get("max_radius"))))
        run_peer(py, "build", str(work / "spec.json"), checkpoint, str(work / "graphs.pt"), str(work / "ref.pt"),
                 peer=peer)
        t_peer = time.perf_counter() - t0
        t1 = time.perf_counter()
        model, normalizers = import_fairchem(checkpoint, dtype=torch.float64)
        t_import = time.perf_counter() - t1
    else:
        model, normalizers = import_fairchem(checkpoint, dtype=torch.float64)
        t_import = time.perf_counter() - t0
        records, graphs = save_graphs(model.r_max)
        t1 = time.perf_counter()
        run_peer(py, "eval", checkpoint, str(work / "graphs.pt"), str(work / "ref.pt"), peer=peer)
        t_peer = time.perf_counter() - t1
    ref_all = torch.load(work / "ref.pt", weights_only=True)
    ref = ref_all["raw"]

    layers_out = []
    for block in getattr(model, "layer_blocks", None) or model.blocks:
        block.register_forward_hook(lambda mod, inp, outp: layers_out.append(outp.detach().clone()))
    err = {"energy": 0.0, "forces": 0.0}
    scale = {"energy": 0.0, "forces": 0.0}
    rows, edges_ok = [], True
    t2 = time.perf_counter()
    for (i, a), rec, r, g in zip(chosen, records, ref, graphs):
        from torch_geometric.data import Batch

        batch = Batch.from_data_list([rec])
        layers_out.clear()
        model.generator = torch.Generator().manual_seed(int(g["seed"]))
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            out = model(batch)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        sender, receiver, vec = model.edges(batch, batch.pos, batch.cell.reshape(-1, 3, 3))
        same_graph = (sender.numel() == r["edges"] and torch.equal(sender, r["edge_index"][0])
                      and torch.equal(receiver, r["edge_index"][1])
                      and float((vec - r["edge_vec"]).abs().max()) < 1e-9)
        e_err = float((out["energy"] - r["energy"]).abs().max())
        f_err = float((out["forces"] - r["forces"]).abs().max())
        row = {"frame": i, "atoms": len(a), "edges": int(sender.numel()), "peer_edges": r["edges"],
               "same_edges_in_same_order": same_graph,
               "energy": float(out["energy"][0]), "peer_energy": float(r["energy"][0]),
               "abs_err_energy": e_err, "abs_err_forces": f_err,
               "max_abs_force": float(r["forces"].abs().max()),
               "forward_cpu_s": round(cpu, 3), "peer_forward_cpu_s": round(r["cpu_s"], 3),
               "forward_wall_s": round(wall, 3), "peer_forward_wall_s": round(r["wall_s"], 3),
               "layer_rel_err": [float((o - p).abs().max() / max(float(p.abs().max()), 1e-300))
                                 for o, p in zip(layers_out, r["layers"])]}
        edges_ok &= same_graph
        err["energy"], err["forces"] = max(err["energy"], e_err), max(err["forces"], f_err)
        scale["energy"] = max(scale["energy"], abs(row["peer_energy"]))
        scale["forces"] = max(scale["forces"], row["max_abs_force"])
        rows.append(row)
    t_ours = time.perf_counter() - t2
    rel = {k: err[k] / max(scale[k], 1e-300) for k in err}
    ok = edges_ok and all(v <= tolerance for v in rel.values())
    ema = None
    if ref_all.get("ema") is not None:  # the checkpoint's EMA weights: molequi import --ema vs ema.copy_to()
        ema_model, _ = import_fairchem(checkpoint, dtype=torch.float64, ema=True)
        e_err = f_err = e_scale = f_scale = 0.0
        for rec, r, g in zip(records, ref_all["ema"], graphs):
            from torch_geometric.data import Batch

            ema_model.generator = torch.Generator().manual_seed(int(g["seed"]))
            with torch.no_grad():
                out = ema_model(Batch.from_data_list([rec]))
            e_err = max(e_err, float((out["energy"] - r["energy"]).abs().max()))
            f_err = max(f_err, float((out["forces"] - r["forces"]).abs().max()))
            e_scale, f_scale = max(e_scale, float(r["energy"].abs().max())), max(f_scale, float(r["forces"].abs().max()))
        ema = {"relative": {"energy": e_err / max(e_scale, 1e-300), "forces": f_err / max(f_scale, 1e-300)},
               "differs_from_raw": float((ref_all["ema"][0]["forces"] - ref[0]["forces"]).abs().max() / f_scale)}
        ok = ok and all(v <= tolerance for v in ema["relative"].values())
    cfg = model.config
    return {"peer": f"fairchem-core {peer_version(py)}", "dtype": "float64", "model": model_name,
            "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "checkpoint": checkpoint if size is None else
            f"random weights ({size}, seed {seed}{', HydraModel' if hydra else ''})",
            "config": {"lmax": cfg.lmax, "mmax": cfg.mmax, "layers": cfg.num_layers,
                       "sphere_channels": cfg.sphere_channels, "cutoff": cfg.r_max,
                       "max_neighbors": cfg.max_neighbors, "parameters": sum(p.numel() for p in model.parameters())},
            "normalizers_not_applied": normalizers,
            "max_abs_err_energy": err["energy"], "max_abs_err_forces": err["forces"], "tolerance": tolerance,
            "relative": rel, "edges_match": edges_ok, "ema_weights": ema, "ok": ok,
            "seconds": {"import": round(t_import, 2), "peer": round(t_peer, 2), "molequi": round(t_ours, 2)},
            "structures": rows}


def build_argparser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", required=True, help="python with fairchem-core (setup_peers.sh fairchem)")
    parser.add_argument("--checkpoint", help="a fairchem eSCN checkpoint to check (default: random weights)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="sizes of the random model (tiny: tests; oc20: the OC20 S2EF All+MD config)")
    parser.add_argument("--frames", default="0,1,18,36",
                        help="comma list of frames of data/oc20/oc20_real.extxyz (0..36), or 'all'")
    parser.add_argument("--hydra", action="store_true",
                        help="the random model as fairchem >= 1.1's HydraModel (escn_backbone + escn_energy_head + "
                        "escn_force_head) instead of the eSCN class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    parser.add_argument("--workdir", help="keep the checkpoint, graphs and results here")
    return parser


def run_and_report(args: argparse.Namespace, **run_kwargs) -> int:
    """The fairchem checks' command line (eSCN, SCN, EquiformerV2): ``run`` on the frames ``args`` name, in
    ``--workdir`` or a temporary folder; prints the result JSON and returns the exit code (1: not ok)."""
    frames = list(range(37)) if args.frames == "all" else [int(f) for f in args.frames.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = run(args.peer_python, args.checkpoint, None if args.checkpoint else args.size, frames, args.seed,
                  work, args.tolerance, **run_kwargs)
    print(json.dumps(res))
    return 0 if res["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    return run_and_report(args, hydra=args.hydra)


if __name__ == "__main__":
    sys.exit(main())
