"""Time and memory per edge of edge tensor products for l_max = 1..6: e3nn 'uvu' vs SO(2) vs Gaunt (grid).

Setting (as in docs/targets.md): 16 channels per l, node features 16 x (0e + 1o + ... + L), edge spherical
harmonics up to L ('component'), outputs up to L (natural parity, MACE's target), per-edge weights.

Columns (microseconds per edge, forward, best of repeats as the machine is shared; memory = bytes per edge
saved for backward):
  e3nn          ``o3.TensorProduct`` uvu, one output block per path (MACE's layout)     O(L^6 C)
  so2_uvu       the same function in edge frames (``kind="so2"``)                      O(L^5 C) (rotating back
                one output block per path dominates)
  e3nn_merged   uvu with the paths into the same irrep summed (one block per l; what
                molequi's MACE convolution and eSCN produce)                           O(L^6 C)
  so2_merged  the same function in edge frames  O(L^4 C) (per-path weights)
  gaunt         S2-grid Gaunt product with radial filter (``kind="gaunt"``)            O(L^4 C) (dense grids)
  e3nn_uvw      e3nn ``FullyConnectedTensorProduct`` x (x) Y(u), channel mixing, shared weights: the
                function eSCN's layer equals (with Y up to 2L; here only up to L, favouring e3nn)  O(L^6 C^2)
  escn          eSCN's SO(2) convolution layer (per-order weights, radial modulation,
                channel mixing; ``molequi.nn.so2.SO2Convolution``, m_max = L)          O(L^3 C^2)
A GPU column is added when CUDA is available.

    python scripts/bench/tensor_products.py [--edges 256] [--lmax 6] [--repeats 15] [--threads 1]

``--mace`` times whole MACE models instead: energy + forces (float32, eval mode, graph built beforehand) of
``--frames`` rMD17 ethanol frames as one batch, for each ``MACE.Config.tensor_product`` (native, e3nn, so2,
gaunt) at each ``--mace-lmax`` (max_ell), other hyperparameters as in the mace-torch comparison
(``_common.MACE_HYPER``: 64x0e+64x1o, correlation 3, 2 layers). The kinds run interleaved, one call each per
round, after a warm-up; median wall and median process CPU time over ``--repeats`` rounds, and their ratio
to native. Saved as bench_results/tensor_products_mace.{json,md}.

    python scripts/bench/tensor_products.py --mace [--mace-lmax 3 4] [--frames 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from e3nn import o3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, MACE_HYPER, print_table, save  # noqa: E402

from molequi.nn.so2 import SO2Convolution  # noqa: E402
from molequi.nn.tensor_products import build_conv_tensor_product  # noqa: E402
from molequi.so3.rotations import irreps_blocks_to_stack  # noqa: E402


def natural(L: int, C: int) -> o3.Irreps:
    return o3.Irreps("+".join(f"{C}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(L + 1)))


def min_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` (s): the least disturbed run on a shared, loaded machine."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while running ``fn`` (training memory)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def bench_one(L: int, C: int, E: int, repeats: int, device: str) -> dict:
    dt = torch.float32
    ir_in, ir_sh, target = natural(L, C), o3.Irreps.spherical_harmonics(L), natural(L, C)
    g = torch.Generator().manual_seed(L)
    vec = torch.randn(E, 3, generator=g, dtype=dt).to(device)
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    x = torch.randn(E, ir_in.dim, generator=g, dtype=dt).to(device).requires_grad_(True)
    row = {"lmax": L, "edges": E}
    variants = {  # name -> (kind, merge_paths)
        "e3nn": ("e3nn", False),
        "so2_uvu": ("so2", False),
        "e3nn_merged": ("e3nn", True),
        "so2_merged": ("so2", True),
        "gaunt": ("gaunt", True),
    }
    tps, weights = {}, {}
    for name, (kind, merge) in variants.items():
        tp = build_conv_tensor_product(kind, ir_in, ir_sh, target, merge_paths=merge).to(
            device=device, dtype=dt
        )
        tps[name] = tp
        key = (tp.weight_numel, merge)  # e3nn and so2 share the weight layout: same weights for both
        if key not in weights:
            weights[key] = torch.randn(E, tp.weight_numel, generator=g, dtype=dt).to(device)
    conv = SO2Convolution(L, C, L, C, m_max=L, radial=True).to(device=device, dtype=dt)
    xs = irreps_blocks_to_stack(x.detach(), ir_in).requires_grad_(True)
    rad = torch.randn(E, conv.radial_dim, generator=g, dtype=dt).to(device)
    fns = {
        name: (lambda tp=tp, w=weights[(tp.weight_numel, variants[name][1])]: tp(x, sh, w))
        for name, tp in tps.items()
    }
    fns["escn"] = lambda: conv(xs, vec, rad)
    # the function eSCN's layer reproduces (tests/nn/test_so2.py): e3nn's channel-mixing 'uvw' product x (x) Y
    fctp = o3.FullyConnectedTensorProduct(ir_in, ir_sh, target).to(device=device, dtype=dt)
    fns["e3nn_uvw"] = lambda: fctp(x, sh)

    def timed(fn):
        def run():
            with torch.no_grad():
                out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        return run

    with torch.no_grad():
        ref, got = fns["e3nn"](), fns["so2_uvu"]()
        row["so2_max_err"] = float((got - ref).abs().max() / ref.abs().max())
        ref, got = fns["e3nn_merged"](), fns["so2_merged"]()
        row["so2_merged_max_err"] = float((got - ref).abs().max() / ref.abs().max())
    # interleave the variants so that load changes on a shared machine hit all of them alike
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        timed(fn)()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], min_time(timed(fn), repeats=1, warmup=0))
    for name in fns:
        row[f"{name}_us"] = best[name] / E * 1e6
        row[f"{name}_B"] = saved_bytes(lambda fn=fns[name]: fn()) / E
    row["e3nn/so2_uvu"] = row["e3nn_us"] / row["so2_uvu_us"]
    row["merged e3nn/so2"] = row["e3nn_merged_us"] / row["so2_merged_us"]
    row["merged e3nn/gaunt"] = row["e3nn_merged_us"] / row["gaunt_us"]
    row["merged e3nn/escn"] = row["e3nn_merged_us"] / row["escn_us"]
    row["e3nn_uvw/escn"] = row["e3nn_uvw_us"] / row["escn_us"]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=256)
    ap.add_argument("--lmax", type=int, default=6)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 by default: OpenMP threads on an oversubscribed shared machine make timings erratic",
    )
    ap.add_argument("--mace", action="store_true", help="time MACE energy + forces per tensor_product")
    ap.add_argument("--mace-lmax", type=int, nargs="+", default=[3, 4], help="max_ell values (with --mace)")
    ap.add_argument("--frames", type=int, default=32, help="ethanol frames in the batch (with --mace)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mace:
        bench_mace(args)
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for L in range(1, args.lmax + 1):
            row = bench_one(L, args.channels, args.edges, args.repeats, device)
            row["device"] = device
            rows.append(row)
            print(
                f"[{device}] L={L}: "
                + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)),
                flush=True,
            )
    cols = [
        "device",
        "lmax",
        "e3nn_us",
        "so2_uvu_us",
        "e3nn/so2_uvu",
        "e3nn_merged_us",
        "so2_merged_us",
        "gaunt_us",
        "merged e3nn/so2",
        "merged e3nn/gaunt",
        "e3nn_uvw_us",
        "escn_us",
        "e3nn_uvw/escn",
    ]
    mem_cols = [
        "device",
        "lmax",
        "e3nn_B",
        "so2_uvu_B",
        "e3nn_merged_B",
        "so2_merged_B",
        "gaunt_B",
        "e3nn_uvw_B",
        "escn_B",
        "so2_max_err",
        "so2_merged_max_err",
    ]
    print("time per edge, microseconds (forward, float32)")
    print_table(rows, cols)
    print("bytes per edge saved for backward; relative max error of the SO(2) paths against e3nn")
    print_table(rows, mem_cols)
    # empirical scaling exponent between L = 3 and L = lmax (time ~ L^k)
    import math

    cpu = {r["lmax"]: r for r in rows if r["device"] == "cpu"}
    scaling = {}
    if 3 in cpu and args.lmax > 3:
        for k in (
            "e3nn_us",
            "so2_uvu_us",
            "e3nn_merged_us",
            "so2_merged_us",
            "gaunt_us",
            "e3nn_uvw_us",
            "escn_us",
        ):
            scaling[k] = math.log(cpu[args.lmax][k] / cpu[3][k]) / math.log(args.lmax / 3)
        print(
            f"empirical exponent k in time ~ L^k (L = 3 .. {args.lmax}): "
            + ", ".join(f"{k}: {v:.2f}" for k, v in scaling.items())
        )
    save(
        "tensor_products",
        {
            "args": vars(args),
            "rows": rows,
            "scaling_exponent_L3_to_Lmax": scaling,
            "notes": "microseconds per edge (forward, float32), bytes per edge saved for "
            "backward; so2_max_err = max |so2 - e3nn| / max |e3nn|",
        },
    )


def bench_mace(args) -> None:
    """MACE energy + forces with each tensor_product (see the module docstring); table, JSON and Markdown."""
    import os
    import statistics as st

    import numpy as np
    from ase import Atoms
    from torch_geometric.data import Batch

    from molequi.data.records import atoms_to_data
    from molequi.data.statistics import Statistics
    from molequi.graph.neighbors import RadiusGraph
    from molequi.io import atomic_write_text
    from molequi.models.mace import MACE, TENSOR_PRODUCTS

    d = np.load(ETHANOL_NPZ)
    frames = [Atoms(numbers=d["nuclear_charges"], positions=d["coords"][i]) for i in range(args.frames)]
    graph = RadiusGraph(MACE_HYPER["r_max"])
    batch = Batch.from_data_list([graph(atoms_to_data(a, dtype=torch.float32)) for a in frames])
    n_atoms, n_edges = batch.num_nodes, batch.edge_index.shape[1]
    stats = Statistics(elements=[1, 6, 8], avg_num_neighbors=n_edges / n_atoms)
    rows = []
    for lmax in args.mace_lmax:
        models, t_build = {}, {}
        for kind in TENSOR_PRODUCTS:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            cfg = MACE.Config(**{**MACE_HYPER, "max_ell": lmax, "tensor_product": kind})
            models[kind] = MACE.from_config(cfg, stats).eval()
            t_build[kind] = time.perf_counter() - t0
        energies = {k: m(batch, compute_forces=True)["energy"].detach() for k, m in models.items()}  # warm-up
        wall = {k: [] for k in models}
        cpu = {k: [] for k in models}
        for _ in range(args.repeats):  # interleaved: load changes on the shared machine hit every kind alike
            for kind, model in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                model(batch, compute_forces=True)
                wall[kind].append(time.perf_counter() - t0)
                cpu[kind].append(time.process_time() - c0)
        base_wall, base_cpu = st.median(wall["native"]), st.median(cpu["native"])
        for kind, model in models.items():
            row = {
                "max_ell": lmax,
                "tensor_product": kind,
                "parameters": sum(p.numel() for p in model.parameters()),
                "wall_ms": 1e3 * st.median(wall[kind]),
                "cpu_ms": 1e3 * st.median(cpu[kind]),
            }
            row["wall / native"] = row["wall_ms"] / (1e3 * base_wall)
            row["cpu / native"] = row["cpu_ms"] / (1e3 * base_cpu)
            row["build_s"] = t_build[kind]
            row["wall_samples_ms"] = [1e3 * t for t in wall[kind]]
            row["cpu_samples_ms"] = [1e3 * t for t in cpu[kind]]
            if kind in ("e3nn", "so2"):  # same parameters from the same seed: the same function as native
                ref = energies["native"]
                row["max_rel_energy_diff_vs_native"] = float(((energies[kind] - ref).abs() / ref.abs()).max())
            rows.append(row)
            print(
                f"max_ell={lmax} {kind}: {row['wall_ms']:.1f} ms wall, {row['cpu_ms']:.1f} ms CPU", flush=True
            )
    cols = ["max_ell", "tensor_product", "parameters", "wall_ms", "cpu_ms", "wall / native", "cpu / native"]
    print(f"MACE energy + forces, {args.frames} ethanol frames ({n_atoms} atoms, {n_edges} edges), float32")
    print_table(rows, cols)
    meta = {
        "structure": f"{args.frames} rMD17 ethanol frames as one batch ({n_atoms} atoms, {n_edges} edges)",
        "hyperparameters": {k: v for k, v in MACE_HYPER.items() if k != "max_ell"},
        "dtype": "float32",
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    path = save("tensor_products_mace", {"args": vars(args), "meta": meta, "rows": rows})
    lines = [
        "# MACE energy + forces per tensor_product",
        "",
        f"`python scripts/bench/tensor_products.py --mace --mace-lmax {' '.join(map(str, args.mace_lmax))} "
        f"--frames {args.frames} --repeats {args.repeats} --threads {args.threads}`; {meta['date']}; "
        f"{meta['structure']}; hidden 64x0e+64x1o, correlation 3, 2 layers; float32, "
        f"{args.threads} thread(s); load average {meta['load_average'][0]:.1f} on {os.cpu_count()} cores "
        f"(shared machine: CPU time is the steadier number). Medians of {args.repeats} interleaved rounds.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + " --- |" * len(cols),
    ]
    for r in rows:
        cells = [
            f"{r[c]:.2f}x" if "/" in c else f"{r[c]:.0f}" if c.endswith("_ms") else str(r[c]) for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "e3nn and so2 are built from the same seed as native and have its parameters: their energies differ "
        "from native's by at most "
        f"{max(r.get('max_rel_energy_diff_vs_native', 0.0) for r in rows):.1e} (relative, float32).",
    ]
    atomic_write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"saved {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
