"""molequi works as installed from a wheel: ``molequi quickstart --quick`` run outside the repository.

The wheel is built from a copy of the source, unpacked with ``pip install --no-deps --target SITE`` and run by
an interpreter started with ``-I -S``: no site processing, so the editable install of the development
environment (a ``.pth`` meta-path finder) is never loaded; ``sys.path`` is SITE first, then the
environment's site-packages for the dependencies (torch, ase, ...). The run itself reports where ``molequi``
and its shipped rMD17 files were imported from, and the test checks both lie under SITE.

Its outputs are checked against references that do not come from molequi: the reference energies in
``test_errors.csv`` against the npz file's kcal/mol values converted with CODATA constants, the reported
per-structure predictions against the written ``model.pt`` re-evaluated through the ASE calculator on
frames built from the npz directly, and the test force MAE against the zero-force baseline.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from molequi.cli.quickstart import QUICK_STEPS

REPO = Path(__file__).resolve().parents[2]
# kcal/mol -> eV from CODATA 2018 exact constants: 4184 J / N_A / e
KCAL_PER_MOL_EV = 4184.0 / (6.02214076e23 * 1.602176634e-19)

LAUNCH = """
import json, sys
sys.path[:0] = [{site!r}]
sys.path.extend({deps!r})
editable = [f for f in sys.meta_path if "editable" in repr(f).lower()]
import molequi
from molequi.resources import rmd17_ethanol
print("WHEEL-CHECK " + json.dumps({{"molequi": molequi.__file__, "train": str(rmd17_ethanol("train")),
                                    "test": str(rmd17_ethanol("test")), "editable": repr(editable)}}),
      flush=True)
from molequi.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _can_build_without_isolation() -> bool:
    """setuptools >= 68 (pyproject's build requirement) and, before setuptools 70.1, the wheel package."""
    try:
        version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    if version < (68, 0):
        return False
    if version >= (70, 1):
        return True
    try:
        importlib.metadata.version("wheel")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _build_and_install(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "molequi", src / "molequi", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)]
    if _can_build_without_isolation():
        cmd.insert(5, "--no-build-isolation")
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("molequi-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "molequi = molequi.cli.main:main" in zf.read(entry_points).decode()
    for f in ("rmd17_ethanol_train_01.npz", "rmd17_ethanol_test_01.npz", "ORIGIN.md"):
        assert f"molequi/resources/rmd17/{f}" in names, f"{f} is not packaged in {wheel.name}"
    for f in ("uncharacterized_indices.txt", "ORIGIN.md"):  # QM9's list, which fixes EDM's split
        assert f"molequi/resources/qm9/{f}" in names, f"{f} is not packaged in {wheel.name}"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(target), str(wheel)], check=True, cwd=tmp_path, timeout=300)
    return target


@pytest.mark.slow
def test_quickstart_quick_from_installed_wheel(tmp_path):
    target = _build_and_install(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert REPO not in work.resolve().parents
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["MPLBACKEND"] = "Agg"
    # one compute thread: the suite runs two workers on two cores, and two OpenMP threads per process on a
    # loaded machine made training 20x slower (measured: 50 predictions 6.6 s with 2 threads, 0.31 s with 1)
    env["OMP_NUM_THREADS"] = "1"
    code = LAUNCH.format(site=str(target), deps=deps)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, "quickstart", "--quick", "--out", "qs",
                           "--no-progress"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # imported from the installed copy, data included; no editable finder in that process
    line = next(x for x in proc.stdout.splitlines() if x.startswith("WHEEL-CHECK "))
    where = json.loads(line[len("WHEEL-CHECK "):])
    for key in ("molequi", "train", "test"):
        assert Path(where[key]).resolve().is_relative_to(target.resolve()), (key, where[key])
    assert where["editable"] == "[]"

    out = work / "qs"
    for f in ("metrics.json", "learning_curve.png", "parity.png", "test_errors.csv", "config.yaml",
              "run/model.pt", "md/md_energy.png", "md/md_nvt.extxyz", "md/md_nve.extxyz"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["n_structures"] == 1000 and test["n_atoms"] == 9000
    for key in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse"):
        assert math.isfinite(test[key]) and test[key] > 0, (key, test[key])
    assert math.isfinite(metrics["md"]["nve_drift_eV_per_atom_per_ps"])
    assert metrics["training"]["quick"] is True and metrics["training"]["steps"] == QUICK_STEPS

    # reference labels straight from the npz file (kcal/mol), converted here (the run is float32: one ulp
    # at 4210 eV is 2.4e-4 eV)
    ref = np.load(where["test"])
    e_ref = ref["energies"] * KCAL_PER_MOL_EV
    f_ref = ref["forces"] * KCAL_PER_MOL_EV
    rows = list(csv.DictReader((out / "test_errors.csv").open()))
    assert len(rows) == 1000
    np.testing.assert_allclose([float(r["energy_true_eV"]) for r in rows], e_ref, rtol=0, atol=5e-4)

    # the zero-force predictor's MAE is the mean |F|: 100 steps of training must beat it
    assert test["forces_mae"] < 0.8 * float(np.abs(f_ref).mean())

    # model.pt, evaluated through the ASE calculator on frames built from the npz, gives the reported numbers
    from ase import Atoms

    from molequi.calculators import MolequiCalculator

    calc = MolequiCalculator.from_checkpoint(str(out / "run" / "model.pt"), device="cpu")
    for i in range(0, 1000, 100):
        atoms = Atoms(numbers=ref["nuclear_charges"], positions=ref["coords"][i])
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        assert energy == pytest.approx(float(rows[i]["energy_pred_eV"]), abs=2e-3)
        assert float(np.abs(forces - f_ref[i]).mean()) == pytest.approx(float(rows[i]["forces_mae_eV_A"]),
                                                                      rel=1e-3, abs=1e-5)


def test_shipped_rmd17_files_are_the_published_ones():
    """``molequi.resources`` finds both files, byte for byte the ones whose sha256 ORIGIN.md records."""
    import hashlib
    import re

    from molequi.errors import DatasetError
    from molequi.resources import rmd17_ethanol, shipped_path

    origin = shipped_path("rmd17", "ORIGIN.md").read_text()
    for split in ("train", "test"):
        path = rmd17_ethanol(split)
        (recorded,) = re.findall(rf"`{path.name}`\s*\|[^|]*\|\s*([0-9a-f]{{64}})", origin)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        rmd17_ethanol("valid")
    with pytest.raises(DatasetError, match="not in this installation"):
        shipped_path("rmd17", "rmd17_ethanol_valid_01.npz")
