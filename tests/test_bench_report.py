"""scripts/bench/report.py: the README's benchmark table rendered from bench_results/*.json, and its --check.

The expected figures are computed here by hand from the raw numbers of the JSON (or from small crafted result
files), not taken from the report's own output.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench_results"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "scripts" / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(text: str, report) -> str:
    return text[text.index(report.BEGIN) : text.index(report.END)]


def test_render_is_deterministic_and_the_committed_readme_is_current(report, capsys):
    first, second = report.render(RESULTS), report.render(RESULTS)
    assert first == second
    assert first.startswith(report.BEGIN) and first.endswith(report.END)
    assert report.main(["--check"]) == 0, capsys.readouterr().out


def test_check_fails_on_a_changed_number_and_passes_on_the_rendered_readme(report, tmp_path, capsys):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert report.main(["--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    # the MACE accuracy row: molequi's median force MAE over seeds of the row's first cell (equal CPU time
    # first, the largest budget first, default normalisation first) from the JSON's per-run figures, rounded
    # by hand
    acc = json.loads((RESULTS / "mace_accuracy.json").read_text())
    cells = {(r["budget"], r["budget_size"], r["variant"]) for r in acc["runs"]}
    first = min(cells, key=lambda c: (c[0] != "cpu", -c[1], c[2] != "default"))
    f_mae = statistics.median(r["forces_mae_meV_A"] for r in acc["runs"]
                              if (r["budget"], r["budget_size"], r["variant"]) == first
                              and r["code"] == "molequi")
    shown = f"forces MAE {round(f_mae, 1):.1f} vs"
    row = next(line for line in _table(text, report).splitlines() if line.startswith("| MACE accuracy"))
    assert row.count(shown) == 1
    changed = f"{round(f_mae, 1) + 0.1:.1f} vs"
    readme.write_text(text.replace(row, row.replace(shown, changed)))
    capsys.readouterr()
    assert report.main(["--readme", str(readme), "--check"]) == 1
    diff = capsys.readouterr().out
    assert "-| MACE accuracy" in diff and "+| MACE accuracy" in diff and changed in diff
    assert report.main(["--readme", str(readme)]) == 0  # rewrite from the JSON
    assert readme.read_text() == text
    assert report.main(["--readme", str(readme), "--check"]) == 0


def test_check_fails_when_a_json_number_changes(report, tmp_path, capsys):
    results = tmp_path / "bench_results"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("*.png", "*.pt", "toy", "students"))
    path = results / "neighbors.json"
    data = json.loads(path.read_text())
    data["rows"][0]["speedup"] = 31.0
    path.write_text(json.dumps(data))
    assert report.main(["--results", str(results), "--readme", str(ROOT / "README.md"), "--check"]) == 1
    lo = min(r["speedup"] for r in data["rows"])
    assert f"{lo:.0f}-31x faster" in capsys.readouterr().out


def test_rows_from_the_committed_json_match_hand_computed_ratios(report):
    table = report.render(RESULTS)
    # MD like for like: molequi rebuilding its neighbour list every step vs MACECalculator, CPU and wall,
    # from the per-step times of the JSON (steps/s = 1 / median step time)
    md = json.loads((RESULTS / "md_speed.json").read_text())["results"]
    by = {}
    for r in md:  # implementations are compared within one invocation of md_speed.py
        if "step_cpu_s" in r:
            by.setdefault((r["system"], r.get("invocation")), {})[r["impl_key"]] = r
    pairs = [(v["molequi-noreuse"], v["mace-torch"]) for v in by.values()
             if "molequi-noreuse" in v and "mace-torch" in v]
    ratios = [statistics.median(b["step_cpu_s"]) / statistics.median(a["step_cpu_s"]) for a, b in pairs]
    wall = [statistics.median(b["step_wall_s"]) / statistics.median(a["step_wall_s"]) for a, b in pairs]

    def fmt(x):  # two decimals below 1, one above
        return f"{x:.2f}" if x < 1 else f"{x:.1f}"

    def span(values):
        lo, hi = fmt(min(values)), fmt(max(values))
        return f"{lo}x" if lo == hi else f"{lo}-{hi}x"

    assert f"{span(ratios)} CPU, {span(wall)} wall" in table
    # the EDM and QHNet rows: the peer's own code ran in the same invocation, at the commit of the JSON
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for name, result in (
        ("3D generation speed vs EDM's code", "generation_speed"),
        ("Hamiltonian speed vs QHNet", "hamiltonian_speed"),
        ("Hamiltonian accuracy (water)", "qhnet_same_run"),
    ):
        prov = json.loads((RESULTS / f"{result}.json").read_text())["provenance"]
        same_run = f"yes: {prov['peer']} ({prov['peer_version']}) in the same run"
        assert same_run in rows[name].split(" | ")[-1], name
        assert "**no**" not in rows[name], name
    version = json.loads((RESULTS / "md_speed.json").read_text())["provenance"]["peer_version"]
    assert f"yes: mace-torch MACECalculator ({version})" in rows["MD steps/s vs mace-torch's MACECalculator"]
    # QHNet speed: reference CPU / molequi CPU from the per-call times of the JSON, by hand
    sp = json.loads((RESULTS / "hamiltonian_speed.json").read_text())
    keys = ["water_b10_train_step", "ethanol_b5_train_step", "ethanol_inference"]

    def cpu(k, name):  # the median of the timed calls
        v = sorted(sp[k]["timings"][name]["cpu_s"])
        return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2

    ratios = " / ".join(f"{cpu(k, 'reference QHNet') / cpu(k, 'molequi qhnet'):.2f}" for k in keys)
    assert f"= {ratios}x CPU" in rows["Hamiltonian speed vs QHNet"]
    # tensor products, the same uvu function on both sides: e3nn's CPU time over molequi's SO(2), per dtype
    tp = json.loads((RESULTS / "tensor_products.json").read_text())
    name = next(k for k in rows if k.startswith("tensor products, same function"))
    per = []
    for dtype in dict.fromkeys(r["dtype"] for r in tp["rows"]):
        uvu = [r["e3nn_uvu_fwd_cpu_us"] / r["so2_uvu_fwd_cpu_us"] for r in tp["rows"] if r["dtype"] == dtype]
        per.append(f"{min(uvu):.2f}-{max(uvu):.2f}x" if max(uvu) < 1 else span(uvu))
    where = " (below 1x at every L)" if all(r["e3nn_uvu_fwd_cpu_us"] < r["so2_uvu_fwd_cpu_us"]
                                           for r in tp["rows"]) else ""
    assert f"same function: forward {' / '.join(per)}{where}" in rows[name]


def _minimal_accuracy(seed: int, mae: float, rmse: float) -> dict:
    common = {
        "train_cpu_seconds": 600.0,
        "structures_per_cpu_s": 10.0,
        "forces_mae_meV_A": 1.0,
        "forces_rmse_meV_A": 2.0,
    }
    return {
        "hyperparameters": {"seed": seed},
        "minutes": 10.0,
        "threads": 1,
        "results": [
            {"code": "molequi", "energy_mae_meV": 1.0, "energy_rmse_meV": 1.5, **common},
            {"code": "mace-torch", "energy_mae_meV": mae, "energy_rmse_meV": rmse, **common},
        ],
        "provenance": {
            "peer": "mace-torch",
            "peer_version": "9.9",
            "peer_measured_in_this_run": True,
            "threads": 1,
            "load_average": [3.25, 0, 0],
        },
    }


def _minimal_same_run() -> dict:
    """The rewritten mace_accuracy.py's format, three seeds of one budget / normalisation: molequi's energy
    MAE 1, 5, 3 (median 3), mace-torch's 30, 10, 20 (median 20); structures per CPU s 20 vs 10 (2x)."""
    runs, summary = [], []
    for code, maes in (("molequi", [1.0, 5.0, 3.0]), ("mace-torch", [30.0, 10.0, 20.0])):
        rs = [{"seed": i, "budget": "cpu", "variant": "default", "code": code, "energy_mae_meV": m,
               "energy_mae_offset_removed_meV": m / 2, "energy_rmse_meV": m * 2, "forces_mae_meV_A": 7.0,
               "forces_rmse_meV_A": 9.0, "structures_per_cpu_s": 20.0 if code == "molequi" else 10.0}
              for i, m in enumerate(maes)]
        runs += rs
        summary.append({"budget": "cpu", "variant": "default", "code": code, "seeds": [0, 1, 2],
                        **{k: {"median": statistics.median(r[k] for r in rs)} for k in rs[0]
                           if isinstance(rs[0][k], float)}})
    prov = _minimal_accuracy(0, 1.0, 1.0)["provenance"]
    return {"settings": {"cpu_seconds": 60.0, "epochs": 10, "n_train": 200}, "complete": False, "runs": runs,
            "summary": summary, "provenance": prov}


