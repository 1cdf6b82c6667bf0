"""Shared bits of the benchmark scripts: timing medians, result tables and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench_results"
# 1000 real rMD17 ethanol frames shipped with molequi (CC0, see molequi/resources/rmd17/ORIGIN.md). A path
# in the repository, not molequi.resources: this module is also imported by the peer-side workers, which run
# in the peers' venvs where molequi is not installed.
ETHANOL_NPZ = str(ROOT / "molequi" / "resources" / "rmd17" / "rmd17_ethanol_test_01.npz")
# the MACE hyperparameters every speed comparison with mace-torch uses (identical on both sides)
MACE_HYPER = dict(
    r_max=5.0,
    num_bessel=8,
    num_polynomial_cutoff=5,
    max_ell=3,
    hidden_irreps="64x0e+64x1o",
    correlation=3,
    num_interactions=2,
    MLP_irreps="16x0e",
    radial_MLP=[64, 64, 64],
)


def build_mace_torch(elements: list[int], avg_num_neighbors: float, dtype: torch.dtype,
                     hyper: dict | None = None):
    """mace-torch's ScaleShiftMACE at ``hyper`` (default ``MACE_HYPER``; random weights, eval mode), for the
    speed comparisons.

    Runs in the mace-torch virtual environment; the caller imports ``mace`` first (it makes e3nn 0.4.4
    importable under torch >= 2.6).
    """
    import numpy as np
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    h = MACE_HYPER if hyper is None else hyper
    model = modules.ScaleShiftMACE(
        r_max=h["r_max"], num_bessel=h["num_bessel"], num_polynomial_cutoff=h["num_polynomial_cutoff"],
        max_ell=h["max_ell"], interaction_cls=block, interaction_cls_first=block,
        num_interactions=h["num_interactions"], num_elements=len(elements),
        hidden_irreps=o3.Irreps(h["hidden_irreps"]), MLP_irreps=o3.Irreps(h["MLP_irreps"]),
        atomic_energies=np.zeros(len(elements)), avg_num_neighbors=avg_num_neighbors, atomic_numbers=elements,
        correlation=h["correlation"], gate=torch.nn.functional.silu, radial_MLP=h["radial_MLP"],
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )
    return model.to(dtype).eval()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss``, VmHWM; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def address_space_limit(gb: float):
    """A ``preexec_fn`` for ``subprocess``: the child's address space capped at ``gb`` GiB, so a worker that
    does not fit fails with MemoryError / an allocation error (recorded by the driver) instead of taking the
    machine."""
    import resource

    limit = int(gb * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def wall_cpu_times(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """``warmup`` calls, then ``repeats`` timed calls of ``fn()``: median wall-clock and median process CPU
    seconds (the CPU is shared, so both are kept) and the lists of both."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return dict(median_s=statistics.median(wall), median_cpu_s=statistics.median(cpu), times_s=wall,
                cpu_s=cpu)


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """``warmup`` untimed calls of each of ``fns`` (name -> callable), then ``repeats`` rounds that call each
    once, the order rotating every round (no code always runs first after the others); per name the wall and
    process-CPU seconds of every timed call, their medians and quartiles."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out = {n: {"wall_s": [], "cpu_s": []} for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            w, c = _timed(fns[n])
            out[n]["wall_s"].append(w)
            out[n]["cpu_s"].append(c)
    for v in out.values():
        for k in ("wall", "cpu"):
            v[f"median_{k}_s"] = float(np.median(v[f"{k}_s"]))
            v[f"iqr_{k}_s"] = [float(np.percentile(v[f"{k}_s"], q)) for q in (25, 75)]
    return out


def machine() -> dict:
    """Python, torch, threads and CPU of this process, with the 1/5/15-minute load averages of the machine
    (the CPU is shared: the load says how much the other jobs disturbed the timings) and the UTC date."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


PROVENANCE_KEYS = ("peer", "peer_version", "peer_measured_in_this_run")


def provenance(
    peer: str | None, peer_version: str | None, peer_measured_in_this_run: bool | None, **extra
) -> dict:
    """The ``provenance`` block that scripts/bench/report.py reads from every result file.

    ``peer``: the code compared against (None: no peer); ``peer_version``: its version or commit;
    ``peer_measured_in_this_run``: True when the peer ran in this invocation, False when its figures were
    typed in from another run or a paper (None without a peer). Threads and load average are added here.
    """
    if peer is not None and not isinstance(peer_measured_in_this_run, bool):
        raise ValueError(f"provenance of {peer!r}: peer_measured_in_this_run must be True or False")
    return {
        "peer": peer,
        "peer_version": peer_version,
        "peer_measured_in_this_run": peer_measured_in_this_run,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        **extra,
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def save(name: str, payload: dict, provenance: dict | None = None) -> Path:
    """``bench_results/<name>.json`` (atomic): ``machine()``, the payload and, when given, the ``provenance``
    block (see ``provenance()``; the README table needs it)."""
    from molequi.io import atomic_open

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), **payload}
    if provenance is not None:
        missing = [k for k in PROVENANCE_KEYS if k not in provenance]
        if missing:
            raise ValueError(f"{path}: provenance lacks {', '.join(missing)}")
        payload["provenance"] = provenance
    with atomic_open(path) as fh:
        json.dump(payload, fh, indent=2)
    print(f"saved {path}")
    return path
