"""torch.compile on CPU for the Hamiltonian and generative models (issue 20 item 1): eager vs
``trainer.compile`` (``molequi.train.compile.compile_for_training``: ``fullgraph=True``, Inductor by default)
for a small QHNet and the EDM denoiser, inference (eval, no grad) and one training step (forward, loss,
backward).

    python scripts/bench/compile_speed_more.py [--repeats 7] [--backend inductor] [--models qhnet,edm]
    python scripts/bench/compile_speed_more.py --models edm_loss --name compile_speed_more_edm_loss --no-check-f64

QHNet: STO-3G basis (lmax 2), hidden 32, bottleneck 16, 3 layers (start_layer 1), 8 ethanol-sized molecules
(C2H6O, 9 atoms, rMD17 geometries), float32, the Hamiltonian task's loss on a random label. EDM: the QM9
recipe's denoiser at hidden 64, 4 layers, 16 molecules of 9-19 atoms (QM9-like compositions, random
geometries), float32, ``EDM.training_loss`` (the fixed batch and fixed noise seed every call). ``edm_loss``: the
same model and batch, the training step as the trainer runs it: the batch prepared on the host
(``prepare_batch``), no generator, so ``trainer.compile``'s compiled ``device_loss`` (noise, denoiser, loss)
runs whole, the global seed fixed before each call; Inductor's random ops fall back to aten's
(``torch._inductor.config.fallback_random``), so that compiled and eager draw the same noise and their
gradients compare (run it in its own process: the setting is global). The
compiled model is the same weights; the largest output difference (and, for training, parameter-gradient
difference, relative to the largest eager value) is reported. First compiled calls (tracing + code
generation) are timed separately; then the two variants run interleaved (``_common.interleaved``), medians
of ``--repeats`` calls after one warm-up each, wall and process CPU time. JSON:
bench_results/compile_speed_more.json.

Also (``--check-f64``, on by default): float64 parameter gradients of a tiny QHNet's training loss under
``aot_eager`` vs eager (what tests/models/test_compile_more.py leaves to this script: ~45 CPU s of tracing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, interleaved, print_table, provenance, save  # noqa: E402


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in b)


def qhnet_case(dtype, hidden=32, bottle=16, layers=3, start=1, molecules=8, tiny=False):
    """(model factory, batch, loss(model, batch) -> scalar, output(model, batch) -> tensor)."""
    from torch_geometric.data import Batch, Data

    from molequi.models.hamiltonian import QHNet, QHNetConfig
    from molequi.tasks.hamiltonian import HamiltonianTask

    # tiny: tests/models/test_compile_more.py's QHNet
    sizes = dict(hidden_size=hidden, bottle_hidden_size=bottle, num_layers=layers, start_layer=start)
    if tiny:
        sizes = dict(hidden_size=4, bottle_hidden_size=2, num_layers=2, start_layer=0, num_radial=4,
                     max_radius=2.5)
    cfg = QHNetConfig(basis="sto-3g", lmax=2, **sizes)

    def build():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            torch.manual_seed(0)
            return QHNet(cfg)
        finally:
            torch.set_default_dtype(previous)

    d = np.load(ETHANOL_NPZ)
    batch = Batch.from_data_list(
        [
            Data(
                numbers=torch.as_tensor(d["nuclear_charges"]).long(),
                pos=torch.as_tensor(d["coords"][k], dtype=dtype),
            )
            for k in range(molecules)
        ]
    )
    probe = build()
    nao = probe.layout.pair_structure(batch.numbers, batch.ptr)["nao"]
    batch.fock = 0.1 * torch.randn(
        int((nao * nao).sum()), generator=torch.Generator().manual_seed(0), dtype=dtype
    )
    batch = probe.prepare_batch(batch)  # as the trainer does, before the (device) transfer

    def loss(model, b):
        return HamiltonianTask(model).loss(b, model(b))[0]

    return build, batch, loss, lambda model, b: model(b)["fock"]


def edm_case(dtype, hidden=64, layers=4, molecules=16):
    from torch_geometric.data import Batch, Data

    from molequi.models.generative.edm import EDM

    rng = np.random.default_rng(0)
    data = []
    for _ in range(molecules):
        heavy = int(rng.integers(4, 10))
        z = np.concatenate(
            [rng.choice([6, 6, 6, 7, 8], heavy), np.ones(int(rng.integers(heavy, 2 * heavy)), int)]
        )
        data.append(
            Data(
                numbers=torch.as_tensor(z).long(),
                pos=torch.as_tensor(rng.normal(0, 1.5, (len(z), 3)), dtype=dtype),
            )
        )
    batch = Batch.from_data_list(data)

    def build():
        torch.manual_seed(0)
        return EDM(EDM.Config(hidden=hidden, layers=layers)).to(dtype)

    def loss(model, b):
        return model.training_loss(b, generator=torch.Generator().manual_seed(1))[0]

    def output(model, b):  # the denoiser on one fixed noisy input
        from molequi.models.generative.graph import fully_connected_edges

        x, h = model.encode(b.numbers, b.pos, b.batch, b.num_graphs)
        t = torch.full((b.num_graphs,), 0.5, dtype=dtype)
        return model.dynamics(x, h, t, b.batch, fully_connected_edges(b.batch, b.num_graphs))[0]

    return build, batch, loss, output


def edm_loss_case(dtype):
    """``edm_case`` with the whole training loss of a prepared batch (module docstring)."""
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    build, batch, _, output = edm_case(dtype)
    prepared = build().prepare_batch(batch.clone())

    def loss(model, b):
        torch.manual_seed(1)
        return model.training_loss(prepared)[0]

    return build, batch, loss, output


def measure(name, case, backend, repeats):
    from molequi.train.compile import compile_for_training

    build, batch, loss, output = case
    eager, compiled = build(), build()
    compile_for_training(compiled, backend)
    rows, first = [], {}
    for mode in ("inference", "training"):

        def run(m, mode=mode):
            if mode == "inference":
                m.eval()
                with torch.no_grad():
                    return output(m, batch)
            m.train()
            m.zero_grad(set_to_none=True)
            value = loss(m, batch)
            value.backward()
            return value

        t0, c0 = time.perf_counter(), time.process_time()
        got = run(compiled)
        first[mode] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        want = run(eager)
        if mode == "inference":
            diff = {"max_rel_output_diff": float((got - want).abs().max() / want.abs().max())}
        else:
            diff = {
                "rel_loss_diff": float(abs(got.item() - want.item()) / abs(want.item())),
                "max_rel_grad_diff": _max_rel(_grads(compiled), _grads(eager)),
            }
        t = interleaved({"eager": lambda: run(eager), "compiled": lambda: run(compiled)}, repeats=repeats)
        for variant in ("eager", "compiled"):
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    "variant": variant,
                    "wall_s": t[variant]["median_wall_s"],
                    "cpu_s": t[variant]["median_cpu_s"],
                    "walls": t[variant]["wall_s"],
                    "cpus": t[variant]["cpu_s"],
                    "speedup_cpu": t["eager"]["median_cpu_s"] / t[variant]["median_cpu_s"],
                    "speedup_wall": t["eager"]["median_wall_s"] / t[variant]["median_wall_s"],
                    "first_compiled_call": first[mode],
                    **diff,
                }
            )
    return rows


def check_f64():
    """float64 aot_eager vs eager gradients of the tiny test QHNet on two batch sizes (one compiled graph)."""
    import torch._dynamo as dynamo

    from molequi.train.compile import compile_for_training

    build, _, loss, _ = qhnet_case(torch.float64, tiny=True, molecules=2)
    eager, compiled = build(), build()
    compile_for_training(compiled, "aot_eager")
    dynamo.reset()
    dynamo.utils.counters.clear()
    out = []
    c0 = time.process_time()
    for k in (2, 3):
        batch = qhnet_case(torch.float64, tiny=True, molecules=k)[1]
        grads = []
        for m in (eager, compiled):
            m.train()
            m.zero_grad(set_to_none=True)
            loss(m, batch.clone()).backward()
            grads.append(_grads(m))
        out.append(
            {
                "molecules": k,
                "max_rel_grad_diff": _max_rel(grads[1], grads[0]),
                "parameters_with_grad": len(grads[0]),
            }
        )
    return {
        "rows": out,
        "graphs": int(dynamo.utils.counters["stats"]["unique_graphs"]),
        "cpu_s": time.process_time() - c0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed calls per variant and mode (default 7)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--models", default="qhnet,edm",
                   help="comma-separated: qhnet, edm, edm_loss (default qhnet,edm; edm_loss in its own process)")
    p.add_argument("--no-check-f64", action="store_true", help="skip the float64 aot_eager gradient check")
    p.add_argument("--name", default="compile_speed_more",
                   help="JSON name under bench_results/ (default compile_speed_more; the README row reads "
                        "compile_speed_more*.json, so the models can run in separate processes)")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be >= 5")
    dtype = torch.float32
    cases = {"qhnet": lambda: qhnet_case(dtype), "edm": lambda: edm_case(dtype),
             "edm_loss": lambda: edm_loss_case(dtype)}
    rows = []
    for name in args.models.split(","):
        rows += measure(name, cases[name](), args.backend, args.repeats)
        print_table(rows, ["model", "mode", "variant", "wall_s", "cpu_s", "speedup_cpu", "speedup_wall"])
    f64 = None if args.no_check_f64 else check_f64()
    if f64:
        print("float64 QHNet aot_eager vs eager gradients:", f64)
    for r in rows:
        if r["variant"] == "compiled":
            print(
                f"{r['model']} {r['mode']}: first compiled call "
                f"{r['first_compiled_call']['cpu_s']:.1f} CPU s; "
                + ", ".join(
                    f"{k} {r[k]:.2e}"
                    for k in ("max_rel_output_diff", "rel_loss_diff", "max_rel_grad_diff")
                    if k in r
                )
            )
    save(
        args.name,
        {
            "backend": args.backend,
            "dtype": "float32",
            "repeats": args.repeats,
            "rows": rows,
            "check_f64": f64,
            "settings": {
                "qhnet": "sto-3g lmax 2, hidden 32, bottleneck 16, 3 layers (start_layer 1), 8 ethanols",
                "edm": "EDMDynamics hidden 64, 4 layers, 16 molecules of 9-19 atoms",
                "edm_loss": "inference: the denoiser; training: the whole loss of a prepared batch, "
                            "fallback_random; EDMDynamics hidden 64, 4 layers, 16 molecules of 9-19 atoms",
            },
            "command": "python scripts/bench/compile_speed_more.py " + " ".join(argv or sys.argv[1:]),
        },
        provenance(None, None, None),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
