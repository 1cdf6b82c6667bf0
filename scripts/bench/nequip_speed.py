"""Energy+forces and training-step speed of molequi's MACE against nequip (a second force-field peer), CPU.

    PY=$(bash scripts/bench/setup_peers.sh nequip)      # once: nequip 0.19.1 in its own venv (torch 2.13.0)
    python scripts/bench/nequip_speed.py --nequip-python "$PY" [--repeats 5] [--threads 1]

nequip (github.com/mir-group/nequip, PyPI ``nequip==0.19.1``) shares every package molequi also uses with
molequi's venv at the same version (torch 2.13.0, e3nn 0.6.0, lightning 2.6.6, numpy, ase); the script
checks that and then imports nequip from its venv's site-packages *into this process*, so the two codes run
in one invocation, their calls interleaved (scripts/bench/_common.interleaved: one warm-up each, then
``--repeats`` rounds in rotating order), on the same structures, threads and dtype (float32).

Models (random weights; weights do not change the cost):

- **molequi MACE**: the small MACE of every mace-torch comparison (scripts/bench/_common.MACE_HYPER):
  features 64x0e+64x1o, edge spherical harmonics to l = 3, correlation 3, 2 interactions, r_max 5 Å,
  8 Bessel functions, polynomial envelope p = 5, radial MLP [64, 64, 64].
- **nequip matched**: ``NequIPGNNModel`` with what can be set the same: features 64x0e+64x1o
  (``l_max 1``, ``num_features 64``, ``parity False``), 2 message-passing layers, r_max 5 Å, 8 Bessel
  functions, p = 5, radial MLP 3 x 64. NequIP ties the edge harmonics to ``l_max`` (l <= 1 here, MACE
  uses l <= 3) and has no many-body (correlation) product: per layer it does less than MACE.
- **nequip preset S**: nequip's own smallest preset (``PresetNequIPGNNModel("S")``: 2 layers, l_max 1,
  128x0e + 64x1o, type embedding 32, radial MLP 1 x 128), r_max 5 Å, as its documentation suggests.

"Comparable" means: same cutoff, same radial basis, same number of message-passing layers and the same
feature irreps (64x0e+64x1o) as the small MACE; the parameter counts are printed beside the times.

Systems: 32 rMD17 ethanol frames as one batch (288 atoms) and the periodic 171-molecule water box of
scripts/bench/mace_speed.py (513 atoms); each code builds its own neighbour list before timing (not
timed). Two warm-up calls each (molequi's first eval-mode call after the warm-up was still 3x slower with
one). Tasks: energy + forces (forces by autograd, eval mode) and one training step (energy + forces with
a graph for the backward, E^2 + 100 x force MSE loss, backward, Adam with AMSGrad), as mace_speed.py.

Writes bench_results/nequip_speed.json (with ``provenance``) and nequip_speed.md. When nequip cannot be
installed or run, the JSON records the error and why instead of times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from _common import ETHANOL_NPZ, MACE_HYPER, interleaved, provenance  # noqa: E402

PEER = "nequip"
TYPE_NAMES = ["H", "C", "O"]
ELEMENTS = [1, 6, 8]
NEQUIP_MATCHED = dict(num_layers=2, l_max=1, parity=False, num_features=64, radial_mlp_depth=3,
                      radial_mlp_width=64, num_bessels=8, polynomial_cutoff_p=5)
SHARED = ("torch", "e3nn", "lightning", "numpy", "ase")  # packages both venvs must have at one version


class PeerError(Exception):
    """nequip's venv cannot share this process; the message says why and what to do."""


def attach_nequip(python: str) -> dict:
    """Put the nequip venv's site-packages at the end of ``sys.path`` after checking that every package the
    two venvs share has the same version (else one process would mix two builds). Returns the versions."""
    probe = ("import json, sysconfig, importlib.metadata as m; print(json.dumps({'site': "
             "sysconfig.get_paths()['purelib'], 'versions': {p: m.version(p) for p in "
             + repr(SHARED + ("nequip",)) + "}}))")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise PeerError(f"{python}: cannot query the nequip venv ({err}); build it with "
                        "`bash scripts/bench/setup_peers.sh nequip`") from err
    info = json.loads(out.stdout.strip().splitlines()[-1])
    import importlib.metadata as md

    ours = {p: md.version(p) for p in SHARED}
    differ = {p: (ours[p], info["versions"][p]) for p in SHARED if ours[p] != info["versions"][p]}
    if differ:
        raise PeerError(f"{python}: versions differ from molequi's venv ({differ}); rebuild it with "
                        "scripts/bench/setup_peers.sh nequip (it pins torch 2.13.0)")
    sys.path.append(info["site"])
    return info["versions"]


