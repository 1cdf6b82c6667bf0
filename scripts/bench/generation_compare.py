"""EDM vs GeoLDM vs EQGAT-diff in molequi at equal CPU budget on full QM9 (issue 17, item 5).

    python scripts/bench/generation_compare.py run [--cpu-minutes 5] [--samples 1000] [--nll-molecules 1000]
        [--models geoldm eqgat_diff] [--edm-workdir runs/edm_equal_budget_full]
        [--workdir runs/generation_compare] [--sample-parts 4] [--peer-code ../shared/peers/edm]
    python scripts/bench/generation_compare.py side MODEL ...      train one model (+ NLL); ``run`` starts it
    python scripts/bench/generation_compare.py samples MODEL --part K --samples N ...   N samples of it
    python scripts/bench/generation_compare.py finish --peer-code PATH ...     metrics, JSON, markdown
    python scripts/bench/generation_compare.py report                          markdown again from the JSON

The EDM row is **not retrained**: it is molequi's EDM of ``edm_equal_budget.py`` (``--edm-workdir``: its
``molequi_side.json``, ``molequi_samples.npz``, trained for 5 CPU-minutes on this machine on an earlier day,
under load). GeoLDM and EQGAT-diff are trained here by the same code path as that run's molequi side
(``edm_equal_budget.run_molequi_side``: ``molequi.train.run.train`` with the CPU-budget callback, one thread),
on the same data and split (EDM's split of the ppqm tarball, the npz files ``edm_equal_budget.prepare`` wrote
into ``EDM_WORKDIR/edm_data``, linked into ``WORKDIR``), with the same optimiser and trainer settings (AdamW,
AMSGrad, lr 1e-4, weight decay 1e-12, batch 64, EMA 0.999 with molequi's warm-up, no gradient clipping,
seed 0).
Sizes (``MODELS``), comparable to the EDM run's EGNN of 4 layers x 64 features where the architectures allow:

- GeoLDM: encoder (1 block), latent denoiser and decoder (4 blocks each) of 64 features, latent_nf 1,
  T = 500 (EDM's run; GeoLDM's README uses 1000), polynomial_2 / 1e-5, trained jointly as GeoLDM's README
  command (``--train_diffusion --trainable_ae``: the decoder learns with the latent diffusion, the encoder
  keeps its initial weights), kl_weight 0.01; norm_values [1, 1, 1] as GeoLDM's latent model.
- EQGAT-diff: 4 EQGAT layers, 64 scalar / 16 vector / 8 edge channels (the reference's 256 / 64 / 32
  divided by 4), T = 500 (the reference's), charges {-1, 0, +1}; bonds and charges of the training molecules
  are perceived
  from their geometry inside the training loop (the tarball has none), so that CPU time is in its budget.

Each side then samples ``--samples`` molecules (ancestral, all T steps, batches of 100, saved per batch;
``samples`` processes, run one after the other). Metrics, one code for all three
(``molequi.tasks.generation_metrics.molecule_report``): atom / molecule stability, validity (EDM's: largest
fragment sanitises), uniqueness, valid x unique with **bonds from distances** as EDM's ``analyze``; EDM's own
``qm9/analyze.py`` + ``rdkit_functions.py`` as a check (``--peer-code``); for EQGAT-diff also with its
**predicted bonds and charges** (charge-aware valences, MiDi's table) and **strict validity** (one fragment),
as EQGAT-diff reports. NLL for EDM and GeoLDM (their variational bounds, ``dataset_nll``, first
``--nll-molecules`` test molecules); EQGAT-diff has no likelihood. Results:
bench_results/generation_compare.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import edm_equal_budget as eb  # noqa: E402
import numpy as np  # noqa: E402
from _common import provenance, save  # noqa: E402

RESULTS = eb.RESULTS
COMMON = {  # EDM's run's settings (edm_equal_budget.HYPER) that GeoLDM shares
    "elements": list(eb.ELEMENTS),
    "hidden": eb.HYPER["nf"],
    "layers": eb.HYPER["n_layers"],
    "timesteps": eb.HYPER["diffusion_steps"],
}
MODELS = {
    "geoldm": {
        "name": "geoldm",
        **COMMON,
        "schedule": eb.HYPER["diffusion_noise_schedule"],
        "precision": eb.HYPER["diffusion_noise_precision"],
        "include_charges": eb.HYPER["include_charges"],
        "norm_values": [1.0, 1.0, 1.0],
        "coords_range": 15.0,
        "coords_range_per_layer": 15.0,
        "normalization_factor": float(eb.HYPER["normalization_factor"]),
        "attention": eb.HYPER["attention"],
        "tanh": eb.HYPER["tanh"],
        "norm_constant": float(eb.HYPER["norm_constant"]),
        "loss_normalisation": "edm",
        "latent_nf": 1,
        "kl_weight": 0.01,
        "trainable_ae": True,
        "train_diffusion": True,
    },
    "eqgat_diff": {
        "name": "eqgat_diff",
        **COMMON,
        "charges": [-1, 0, 1],
        "vectors": 16,
        "edge_hidden": 8,
    },
}
METRICS = eb.METRICS + ["validity_strict", "uniqueness_strict", "valid_x_unique_strict"]
LABELS = {"edm": "EDM", "geoldm": "GeoLDM", "eqgat_diff": "EQGAT-diff"}


def side_main(args) -> int:
    """Train one model for the CPU budget and take its NLL (no samples: ``samples`` draws them)."""
    workdir = Path(args.workdir).resolve()
    budget = args.cpu_minutes * 60.0

    def save_partial(out, samples):
        out["cpu_budget_s"], out["samples_requested"] = budget, args.samples
        eb.save_side(workdir, args.model, out, samples, complete=False)

    out, samples = eb.run_molequi_side(
        workdir,
        budget,
        0,
        args.nll_molecules,
        args.seed,
        save_partial,
        side=args.model,
        model_section=MODELS[args.model],
    )
    out["cpu_budget_s"], out["samples_requested"] = budget, args.samples
    eb.save_side(workdir, args.model, out, samples, complete=False)
    return 0


def _link_data(workdir: Path, edm_workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "edm_data"
    if not link.exists():
        if not (edm_workdir / "edm_data" / "qm9" / "train.npz").is_file():
            raise SystemExit(
                f"{edm_workdir / 'edm_data' / 'qm9'} has no prepared split: run edm_equal_budget.py run "
                "first "
                "(it prepares EDM's split of the tarball and trains the EDM this comparison reuses)"
            )
        link.symlink_to(edm_workdir.resolve() / "edm_data")


def _edm_side(edm_workdir: Path, cpu_minutes: float) -> dict:
    """The reused EDM run's side record; it must have trained for the budget the other models get (an
    equal-budget table)."""
    path = edm_workdir / "molequi_side.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run edm_equal_budget.py run --workdir {edm_workdir} first")
    side = json.loads(path.read_text())
    budget = side.get("cpu_budget_s")
    if budget is None or abs(budget - cpu_minutes * 60.0) > 1e-6:
        raise SystemExit(
            f"{path}: the EDM run trained for {budget} CPU s, not the {cpu_minutes * 60.0:g} of "
            f"--cpu-minutes {cpu_minutes:g}; give --edm-workdir an EDM run of the same budget (edm_equal_budget.py run "
            f"--cpu-minutes {cpu_minutes:g})"
        )
    return side


def run_main(args) -> int:
    """Each model's training, then each model's samples, one process at a time; then ``finish``."""
    workdir, edm_workdir = Path(args.workdir).resolve(), Path(args.edm_workdir).resolve()
    _edm_side(edm_workdir, args.cpu_minutes)
    _link_data(workdir, edm_workdir)
    (workdir / "command.txt").write_text(
        "python scripts/bench/generation_compare.py " + " ".join(sys.argv[1:])
    )
    common = [
        "--workdir",
        str(workdir),
        "--cpu-minutes",
        str(args.cpu_minutes),
        "--samples",
        str(args.samples),
        "--nll-molecules",
        str(args.nll_molecules),
        "--seed",
        str(args.seed),
    ]
    per_part = -(-args.samples // args.sample_parts)  # the models take turns: a deadline leaves each a share
    steps = [["side", m] for m in args.models] + [
        ["samples", m, "--part", str(k), "--samples", str(min(per_part, args.samples - (k - 1) * per_part))]
        for k in range(1, args.sample_parts + 1)
        for m in args.models
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for step in steps:
        log_path = workdir / f"{'_'.join(step[:2] + step[3:4])}.log"
        with open(log_path, "w") as log:
            print(f"{' '.join(step)}: log {log_path}", flush=True)
            cmd = [sys.executable, __file__, *step[:2], *common, *step[2:]]  # the last --samples wins
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
                raise SystemExit(f"{' '.join(step)} failed; see {log_path}")
    return finish(args)


def metrics(samples, peer_code: Path | None) -> dict:
    """The metrics of one side's samples: distance bonds (molequi; EDM's analyze as a check) and, when the
    samples carry them, predicted bonds and charges."""
    from molequi.data.molecules import Molecule
    from molequi.tasks.generation_metrics import molecule_report

    geometry = [(s[0], s[1]) for s in samples]
    out = {"distance_bonds": eb.molequi_metrics(geometry)}
    if peer_code is not None:
        out["distance_bonds_edm_analyze"] = eb.edm_metrics(peer_code, geometry)
    if samples and len(samples[0]) == 4:
        r = molecule_report([Molecule(numbers=z, positions=x, bonds=b, charges=q) for z, x, q, b in samples])
        r.pop("smiles")
        from scipy.sparse.csgraph import connected_components

        r["bonds_per_molecule"] = float(np.mean([(b > 0).sum() / 2 for *_, b in samples]))
        r["atoms_per_molecule"] = float(np.mean([len(z) for z, *_ in samples]))
        r["fragments_per_molecule"] = float(np.mean([connected_components(b > 0)[0] for *_, b in samples]))
        out["predicted_bonds"] = r
    return out


def finish(args) -> int:
    workdir, edm_workdir = Path(args.workdir).resolve(), Path(args.edm_workdir).resolve()
    peer_code = Path(args.peer_code).resolve() if args.peer_code else None
    sides = {"edm": _edm_side(edm_workdir, args.cpu_minutes)}
    samples = {"edm": eb.gather_samples(edm_workdir, "molequi", sides["edm"])}
    sides["edm"]["reused_from"] = str(edm_workdir)
    not_sampled = []
    for m in args.models:
        side = json.loads((workdir / f"{m}_side.json").read_text())
        got = eb.gather_samples(workdir, m, side)
        if got:
            sides[m], samples[m] = side, got
        else:  # stopped before its first sampling batch: left out of the table, named in the JSON
            not_sampled.append(m)
    for name, e in sides.items():
        e["metrics"] = metrics(samples[name], peer_code)
        e.pop("loss_curve", None)
        e["config_section"] = MODELS.get(name, "EDM: edm_equal_budget.molequi_yaml (HYPER)")
    payload = {
        "cpu_budget_s_each": sides["edm"]["cpu_budget_s"],
        "budget_note": "CPU time (time.process_time) of each training process in its training loop, one "
        "thread; EDM's run is edm_equal_budget.py's molequi side, trained on an earlier day on this machine "
        "under load, reused here (not retrained); GeoLDM and EQGAT-diff trained in this run, one after the "
        "other, at nice 15 beside other jobs",
        "optimiser": "AdamW, AMSGrad, lr 1e-4, weight decay 1e-12, batch 64, EMA 0.999 (molequi's warm-up), "
        "no gradient clipping, seed 0 (all three)",
        "metrics_code": "molequi.tasks.generation_metrics.molecule_report; distance_bonds: EDM's definitions "
        "(bonds from distances, EDM's valences); distance_bonds_edm_analyze: EDM's qm9/analyze.py + "
        "rdkit_functions.py on the same samples; predicted_bonds (EQGAT-diff): its predicted bond orders and "
        "formal charges, charge-aware valences (MiDi's table), validity_strict = sanitises and one fragment",
        "no_nll": "EQGAT-diff has no likelihood (categorical x0-parameterised diffusion without a "
        "variational "
        "bound in its code); its NLL is absent",
        "note": args.note,
        "trained_but_not_sampled": not_sampled,
        "sides": sides,
        "command": (workdir / "command.txt").read_text() if (workdir / "command.txt").is_file() else None,
        "load_average_after": os.getloadavg(),
    }
    prov = provenance(
        None,
        None,
        None,
        notes="molequi's EDM, GeoLDM and EQGAT-diff against each other, no peer code trained; EDM's "
        "analyze.py "
        "used as a metric check when --peer-code is given",
    )
    save("generation_compare", eb._relative_paths(payload), eb._relative_paths(prov))
    write_report()
    return 0


def _f(v, fmt=".1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def write_report() -> None:
    d = json.loads((RESULTS / "generation_compare.json").read_text())
    sides = d["sides"]
    names = list(sides)
    head = "| | " + " | ".join(LABELS[n] for n in names) + " |"
    lines = [
        "# EDM vs GeoLDM vs EQGAT-diff in molequi at equal CPU budget on full QM9",
        "",
        *([f"**{d['note']}**", ""] if d.get("note") else []),
        f"`{d['command']}`. Budget: {d['cpu_budget_s_each'] / 60:.0f} CPU-minutes of training each, "
        "one thread "
        f"({d['budget_note']}). Optimiser: {d['optimiser']}.",
        "",
        head,
        "|---|" + "---:|" * len(names),
    ]

    def add(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(sides[n]) for n in names) + " |")

    add("parameters", lambda e: f"{e['params']:,}")
    add("training CPU s / wall s", lambda e: f"{e['train_cpu_s']:.0f} / {e['train_wall_s']:.0f}")
    add("optimiser steps (molecules seen)", lambda e: f"{e['iterations']} ({e['molecules_seen']:,})")
    add("samples", lambda e: str(e["n_samples"]) + ("" if e.get("complete", True) else " (partial)"))
    for k in METRICS:
        add(f"{k.replace('_', ' ')} %, distance bonds", lambda e, k=k: _f(e["metrics"]["distance_bonds"][k]))
    if all("distance_bonds_edm_analyze" in sides[n]["metrics"] for n in names):
        for k in ("atom_stability", "molecule_stability", "validity"):
            add(
                f"{k.replace('_', ' ')} %, EDM's analyze.py",
                lambda e, k=k: _f(e["metrics"]["distance_bonds_edm_analyze"][k]),
            )
    for k in METRICS:
        add(
            f"{k.replace('_', ' ')} %, predicted bonds + charges",
            lambda e, k=k: _f(e["metrics"].get("predicted_bonds", {}).get(k)),
        )
    add(
        "predicted bonds / atoms / fragments per molecule",
        lambda e: (
            "n/a"
            if "predicted_bonds" not in e["metrics"]
            else "{bonds_per_molecule:.1f} / {atoms_per_molecule:.1f} / {fragments_per_molecule:.1f}".format(
                **e["metrics"]["predicted_bonds"]
            )
        ),
    )
    add(
        "test NLL, nats/molecule",
        lambda e: (
            _f(e.get("nll_nats"), ".1f")
            + (
                f" ± {e['nll_stderr']:.1f} ({e['nll_molecules']} mol.)"
                if e.get("nll_stderr") is not None
                else ""
            )
        ),
    )
    add("sampling CPU s per molecule (T steps)", lambda e: f"{e['sample_cpu_s_per_molecule']:.2f}")
    lines += [
        "",
        f"n/a: not defined for that model ({d['no_nll']}; only EQGAT-diff predicts bonds and charges). "
        f"Metrics: {d['metrics_code']}.",
        "",
        "NLL: each model's own variational bound, one draw of t and noise per molecule (EDM: in data space; "
        "GeoLDM: as GeoLDM's code computes it, the latent diffusion bound on the encoded z plus the "
        "decoder's summed reconstruction error and GeoLDM's constants, with no encoder entropy term, so the "
        "two figures are not estimates of the same quantity; their standard errors are large). EQGAT-diff: "
        "bonds and charges of the training molecules perceived from the geometry (RDKit xyz2mol) inside the "
        "training "
        "loop, about 0.02 CPU s per batch of 64 of its budget (~4 %). All three models are 5 CPU-minutes "
        "into training (a few hundred to 1,300 steps; the papers train for days on GPUs: EDM 82.0 %, GeoLDM "
        "89.4 %, EQGAT-diff 98.7 % molecule stability on QM9), so this compares early learning per CPU "
        "second, not the papers' end points.",
        "",
        *(
            [f"Trained but not sampled before the deadline: {', '.join(d['trained_but_not_sampled'])}.", ""]
            if d.get("trained_but_not_sampled")
            else [""]
        ),
        "Model settings:",
        "",
    ] + [f"- {LABELS[n]}: `{json.dumps(sides[n]['config_section'])}`" for n in names]
    lines.append("")
    from molequi.io import atomic_write_text

    atomic_write_text(RESULTS / "generation_compare.md", "\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (
        ("run", "trainings, samples and metrics"),
        ("side", "train one model (+ NLL)"),
        ("samples", "samples of one trained model"),
        ("finish", "metrics, JSON, markdown"),
        ("report", "markdown again from the JSON"),
    ):
        s = sub.add_parser(name, help=text)
        if name == "report":
            continue
        if name in ("side", "samples"):
            s.add_argument("model", choices=list(MODELS))
        if name == "samples":
            s.add_argument("--part", type=int, default=1, help="names the output MODEL_part{PART}_*")
            s.add_argument("--batch", type=int, default=100, help="molecules per sampling batch (saved each)")
        s.add_argument("--workdir", default=str(ROOT / "runs" / "generation_compare"))
        s.add_argument(
            "--edm-workdir",
            default=str(ROOT / "runs" / "edm_equal_budget_full"),
            help="edm_equal_budget.py's workdir: its prepared split and its molequi EDM run",
        )
        s.add_argument("--cpu-minutes", type=float, default=5.0, help="training CPU budget of each model")
        s.add_argument("--samples", type=int, default=1000, help="molecules sampled from each model")
        s.add_argument("--nll-molecules", type=int, default=1000, help="first test molecules for the NLL")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
        s.add_argument("--peer-code", default=None, help="EDM's source tree, for EDM's analyze.py as a check")
        s.add_argument("--note", default=None, help="a sentence for the JSON and the report")
        if name == "run":
            s.add_argument(
                "--sample-parts",
                type=int,
                default=4,
                help="sampling processes per model, the models taking turns",
            )
    args = p.parse_args(argv)
    if args.cmd == "report":
        write_report()
        return 0
    if args.cmd == "side":
        return side_main(args)
    if args.cmd == "samples":
        return eb.molequi_extra_samples(
            Path(args.workdir).resolve(), args.part, args.samples, args.seed, args.batch, side=args.model
        )
    if args.cmd == "finish":
        return finish(args)
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
