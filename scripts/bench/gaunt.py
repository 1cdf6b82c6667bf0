#!/usr/bin/env python
"""Gaunt tensor product: S2 grid vs 2D Fourier / FFT (Luo et al. 2024) vs e3nn, L = 2..8, one thread.

The function (the same for all three, outputs compared in float64)::

    out^{lo}_u = sum_{l1, l2} (1/4pi) int Y^{lo} Y^{l1} Y^{l2} x^{l1}_u y^{l2}_u     (channel-wise, lo <= L)

over N rows (edges) and C channels, x and y of degrees 0..L with natural parity.

    grid  ``molequi.nn.s2.GauntProduct(L, L, L)``: dense projections on an exact S2 grid, O(L^4) / channel
    fft   ``molequi.nn.gaunt_fft.GauntFFT(L, L, L)``: 2D Fourier basis + FFT convolution, O(L^3) / channel
    dft   ``GauntFFT(L, L, L, transform="dft")``: the same Fourier route, DFTs as matrix products, O(L^3)
    e3nn  ``o3.TensorProduct`` 'uuu' (channel-wise) with every parity-allowed path l1 x l2 -> lo <= L, each
          weighted by (Gaunt / Wigner-3j) as shared external weights: the same function as a sum of
          Clebsch-Gordan paths, O(L^6) / channel. e3nn runs on its own (mul, ir) layout; the layout change is
          not timed.

Timings: forward (no grad) and forward+backward (sum of the output, gradients of x and y), float32 and
float64, ``--repeats`` interleaved rounds after one warm-up of each, medians of process CPU time and wall
time per call. ``torch.set_num_threads(1)``. Writes ``bench_results/gaunt.json``.

    OMP_NUM_THREADS=1 python scripts/bench/gaunt.py [--lmax 2 3 4 5 6 7 8] [--rows 256] [--channels 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from e3nn import o3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, print_table, provenance, save  # noqa: E402

from molequi.nn.gaunt_fft import GauntFFT  # noqa: E402
from molequi.nn.s2 import GauntProduct, gaunt_path_weight  # noqa: E402

VARIANTS = ("grid", "fft", "dft", "e3nn")
COLUMNS = [
    "dtype",
    "lmax",
    *(f"{v}_{m}_cpu_ms" for m in ("fwd", "fwdbwd") for v in VARIANTS),
    "fft_rel_err",
    "dft_rel_err",
    "e3nn_rel_err",
]


def irreps(L: int, C: int) -> o3.Irreps:
    return o3.Irreps([(C, (l, (-1) ** l)) for l in range(L + 1)])


def e3nn_gaunt(L: int, C: int, dtype: torch.dtype):
    """e3nn 'uuu' TensorProduct with all parity-allowed paths and the Gaunt path weights (external)."""
    ir = irreps(L, C)
    instr, w = [], []
    for l1 in range(L + 1):
        for l2 in range(L + 1):
            for lo in range(abs(l1 - l2), min(l1 + l2, L) + 1):
                c = gaunt_path_weight(l1, l2, lo)
                if c:
                    instr.append((l1, l2, lo, "uuu", True, 1.0))
                    w.append(torch.full((C,), c, dtype=torch.float64))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its Wigner 3j in the default dtype
    try:
        tp = o3.TensorProduct(
            ir,
            ir,
            ir,
            instr,
            irrep_normalization="none",
            path_normalization="none",
            internal_weights=False,
            shared_weights=True,
        ).to(dtype)
    finally:
        torch.set_default_dtype(default)
    return tp, torch.cat(w).to(dtype), len(instr)


def to_stack(t: torch.Tensor, ir: o3.Irreps) -> torch.Tensor:
    """e3nn (N, mul_ir) -> (N, K, C)."""
    N = t.shape[0]
    return torch.cat(
        [t[:, s].reshape(N, mul, ir_.dim).transpose(1, 2) for s, (mul, ir_) in zip(ir.slices(), ir)], 1
    )


def from_stack(t: torch.Tensor, ir: o3.Irreps) -> torch.Tensor:
    N = t.shape[0]
    return torch.cat([t[:, l * l : (l + 1) ** 2].transpose(1, 2).reshape(N, -1) for _, (l, _) in ir], 1)


def bench(L: int, N: int, C: int, dtype: torch.dtype, repeats: int, with_e3nn: bool = True) -> dict:
    g = torch.Generator().manual_seed(L)
    K = (L + 1) ** 2
    x64 = torch.randn(N, K, C, generator=g, dtype=torch.float64)
    y64 = torch.randn(N, K, C, generator=g, dtype=torch.float64)
    ir = irreps(L, C)
    t0 = time.process_time()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the grid matrices take the default dtype
    try:
        grid = GauntProduct(L, L, L).to(dtype)
    finally:
        torch.set_default_dtype(default)
    build = {"grid": time.process_time() - t0}
    t0 = time.process_time()
    fft = GauntFFT(L, L, L)
    build["fft"] = time.process_time() - t0
    dft = GauntFFT(L, L, L, transform="dft")
    t0 = time.process_time()
    tp, w, n_paths = e3nn_gaunt(L, C, dtype) if with_e3nn else (None, None, None)
    build["e3nn"] = time.process_time() - t0
    x, y = x64.to(dtype).requires_grad_(True), y64.to(dtype).requires_grad_(True)
    xe = from_stack(x64, ir).to(dtype).requires_grad_(True)
    ye = from_stack(y64, ir).to(dtype).requires_grad_(True)
    fns = {
        "grid": lambda: grid(x, y),
        "fft": lambda: fft(x, y),
        "dft": lambda: dft(x, y),
        "e3nn": lambda: tp(xe, ye, w),
    }
    if not with_e3nn:
        del fns["e3nn"]
    # agreement (float64 copies): fft and e3nn against the grid
    row = {
        "lmax": L,
        "rows": N,
        "channels": C,
        "dtype": str(dtype).replace("torch.", ""),
        "e3nn_paths": n_paths,
        "build_cpu_s": build,
    }
    with torch.no_grad():
        ref = fns["grid"]().double()
        scale = ref.abs().max().item()
        row["fft_rel_err"] = (fns["fft"]().double() - ref).abs().max().item() / scale
        row["dft_rel_err"] = (fns["dft"]().double() - ref).abs().max().item() / scale
        if with_e3nn:
            row["e3nn_rel_err"] = (to_stack(fns["e3nn"]().double(), ir) - ref).abs().max().item() / scale

    def call(fn, backward):
        def run():
            if backward:
                fn().sum().backward()
                for t in (x, y, xe, ye):
                    t.grad = None
            else:
                with torch.no_grad():
                    fn()

        return run

    calls = {f"{n}_{m}": call(fns[n], m == "fwdbwd") for n in fns for m in ("fwd", "fwdbwd")}
    times = interleaved(calls, repeats, warmup=1)
    for name, t in times.items():
        row[f"{name}_cpu_ms"] = 1e3 * t["median_cpu_s"]
        row[f"{name}_wall_ms"] = 1e3 * t["median_wall_s"]
        row[f"{name}_cpu_iqr_ms"] = [1e3 * v for v in t["iqr_cpu_s"]]
    for mode in ("fwd", "fwdbwd"):  # speed of fft / dft over grid / e3nn (above 1: fft / dft faster)
        for mine in ("fft", "dft"):
            for other in ("grid", "e3nn") if with_e3nn else ("grid",):
                row[f"{mine}_over_{other}_{mode}_cpu"] = (
                    row[f"{other}_{mode}_cpu_ms"] / row[f"{mine}_{mode}_cpu_ms"]
                )
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lmax", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--rows", type=int, default=256, help="edges (batch rows)")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--out", default="gaunt")
    ap.add_argument("--no-e3nn", action="store_true", help="grid, fft and dft only (e3nn's L <= 12 is slow)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for dt in args.dtypes:
        for L in args.lmax:
            r = bench(L, args.rows, args.channels, getattr(torch, dt), args.repeats, not args.no_e3nn)
            rows.append(r)
            print_table([r], COLUMNS)
            sys.stdout.flush()
    print()
    print_table(rows, COLUMNS + ["dft_over_grid_fwd_cpu", "dft_over_grid_fwdbwd_cpu"])
    import e3nn

    save(
        args.out,
        {"args": vars(args), "rows": rows},
        provenance(None, None, None)
        if args.no_e3nn
        else provenance("e3nn o3.TensorProduct (uuu, all Gaunt paths)", e3nn.__version__, True),
    )


if __name__ == "__main__":
    main()
