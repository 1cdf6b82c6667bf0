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

``--many-body``: MACE's many-body product instead (``MACE.Config.product_basis``), per atom and channel from
the atomic basis A (0e + 1o + ... + L, L = max_ell) to B (``--out-irreps``, MACE's hidden 0e + 1o), at
``--correlation`` (3): ``molequi.nn.symmetric_contraction.SymmetricContraction`` (every coupling) vs
``molequi.nn.gaunt_manybody.GauntManyBody`` (repeated Gaunt self-products, natural-parity couplings only;
backends grid / fft / dft). Not the same function (the Gaunt basis spans fewer couplings, with fewer
parameters: both counts are in the JSON), so no agreement figure; grid / fft / dft agree with each other
(``gaunt_*_rel_err``, float64). Forward (no grad) and forward+backward (gradient of A), medians of process CPU
time, 1 thread. Writes ``bench_results/gaunt_manybody.json`` and ``.md``.

    OMP_NUM_THREADS=1 python scripts/bench/gaunt.py --many-body [--lmax 1 2 3] [--rows 256] [--channels 16]
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

from molequi.nn.equivariant import ChannelIrreps  # noqa: E402
from molequi.nn.gaunt_fft import GauntFFT  # noqa: E402
from molequi.nn.gaunt_manybody import GauntManyBody  # noqa: E402
from molequi.nn.s2 import GauntProduct, gaunt_path_weight  # noqa: E402
from molequi.nn.symmetric_contraction import SymmetricContraction  # noqa: E402

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


MANY_BODY = ("symmetric_contraction", "gaunt_grid", "gaunt_fft", "gaunt_dft")
MB_COLUMNS = ["lmax", *(f"{v}_{m}_cpu_ms" for m in ("fwd", "fwdbwd") for v in MANY_BODY), "gaunt_fft_rel_err"]


def bench_many_body(L: int, N: int, C: int, out: str, correlation: int, elements: int, dtype: torch.dtype,
                    repeats: int) -> dict:
    """One row of ``--many-body``: the symmetric contraction vs the Gaunt many-body product at max_ell L."""
    g = torch.Generator().manual_seed(L)
    irreps_in, irreps_out = ChannelIrreps.spherical(C, L), ChannelIrreps.parse(out).with_channels(C)
    a64 = torch.randn(N, irreps_in.dim, C, generator=g, dtype=torch.float64)
    element = torch.randint(0, elements, (N,), generator=g)
    mods, build = {}, {}
    for name in MANY_BODY:
        t0 = time.process_time()
        torch.manual_seed(0)
        if name == "symmetric_contraction":
            mods[name] = SymmetricContraction(irreps_in, irreps_out, correlation, elements).to(dtype)
        else:
            mods[name] = GauntManyBody(irreps_in, irreps_out, correlation, elements,
                                       backend=name.split("_")[1]).to(dtype)
        build[name] = time.process_time() - t0
    row = {"lmax": L, "rows": N, "channels": C, "correlation": correlation, "irreps_out": str(irreps_out),
           "num_elements": elements, "dtype": str(dtype).replace("torch.", ""), "build_cpu_s": build,
           "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in mods.items()}}
    with torch.no_grad():  # the three Gaunt backends compute one function: agreement in float64
        ref = mods["gaunt_grid"].double()(a64, element)
        for name in ("gaunt_fft", "gaunt_dft"):
            got = mods[name].double()(a64, element)
            row[f"{name}_rel_err"] = (got - ref).abs().max().item() / ref.abs().max().item()
        for m in mods.values():
            m.to(dtype)
    a = a64.to(dtype).requires_grad_(True)

    def call(module, backward):
        def run():
            if backward:
                module(a, element).sum().backward()
                a.grad = None
            else:
                with torch.no_grad():
                    module(a, element)

        return run

    calls = {f"{n}_{m}": call(mods[n], m == "fwdbwd") for n in mods for m in ("fwd", "fwdbwd")}
    for name, t in interleaved(calls, repeats, warmup=1).items():
        row[f"{name}_cpu_ms"] = 1e3 * t["median_cpu_s"]
        row[f"{name}_wall_ms"] = 1e3 * t["median_wall_s"]
        row[f"{name}_cpu_iqr_ms"] = [1e3 * v for v in t["iqr_cpu_s"]]
    for mode in ("fwd", "fwdbwd"):  # above 1: the Gaunt product is faster than the symmetric contraction
        for name in MANY_BODY[1:]:
            sc = row[f"symmetric_contraction_{mode}_cpu_ms"]
            row[f"{name}_over_sc_{mode}_cpu"] = sc / row[f"{name}_{mode}_cpu_ms"]
    return row


def many_body_markdown(rows: list[dict], args) -> str:
    lines = [f"# MACE many-body product: symmetric contraction vs Gaunt self-products (correlation "
             f"{args.correlation}, {args.rows} atoms x {args.channels} channels, {args.num_elements} "
             f"elements, out {args.out_irreps}, 1 thread)", "",
             "CPU ms per call (median of interleaved rounds). Not the same function: the Gaunt basis has "
             "natural-parity couplings only.", "",
             "| dtype | L | params SC / Gaunt | " + " | ".join(f"{v} {m}" for m in ("fwd", "fwd+bwd")
                                                          for v in ("SC", "grid", "fft", "dft")) + " |",
             "|" + "---|" * 11]
    for r in rows:
        p = r["parameters"]
        cells = [f"{r[f'{v}_{m}_cpu_ms']:.2f}" for m in ("fwd", "fwdbwd") for v in MANY_BODY]
        lines.append(f"| {r['dtype']} | {r['lmax']} | {p['symmetric_contraction']} / {p['gaunt_grid']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main_many_body(args) -> None:
    from molequi.io import atomic_open

    rows = []
    for dt in args.dtypes:
        for L in args.lmax:
            r = bench_many_body(L, args.rows, args.channels, args.out_irreps, args.correlation,
                                args.num_elements, getattr(torch, dt), args.repeats)
            rows.append(r)
            print_table([r], MB_COLUMNS)
            sys.stdout.flush()
    print()
    print_table(rows, ["dtype", *MB_COLUMNS, *(f"{n}_over_sc_{m}_cpu" for m in ("fwd", "fwdbwd")
                                                for n in MANY_BODY[1:])])
    path = save(args.out, {"args": vars(args), "rows": rows}, provenance(None, None, None))
    with atomic_open(path.with_suffix(".md")) as fh:
        fh.write(many_body_markdown(rows, args))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lmax", type=int, nargs="+", default=None, help="default 2..8 (--many-body: 1 2 3)")
    ap.add_argument("--rows", type=int, default=256, help="edges (batch rows)")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", nargs="+", default=None, help="float32 float64 (--many-body: float32)")
    ap.add_argument("--out", default=None, help="JSON name (default gaunt, --many-body: gaunt_manybody)")
    ap.add_argument("--many-body", action="store_true", help="MACE's many-body product (see the docstring)")
    ap.add_argument("--correlation", type=int, default=3, help="--many-body: correlation order")
    ap.add_argument("--out-irreps", default="1x0e+1x1o", help="--many-body: irreps of B (C from --channels)")
    ap.add_argument("--num-elements", type=int, default=3, help="--many-body: elements (weights per element)")
    ap.add_argument("--no-e3nn", action="store_true", help="grid, fft and dft only (e3nn's L <= 12 is slow)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mb = args.many_body
    args.lmax = args.lmax or ([1, 2, 3] if mb else [2, 3, 4, 5, 6, 7, 8])
    args.dtypes = args.dtypes or (["float32"] if mb else ["float32", "float64"])
    args.out = args.out or ("gaunt_manybody" if mb else "gaunt")
    if mb:
        main_many_body(args)
        return
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
