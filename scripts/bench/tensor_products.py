"""Edge tensor products, like for like: each molequi product timed against the peer code computing the same
function, forward and forward+backward, L = 1..6, float32 and float64, in one invocation.

Pairs (the outputs of each pair are compared first; the relative max difference is in the table):
  uvu           e3nn ``o3.TensorProduct`` 'uvu' with per-edge weights, one output block per path (MACE's
                product; ``kind="e3nn"``) vs molequi's SO(2) evaluation of the same function in edge frames
                (``kind="so2"``, same weights); x: C x (0e + 1o + ... + L), Y up to L ('component'),
                outputs up to L with natural parity
  uvu_merged    the same with the paths into one irrep summed (one output block per l: what molequi's
                MACE convolution uses)
  escn_linear   fairchem's eSCN SO(2) linear maps (``equiformer_v2.so2_ops.SO2_Convolution``, m_max = L,
                radial modulation of the inputs, bias on the m = 0 outputs) vs ``molequi.nn.so2.SO2Linear``
                with the same weights mapped (W1_m / W2_m = fairchem's real / imaginary halves of
                ``so2_m_conv[m-1].fc``, W0 = ``fc_m0``; fairchem's m = 0 bias is zero for l > 0), both on
                the same edge-frame coefficients and the same per-edge modulation tensor
  escn_conv     the whole convolution: edge frame + Wigner matrices from the edge vectors, rotate, SO(2)
                linear, rotate back (fairchem: ``init_edge_rot_mat`` + ``SO3_Rotation`` +
                ``SO3_Embedding._rotate`` / ``_rotate_inv``; molequi: ``SO2Convolution``)
The fairchem side runs unmodified in its own venv (``bash scripts/bench/setup_peers.sh fairchem``; worker
``scripts/bench/_fairchem_so2.py``, fairchem-core 1.10.0 installed without its dependencies: see
setup_peers.sh), as a persistent process of this invocation. Backward: the summed output's backward pass to
the inputs and the weights (fairchem's Wigner matrices are detached by fairchem, so neither side
differentiates the rotation by the edge vector; molequi's edge vectors do not require grad either).

Timing: all variants (and the fairchem process) alive together; per round every variant makes one forward
and one forward+backward call, in an order reversed every round; medians (and quartiles) over ``--repeats``
rounds of wall-clock and process CPU time, in microseconds per edge. Ratios are molequi's speed over the
peer's (above 1: molequi faster).

    PY=$(bash scripts/bench/setup_peers.sh fairchem | tail -1)
    python scripts/bench/tensor_products.py --fairchem-python $PY [--edges 256] [--lmax 6] [--repeats 21]

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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from e3nn import o3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, MACE_HYPER, print_table, provenance, save  # noqa: E402
from _fairchem_so2 import timed_call  # noqa: E402  (torch only: importable here)
from mace_imported import Worker  # noqa: E402  (its JSON-lines client, reused for the fairchem process)

from molequi.nn.so2 import SO2Convolution  # noqa: E402
from molequi.nn.tensor_products import build_conv_tensor_product  # noqa: E402

HERE = Path(__file__).resolve().parent
PAIRS = {  # pair -> (peer variant, molequi variant)
    "uvu": ("e3nn_uvu", "so2_uvu"),
    "uvu_merged": ("e3nn_uvu_merged", "so2_uvu_merged"),
    "escn_linear": ("fairchem_so2_linear", "molequi_so2_linear"),
    "escn_conv": ("fairchem_so2_conv", "molequi_so2_conv"),
}


def natural(L: int, C: int) -> o3.Irreps:
    return o3.Irreps("+".join(f"{C}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(L + 1)))


class FairchemPeer(Worker):
    """The fairchem worker process (``_fairchem_so2.py`` in fairchem's venv) and the driver's end of it."""

    def __init__(self, python: str, threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.side = "fairchem"
        self.proc = subprocess.Popen([python, str(HERE / "_fairchem_so2.py"), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self.receive()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).abs().max() / ref.double().abs().max())


def local_call(fn, grads: list):
    """One call of ``fn`` as the timer sees it: forward only, or forward + backward of the summed output."""
    return lambda backward: timed_call(fn, backward, grads)


def bench_one(L: int, C: int, E: int, repeats: int, dtype: torch.dtype, peer: FairchemPeer | None,
              tmp: str) -> dict:
    """One (L, dtype) row: agreement of each pair, then interleaved timings of all variants."""
    ir_in, ir_sh = natural(L, C), o3.Irreps.spherical_harmonics(L)
    g = torch.Generator().manual_seed(L)
    vec = torch.randn(E, 3, generator=g, dtype=torch.float64).to(dtype)
    sh = o3.spherical_harmonics(ir_sh, vec, True, normalization="component")
    x = torch.randn(E, ir_in.dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    row = {"lmax": L, "edges": E, "channels": C, "dtype": str(dtype).replace("torch.", "")}
    calls, outputs = {}, {}
    for merge, suffix in ((False, ""), (True, "_merged")):
        tps = {kind: build_conv_tensor_product(kind, ir_in, ir_sh, ir_in, merge_paths=merge).to(dtype)
               for kind in ("e3nn", "so2")}
        w = torch.randn(E, tps["e3nn"].weight_numel, generator=g, dtype=torch.float64).to(dtype)
        w.requires_grad_(True)  # in MACE the weights come from the radial MLP: backward reaches them
        for kind, tp in tps.items():
            name = f"{kind}_uvu{suffix}"
            def fn(tp=tp, w=w):
                return tp(x, sh, w)

            calls[name] = local_call(fn, [x, w, *tp.parameters()])
            with torch.no_grad():
                outputs[name] = fn()
    # eSCN: molequi's SO2Convolution and its edge-frame linear map, and the same weights for fairchem
    torch.manual_seed(L)
    conv = SO2Convolution(L, C, L, C, m_max=L, radial=True).to(dtype)
    with torch.no_grad():
        conv.linear.bias.normal_()
    xs = torch.randn(E, (L + 1) ** 2, C, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    xe = torch.randn(E, (L + 1) ** 2, C, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    rad = torch.randn(E, conv.radial_dim, generator=g, dtype=torch.float64).to(dtype)
    params = list(conv.parameters())
    fns = {"molequi_so2_linear": lambda: conv.linear(xe, rad), "molequi_so2_conv": lambda: conv(xs, vec, rad)}
    for name, fn in fns.items():
        calls[name] = local_call(fn, [xs, xe, *params])
        with torch.no_grad():
            outputs[name] = fn()
    if peer is not None:
        lin = conv.linear
        state = {"lmax": torch.tensor(L), "channels": torch.tensor(C), "x": xs.detach(),
                 "x_edge": xe.detach(),
                 "vec": vec, "rad": rad, "fc_m0.weight": lin.w1[0].detach().T.contiguous(),
                 "fc_m0.bias": torch.cat([lin.bias.detach(), torch.zeros(L * C, dtype=dtype)])}
        for m in range(1, L + 1):
            w1, w2 = lin.w1[m].detach().T, lin.w2[m - 1].detach().T
            state[f"fc_m{m}.weight"] = torch.cat([w1, w2]).contiguous()  # real half, then imaginary half
        src, out = os.path.join(tmp, "in.pt"), os.path.join(tmp, "out.pt")
        torch.save(state, src)
        peer.ask(cmd="setup", file=src, out=out)
        got = torch.load(out, weights_only=True)
        outputs["fairchem_so2_linear"], outputs["fairchem_so2_conv"] = got["so2_linear"], got["so2_conv"]
        for name in ("fairchem_so2_linear", "fairchem_so2_conv"):
            short = name.removeprefix("fairchem_")
            calls[name] = lambda backward, short=short: peer.ask(cmd="time", name=short, backward=backward)
    for pair, (ref, mine) in PAIRS.items():
        if ref in outputs:
            row[f"{pair}_rel_err"] = rel_err(outputs[mine], outputs[ref])
    # interleaved rounds after one warm-up call of each kind
    names = list(calls)
    times = {(n, b): {"wall": [], "cpu": []} for n in names for b in (False, True)}
    for n in names:
        calls[n](False), calls[n](True)
    for k in range(repeats):
        for n in names if k % 2 == 0 else names[::-1]:
            for b in (False, True):
                t = calls[n](b)
                times[(n, b)]["wall"].append(t["wall_s"])
                times[(n, b)]["cpu"].append(t["cpu_s"])
    for (n, b), t in times.items():
        mode = "fwdbwd" if b else "fwd"
        for clock in ("wall", "cpu"):
            q = statistics.quantiles(t[clock], n=4) if len(t[clock]) > 1 else [t[clock][0]] * 3
            row[f"{n}_{mode}_{clock}_us"] = q[1] / E * 1e6
            row[f"{n}_{mode}_{clock}_p25_p75_us"] = [q[0] / E * 1e6, q[2] / E * 1e6]
    for pair, (ref, mine) in PAIRS.items():
        for mode in ("fwd", "fwdbwd"):
            for clock in ("wall", "cpu"):
                key = f"{ref}_{mode}_{clock}_us"
                if key in row:
                    row[f"{pair}_{mode}_{clock}_speedup"] = row[key] / row[f"{mine}_{mode}_{clock}_us"]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=256)
    ap.add_argument("--lmax", type=int, default=6)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 by default: OpenMP threads on an oversubscribed shared machine make timings erratic",
    )
    ap.add_argument("--fairchem-python", default=None,
                    help="python of the fairchem venv (default: bash scripts/bench/setup_peers.sh fairchem)")
    ap.add_argument("--no-fairchem", action="store_true", help="leave out the fairchem pairs")
    ap.add_argument("--mace", action="store_true", help="time MACE energy + forces per tensor_product")
    ap.add_argument("--mace-lmax", type=int, nargs="+", default=[3, 4], help="max_ell values (with --mace)")
    ap.add_argument("--frames", type=int, default=32, help="ethanol frames in the batch (with --mace)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mace:
        bench_mace(args)
        return
    peer = None
    if not args.no_fairchem:
        if args.fairchem_python is None:
            out = subprocess.run(["bash", str(HERE / "setup_peers.sh"), "fairchem"], capture_output=True,
                                 text=True, check=True)
            args.fairchem_python = out.stdout.strip().splitlines()[-1]
        peer = FairchemPeer(args.fairchem_python, args.threads)
    rows = []
    t_start = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for dtype_name in args.dtypes.split(","):
                for L in range(1, args.lmax + 1):
                    # modules built in the dtype they run in (e3nn's Clebsch-Gordan in float64 for float64)
                    torch.set_default_dtype(getattr(torch, dtype_name))
                    try:
                        row = bench_one(L, args.channels, args.edges, args.repeats,
                                        getattr(torch, dtype_name), peer, tmp)
                    finally:
                        torch.set_default_dtype(torch.float32)
                    rows.append(row)
                    keep = [f"{k}={v:.3g}" for k, v in row.items() if k.endswith(("speedup", "rel_err"))]
                    print(f"[{dtype_name}] L={L}: " + ", ".join(keep), flush=True)
    finally:
        if peer is not None:
            peer.close()
    for pair in PAIRS:
        cols = ["dtype", "lmax", f"{pair}_rel_err"] + [
            f"{pair}_{m}_{c}_speedup" for m in ("fwd", "fwdbwd") for c in ("cpu", "wall")]
        if any(cols[2] in r for r in rows):
            print(f"{pair}: {PAIRS[pair][1]} vs {PAIRS[pair][0]} (speed ratio, above 1: molequi faster)")
            print_table(rows, cols)
    import e3nn

    versions = {"e3nn": e3nn.__version__, "torch": torch.__version__}
    if peer is not None:
        versions.update({f"fairchem side {k}": v for k, v in peer.info.items() if k != "ready"})
    prov = provenance(
        "e3nn" + (" and fairchem-core" if peer is not None else ""),
        f"e3nn {e3nn.__version__}" + (f", fairchem-core {peer.info['fairchem_core']}" if peer else ""),
        True,
        versions=versions,
        load_average_at_end=list(os.getloadavg()),
        run_minutes=(time.time() - t_start) / 60,
    )
    save(
        "tensor_products",
        {
            "args": vars(args),
            "pairs": {k: {"peer": a, "molequi": b} for k, (a, b) in PAIRS.items()},
            "rows": rows,
            "notes": "microseconds per edge, medians over interleaved rounds (quartiles in *_p25_p75_us); "
            "*_speedup = peer time / molequi time (above 1: molequi faster); *_rel_err = max |molequi - "
            "peer| / max |peer| on the same inputs and weights",
        },
        provenance=prov,
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