def test_crafted_same_run_results_give_the_hand_computed_row(report, tmp_path):
    (tmp_path / "mace_accuracy.json").write_text(json.dumps(_minimal_same_run()))
    row = report.row_mace_accuracy(tmp_path)
    # medians of (1, 5, 3) and (30, 10, 20); offset removed: half of each; RMSE: twice each
    assert ("Equal CPU time (60 CPU s of training each), molequi vs mace-torch: default normalisation (3 "
            "seeds): energy MAE 3.0 vs 20.0 meV (offset removed 1.5 vs 10.0), RMSE 6.0 vs 40.0 meV; forces "
            "MAE 7.0 vs 7.0, RMSE 9.0 vs 9.0 meV/Å") in row[2]
    assert "Equal epochs" not in row[2]  # no such runs in the file
    assert "2.0x the structures per CPU s" in row[2] and "**Incomplete**" in row[2]
    assert row[3] == "yes: mace-torch (9.9) in the same run; 1 thread, load 3.2"


def test_several_budget_sizes_and_md_invocations_are_kept_apart(report, tmp_path):
    # MACE accuracy: the 60 CPU s file plus a 120 CPU s cell (molequi energy MAE 2, mace-torch 4 on every
    # seed): the larger budget comes first, each with its own medians, and the missing std cells are named
    acc = _minimal_same_run()
    acc["settings"].update(cpu_seconds=[60.0, 120.0], epochs=[])
    for r in acc["runs"] + acc["summary"]:
        r["budget_size"] = 60.0
    for r in acc["summary"][:2]:
        mae = 2.0 if r["code"] == "molequi" else 4.0
        big = {**r, "budget_size": 120.0, "energy_mae_meV": {"median": mae}}
        acc["summary"].append(big)
    (tmp_path / "mace_accuracy.json").write_text(json.dumps(acc))
    text = report.row_mace_accuracy(tmp_path)[2]
    big, small = (text.index(f"Equal CPU time ({n} CPU s of training each)") for n in (120, 60))
    assert big < small
    each = "CPU s of training each), molequi vs mace-torch: default normalisation (3 seeds): energy MAE"
    assert f"120 {each} 2.0 vs 4.0 meV" in text and f"60 {each} 3.0 vs 20.0 meV" in text
    assert text.endswith("**Incomplete**: not measured: 120 CPU s std normalisation; 60 CPU s std "
                         "normalisation")

    # MD: a run of all three implementations (no invocation recorded) and a later run of molequi alone with
    # and without the skin at the same size; the like-for-like ratio pairs rows of the first run (CPU 4 s vs
    # 8 s per step: 2.0x), never the second run's rebuild row with the first run's mace-torch row (3.2x);
    # each reuse gain pairs rows of one run: 4 / 3 s CPU and 5 / 3 s wall, then 2.5 / 2 s
    def md_row(impl, cpu, wall, invocation=None):
        r = {"system": "cu", "impl_key": impl, "impl": impl + (" skin=0.5" if impl == "molequi" else ""),
             "n_atoms": 4096, "step_cpu_s": [cpu] * 20, "step_wall_s": [wall] * 20,
             "step_cpu": {"p25": cpu, "median": cpu, "p75": cpu}, "step_wall": {"p25": wall, "median": wall,
                                                                              "p75": wall},
             "steps_per_s": 1 / wall, "cpu_steps_per_s": 1 / cpu}
        if impl == "molequi-noreuse" and invocation is None:
            r["agreement_vs_mace_torch"] = {"forces_max_abs": 1e-7}
        return r if invocation is None else {**r, "invocation": invocation}

    rows = [md_row("molequi-noreuse", 4.0, 5.0), md_row("molequi", 3.0, 3.0), md_row("mace-torch", 8.0, 8.0),
            md_row("molequi-noreuse", 2.5, 2.5, "later"), md_row("molequi", 2.0, 2.0, "later")]
    rows[1]["system"] = rows[2]["system"] = rows[0]["system"]
    md = {"meta": {"dtype": "float32", "runs": []}, "results": rows, "provenance": acc["provenance"]}
    (tmp_path / "md_speed.json").write_text(json.dumps(md))
    like, skin = report.rows_md(tmp_path)
    assert "2.0x CPU, 1.6x wall, 4096 atoms" in like[2]
    assert ("the reuse alone, against molequi rebuilding every step in the same run: 1.25-1.33x CPU "
            "(1.25-1.67x wall), per size CPU/wall 4096 1.33/1.67x, 4096 1.25/1.25x (20 timed steps)"
            ) in skin[2]
    assert "vs MACECalculator: 2.7x CPU, 2.7x wall, 4096 atoms" in skin[2]


