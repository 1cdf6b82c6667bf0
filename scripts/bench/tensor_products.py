"""Time and memory per edge of edge tensor products for l_max = 1..6: e3nn 'uvu' vs SO(2) vs Gaunt (grid).

Setting (as in docs/targets.md): 16 channels per l, node features 16 x (0e + 1o + ... + L), edge spherical
harmonics up to L ('component'), outputs up to L (natural parity, MACE's target), per-edge weights.

Columns (microseconds per edge, forward, best of repeats (the machine is shared); memory = bytes per edge saved for backward):
  e3nn        ``o3.TensorProduct`` uvu (MACE's convolution)              O(L^6 C)
  so2_uvu     the same function in edge frames (``kind="so2"``)           O(L^4 C) (per-path weights)
  gaunt       S2-grid Gaunt product with radial filter (``kind="gaunt"``) O(L^4 C) (dense grids)
  escn        eSCN's SO(2) convolution layer (per-order weights, radial
              modulation; ``molequi.nn.so2.SO2Convolution``, m_max = L)   O(L^3 C) rotations + O(L^3 C^2) linear
A GPU column is added when CUDA is available.

    python scripts/bench/tensor_products.py [--edges 512] [--lmax 6] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from e3nn import o3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save  # noqa: E402

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
    outs = {}
    weights = {}
    for kind in ("e3nn", "so2", "gaunt"):
        tp = build_conv_tensor_product(kind, ir_in, ir_sh, target).to(device=device, dtype=dt)
        if tp.weight_numel not in weights:  # e3nn and so2 share the weight layout: use the same weights
            weights[tp.weight_numel] = torch.randn(E, tp.weight_numel, generator=g, dtype=dt).to(device)
        w = weights[tp.weight_numel]

        def run(tp=tp, w=w):
            with torch.no_grad():
                out = tp(x, sh, w)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        name = {"so2": "so2_uvu"}.get(kind, kind)
        row[f"{name}_us"] = min_time(run, repeats=repeats, warmup=1) / E * 1e6
        row[f"{name}_B"] = saved_bytes(lambda tp=tp, w=w: tp(x, sh, w.requires_grad_(True))) / E
        outs[kind] = run()
    row["so2_max_err"] = float((outs["so2"] - outs["e3nn"]).abs().max() / outs["e3nn"].abs().max())
    conv = SO2Convolution(L, C, L, C, m_max=L, radial=True).to(device=device, dtype=dt)
    xs = irreps_blocks_to_stack(x.detach(), ir_in).requires_grad_(True)
    rad = torch.randn(E, conv.radial_dim, generator=g, dtype=dt).to(device)

    def run_escn():
        with torch.no_grad():
            conv(xs, vec, rad)
        if device == "cuda":
            torch.cuda.synchronize()

    row["escn_us"] = min_time(run_escn, repeats=repeats, warmup=1) / E * 1e6
    row["escn_B"] = saved_bytes(lambda: conv(xs, vec, rad)) / E
    row["e3nn/so2_uvu"] = row["e3nn_us"] / row["so2_uvu_us"]
    row["e3nn/gaunt"] = row["e3nn_us"] / row["gaunt_us"]
    row["e3nn/escn"] = row["e3nn_us"] / row["escn_us"]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=512)
    ap.add_argument("--lmax", type=int, default=6)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for L in range(1, args.lmax + 1):
            row = bench_one(L, args.channels, args.edges, args.repeats, device)
            row["device"] = device
            rows.append(row)
            print(f"[{device}] L={L}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)
    cols = ["device", "lmax", "e3nn_us", "so2_uvu_us", "gaunt_us", "escn_us", "e3nn/so2_uvu", "e3nn/gaunt",
            "e3nn/escn", "e3nn_B", "so2_uvu_B", "gaunt_B", "escn_B", "so2_max_err"]
    print_table(rows, cols)
    # empirical scaling exponent between L = 3 and L = lmax (time ~ L^k)
    import math

    cpu = {r["lmax"]: r for r in rows if r["device"] == "cpu"}
    scaling = {}
    if 3 in cpu and args.lmax > 3:
        for k in ("e3nn_us", "so2_uvu_us", "gaunt_us", "escn_us"):
            scaling[k] = math.log(cpu[args.lmax][k] / cpu[3][k]) / math.log(args.lmax / 3)
        print("empirical exponent k in time ~ L^k (L = 3 .. %d): " % args.lmax
              + ", ".join(f"{k}: {v:.2f}" for k, v in scaling.items()))
    save("tensor_products", {"args": vars(args), "rows": rows, "scaling_exponent_L3_to_Lmax": scaling,
                             "notes": "microseconds per edge (forward, float32), bytes per edge saved for "
                                      "backward; so2_max_err = max |so2 - e3nn| / max |e3nn|"})


if __name__ == "__main__":
    main()