def structures() -> dict:
    import ase
    from mace_speed import make_structures

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_structures(Path(tmp), 32, ETHANOL_NPZ)
        import ase.io

        return {name: ase.io.read(path, ":") for name, path in paths.items()}


def molequi_side(frames, dtype):
    """molequi's MACE (as scripts/bench/mace_speed.py builds it) and its batch: (model, forward)."""
    from torch_geometric.data import Batch

    from molequi.data.records import atoms_to_data
    from molequi.data.statistics import Statistics
    from molequi.graph.neighbors import RadiusGraph
    from molequi.models.mace import MACE

    graph = RadiusGraph(MACE_HYPER["r_max"])
    batch = Batch.from_data_list([graph(atoms_to_data(a, dtype=dtype, validate=False)) for a in frames])
    stats = Statistics(elements=ELEMENTS, avg_num_neighbors=batch.edge_index.shape[1] / batch.num_nodes)
    torch.manual_seed(0)
    model = MACE.from_config(MACE.Config(**MACE_HYPER, first_interaction="residual", envelope="basis"),
                             stats).to(dtype)

    def forward():
        out = model(batch, compute_forces=True)
        return out["energy"], out["forces"]

    return model, forward, int(batch.edge_index.shape[1])


def nequip_side(frames, kind: str, avg_neighbors: float):
    """nequip's model (``kind``: matched or preset_S) and batch, built by nequip's own functions."""
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
    from nequip.model import NequIPGNNModel, PresetNequIPGNNModel

    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPE_NAMES)
    batch = AtomicDataDict.batched_from_list(
        [mapper(compute_neighborlist_(from_ase(a), MACE_HYPER["r_max"])) for a in frames])
    common = dict(seed=0, model_dtype="float32", r_max=MACE_HYPER["r_max"], type_names=TYPE_NAMES,
                  avg_num_neighbors=avg_neighbors, per_type_energy_scales=1.0, per_type_energy_shifts=0.0)
    if kind == "matched":
        model = NequIPGNNModel(**NEQUIP_MATCHED, **common)
    else:
        model = PresetNequIPGNNModel(preset="S", **common)

    def forward():
        out = model(dict(batch))
        return out["total_energy"], out["forces"]

    return model, forward, int(batch["edge_index"].shape[1])