def test_crafted_results_give_the_hand_computed_row(report, tmp_path):
    # |error| with mean 30 and RMS 50 spreads by sqrt(50^2 - 30^2) = 40 meV around its mean
    (tmp_path / "mace_accuracy.json").write_text(json.dumps(_minimal_accuracy(0, 30.0, 50.0)))
    (tmp_path / "mace_accuracy_seed1.json").write_text(json.dumps(_minimal_accuracy(1, 5.0, 13.0)))
    row = report.row_mace_accuracy(tmp_path)
    assert math.isclose(math.sqrt(13.0**2 - 5.0**2), 12.0)
    assert "spreads by 40.0 / 12.0 meV around its mean;" in row[2]  # not 'an offset': 40 > 30 / 4
    assert "RMSE 1.5 / 1.5 vs 50.0 / 13.0 meV" in row[2]
    assert row[3] == "yes: mace-torch (9.9) in the same run; 1 thread, load 3.2"
    neighbors = {
        "rows": [{"atoms": 1000, "speedup": 2.0}, {"atoms": 20000, "speedup": 10.04}],
        "provenance": {
            "peer": "ase",
            "peer_version": None,
            "peer_measured_in_this_run": False,
            "threads": 2,
            "load_average": None,
        },
    }
    (tmp_path / "neighbors.json").write_text(json.dumps(neighbors))
    row = report.row_neighbors(tmp_path)
    assert re.search(r"^2-10x faster .* at 1,000 / 20,000 atoms$", row[2])
    assert row[3].startswith("**no**: ase figures typed in")


def test_missing_provenance_or_markers_are_named_errors(report, tmp_path, capsys):
    (tmp_path / "neighbors.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(report.ReportError, match=r"neighbors\.json: no 'provenance' block"):
        report.row_neighbors(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    assert report.main(["--readme", str(readme), "--check"]) == 2
    assert "markers" in capsys.readouterr().err


def test_common_save_records_what_the_report_reads(report, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "scripts" / "bench" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    with pytest.raises(ValueError, match="peer_measured_in_this_run must be True or False"):
        common.provenance("EDM", None, None)
    common.save(
        "neighbors",
        {"rows": [{"atoms": 10, "speedup": 3.0}]},
        provenance=common.provenance("ase", "3.29.0", True),
    )
    data = report.load(tmp_path, "neighbors")  # raises unless every provenance key is there
    assert data["provenance"]["threads"] >= 1 and len(data["provenance"]["load_average"]) == 3
    assert len(data["machine"]["load_average"]) == 3
    assert report.row_neighbors(tmp_path)[3].startswith("yes: ase (3.29.0) in the same run")
    with pytest.raises(ValueError, match="provenance lacks peer_version"):
        common.save("x", {}, provenance={"peer": None, "peer_measured_in_this_run": None})


def test_imported_and_memory_rows_from_crafted_results(report, tmp_path):
    prov = {"peer": "mace-torch", "peer_version": "9.9", "peer_measured_in_this_run": True, "threads": 1,
            "load_average": [1.0, 0, 0]}

    def timing(impl, system, n, cpu, wall):
        return {"impl_key": impl, "impl": impl, "system": system, "dtype": "float64", "n_atoms": n,
                "repeats": 5, "median_cpu_s": cpu, "median_s": wall}

    imported = {
        "results": [
            timing("mace-torch", "cu_64", 64, 2.5, 4.0), timing("molequi", "cu_64", 64, 1.0, 2.0),
            {"impl_key": "mace-torch", "system": "cu_4096", "dtype": "float64", "repeats": 5,
             "error": "RuntimeError: DefaultCPUAllocator: can't allocate memory"},
            timing("molequi", "cu_4096", 4096, 100.0, 120.0),
        ],
        "agreement": [{"dtype": "float64", "relative": {"energy": 3e-15, "forces": 2e-14}}],
        "provenance": prov,
    }
    (tmp_path / "mace_imported.json").write_text(json.dumps(imported))
    row = report.row_mace_imported(tmp_path)
    # CPU 2.5 / 1.0 and wall 4.0 / 2.0 on the one system both ran; the 4096-atom one named as not run
    assert "imported: 2.5x CPU (2.0x wall) over cu_64 (64 atoms) / cu_4096 (4096 atoms)" in row[2]
    assert "per system f64: 2.5 / -x CPU" in row[2]
    assert "in the same run 2e-14 (f64)" in row[2]
    assert row[2].endswith("; mace-torch did not run cu_4096 f64 (RuntimeError under the address-space "
                           "limit, see the JSON; molequi alone 100 CPU s)")
    assert row[3] == "yes: mace-torch (9.9) in the same run; 1 thread, load 1.0"

    def peak(config, size, mb):
        return {"config": config, "size": size, "peak_rss_mb": mb, "energy": -1.0}

    scale = {
        "dtype": "float32", "mem_limit_gb": 14.0, "provenance": prov,
        "hyperparameters": {"hidden_irreps": "8x0e+8x1o", "max_ell": 2},
        "results": [
            peak("unchunked", 1000, 2048.0), peak("auto", 1000, 1024.0), peak("mace-torch", 1000, 4096.0),
            {"config": "unchunked", "size": 4096, "error": "out of memory"}, peak("auto", 4096, 2048.0),
            {"config": "mace-torch", "size": 4096, "error": "out of memory"},
            peak("train-unchunked", 1000, 3072.0),
        ],
    }
    (tmp_path / "mace_scale.json").write_text(json.dumps(scale))
    row = report.row_mace_scale(tmp_path)
    # GB = MB / 1024; auto / mace-torch = 1024 / 4096 at the only size both ran
    assert "1,000 / 4,096 atoms, f32, MACE 8x0e+8x1o max_ell 2, a fresh process each" in row[2]
    assert "unchunked 2.0 / over 14 GiB; auto 1.0 / 2.0; mace-torch 4.0 / over 14 GiB (over N GiB" in row[2]
    assert "molequi auto / mace-torch 0.25x where both ran" in row[2]
    assert row[2].endswith("; training step unchunked 3.0 / not run")


def test_compile_speed_more_row_from_the_per_call_times(report):
    """The trainer.compile row of QHNet / EDM: each CPU ratio is the median of the eager per-call CPU times
    over the median of the compiled ones, recomputed from the lists in every compile_speed_more*.json."""
    line = next(l for l in report.render(RESULTS).splitlines()
                if l.startswith("| torch.compile vs eager on CPU, Hamiltonian"))
    paths = sorted(RESULTS.glob("compile_speed_more*.json"))
    assert paths
    for path in paths:
        rows = json.loads(path.read_text())["rows"]
        for model in {r["model"] for r in rows}:
            for mode in ("inference", "training"):
                e, c = (next(r for r in rows if (r["model"], r["mode"], r["variant"]) == (model, mode, v))
                        for v in ("eager", "compiled"))
                assert f"= {statistics.median(e['cpus']) / statistics.median(c['cpus']):.2f}x CPU" in line


def test_mace_speed_row_lists_each_system_and_the_peer_that_did_not_run(report, tmp_path):
    """Crafted mace_speed_foundation.json: a pair with training, one without, one where mace-torch failed;
    the ratios below are the crafted times divided by hand."""
    prov = json.loads((RESULTS / "mace_accuracy.json").read_text())["provenance"]

    def r(impl, system, n, dtype, wall, cpu, train=None, mb=100.0):
        row = {"impl": "molequi" if impl == "molequi" else "mace-torch 9.9", "impl_key": impl,
               "system": system, "n_atoms": n, "dtype": dtype, "median_s": wall, "median_cpu_s": cpu,
               "peak_mb_infer": mb, "times_s": [wall] * (2 if system == "cu_4096" else 3)}
        if train:
            row.update(train_median_s=train[0], train_median_cpu_s=train[1], peak_mb_train=2 * mb)
        return row

    rows = [r("molequi", "ethanol_x32", 288, "float32", 1.0, 1.0, (2.0, 2.0), 50.0),
            r("mace-torch", "ethanol_x32", 288, "float32", 4.0, 3.0, (7.0, 6.4), 100.0),
            r("molequi", "water_513", 513, "float64", 2.0, 2.0, None, 80.0),
            r("mace-torch", "water_513", 513, "float64", 5.0, 9.0, None, 100.0),
            r("molequi", "cu_4096", 4096, "float32", 10.0, 10.0, (30.0, 30.0)),
            {"impl": "mace-torch", "impl_key": "mace-torch", "system": "cu_4096", "dtype": "float32",
             "error": "did not finish within --timeout 5 s"}]
    hyper = {"hidden_irreps": "128x0e+128x1o", "max_ell": 3, "r_max": 6.0}
    (tmp_path / "mace_speed_foundation.json").write_text(json.dumps(
        {"meta": {"hyperparameters": hyper, "repeats": 3}, "results": rows, "provenance": prov}))
    row = report.row_mace_speed(tmp_path, "foundation")
    assert row[0] == "MACE (foundation size) energy+forces and training step vs mace-torch " + \
        f"{prov['peer_version']}"
    assert "--size foundation" in row[1]
    # energy+forces CPU 3/1 = 3.0 and 9/2 = 4.5; wall 4/1 = 4.0 and 5/2 = 2.5; training 6.4/2 = 3.2, 7/2 = 3.5
    assert "energy+forces 3.0-4.5x CPU (2.5-4.0x wall), training step 3.2x CPU (3.5x wall);" in row[2]
    assert ("ethanol_x32 (288 atoms) f32: energy+forces 3.0x CPU / 4.0x wall, training step 3.2x / 3.5x;"
            in row[2])
    assert "water_513 (513 atoms) f64: energy+forces 4.5x CPU / 2.5x wall;" in row[2]
    assert "; median of 3 timed calls; " in row[2]  # (the cu_4096 pair, with 2, has no mace-torch result)
    # memory 50/100 = 0.5, 80/100 = 0.8; training 100/200 = 0.5
    assert "peak memory 0.50-0.80x (inference) / 0.50x (training) mace-torch's" in row[2]  # 2 digits below 1
    assert row[2].endswith("mace-torch did not run cu_4096 float32: did not finish within --timeout 5 s")
    assert report.row_mace_speed(tmp_path / "absent", "foundation") is None