def train_step(model, forward, n_atoms: int):
    """mace_speed.py's training step: E^2 + 100 x force MSE against fixed random forces, Adam (AMSGrad)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    f_ref = torch.randn(n_atoms, 3, generator=torch.Generator().manual_seed(0))

    def step():
        opt.zero_grad(set_to_none=True)
        energy, forces = forward()
        loss = (energy**2).mean() + 100.0 * ((forces - f_ref.to(forces)) ** 2).mean()
        loss.backward()
        opt.step()

    return step


def infer(forward):
    def call():
        energy, forces = forward()
        return float(energy.detach().sum()) + float(forces.detach().sum())

    return call


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    versions = attach_nequip(args.nequip_python)
    from nequip.utils.global_state import set_global_state

    set_global_state()  # nequip refuses to build models before it; it sets torch's default dtype to float64
    nequip_default_dtype = str(torch.get_default_dtype())
    frames = {k: v for k, v in structures().items() if k in args.systems}
    systems = {}
    for name, atoms in frames.items():
        n_atoms = sum(len(a) for a in atoms)
        torch.set_default_dtype(torch.float32)
        mq, mq_fwd, mq_edges = molequi_side(atoms, torch.float32)
        torch.set_default_dtype(torch.float64)  # nequip's own setting while it builds its data and models
        sides = {"molequi MACE": (mq, mq_fwd, mq_edges)}
        for kind in ("matched", "preset_S"):
            sides[f"nequip {kind}"] = nequip_side(atoms, kind, mq_edges / n_atoms)
        torch.set_default_dtype(torch.float32)
        row = {"atoms": n_atoms, "structures": len(atoms),
               "edges": {k: v[2] for k, v in sides.items()},
               "parameters": {k: sum(p.numel() for p in v[0].parameters()) for k, v in sides.items()}}
        for m, _, _ in sides.values():
            m.eval()
        row["energy_forces"] = interleaved({k: infer(v[1]) for k, v in sides.items()}, args.repeats,
                                          warmup=2)
        for m, _, _ in sides.values():
            m.train()
        row["train_step"] = interleaved({k: train_step(v[0], v[1], n_atoms) for k, v in sides.items()},
                                        args.repeats, warmup=2)
        for task in ("energy_forces", "train_step"):
            t = row[task]
            row[f"{task}_nequip_over_molequi"] = {
                k: {"cpu": t[k]["median_cpu_s"] / t["molequi MACE"]["median_cpu_s"],
                    "wall": t[k]["median_wall_s"] / t["molequi MACE"]["median_wall_s"]}
                for k in t if k != "molequi MACE"}
        systems[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k not in ("energy_forces", "train_step")}),
              flush=True)
    return {"systems": systems, "dtype": "float32", "repeats": args.repeats, "versions": versions,
            "nequip_default_dtype_after_set_global_state": nequip_default_dtype,
            "models": {"molequi MACE": {**MACE_HYPER, "first_interaction": "residual", "envelope": "basis"},
                       "nequip matched": NEQUIP_MATCHED, "nequip preset_S": "PresetNequIPGNNModel('S')"}}


def write_md(res: dict, path: Path) -> None:
    lines = ["# molequi MACE vs nequip, same run, interleaved", ""]
    if "error" in res:
        lines += [f"nequip did not run: {res['error']}", ""]
    else:
        lines += [f"float32, {res['provenance']['threads']} thread(s), median of {res['repeats']} "
                  "interleaved calls; CPU s (wall s); ratio = nequip / molequi (above 1: molequi faster).",
                  "",
                  "| system | code | parameters | energy+forces | training step | ratio E+F CPU (wall) | "
                  "ratio train CPU (wall) |", "|---" * 7 + "|"]
        for name, r in res["systems"].items():
            for code in r["parameters"]:
                ef, tr = r["energy_forces"][code], r["train_step"][code]
                rat = ("| - | - |" if code == "molequi MACE" else
                       f"| {r['energy_forces_nequip_over_molequi'][code]['cpu']:.2f}x "
                       f"({r['energy_forces_nequip_over_molequi'][code]['wall']:.2f}x) | "
                       f"{r['train_step_nequip_over_molequi'][code]['cpu']:.2f}x "
                       f"({r['train_step_nequip_over_molequi'][code]['wall']:.2f}x) |")
                lines.append(f"| {name} ({r['atoms']} atoms) | {code} | {r['parameters'][code]:,} | "
                             f"{ef['median_cpu_s']:.3f} ({ef['median_wall_s']:.3f}) | "
                             f"{tr['median_cpu_s']:.3f} ({tr['median_wall_s']:.3f}) {rat}")
    prov = res["provenance"]
    lines += ["", f"Command: `{prov['command']}`; load average {prov['load_average']}.", ""]
    from molequi.io import atomic_write_text

    atomic_write_text(path, "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nequip-python", required=True, metavar="PY",
                    help="python of the nequip venv (printed by `bash scripts/bench/setup_peers.sh nequip`)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--systems", nargs="+", default=["ethanol_x32", "water_513"],
                    choices=["ethanol_x32", "water_513"])
    ap.add_argument("--out", default=str(ROOT / "bench_results" / "nequip_speed.json"))
    args = ap.parse_args(argv)
    command = " ".join(["python scripts/bench/nequip_speed.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        res = run(args)
        version = res["versions"]["nequip"]
    except PeerError as err:
        res, version = {"error": str(err)}, None
    res["provenance"] = provenance(PEER, version, "error" not in res, command=command,
                                   peer_code="PyPI nequip (github.com/mir-group/nequip)")
    out = Path(args.out)
    from molequi.io import atomic_write_text

    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    write_md(res, out.with_suffix(".md"))
    print("wrote", out)
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    sys.exit(main())
