"""Parity of molequi's imports with the reference implementations, in float64 (or float32).

    python scripts/parity/check.py mace --peer-python PY [--checkpoint FILE] [--head NAME] [--models ...]
    python scripts/parity/check.py edm --peer-code PATH [--checkpoint RUN_DIR]    (see scripts/parity/edm.py)
    python scripts/parity/check.py qhnet --peer-code PATH [--checkpoint CKPT]    (see scripts/parity/qhnet.py)
    python scripts/parity/check.py escn --peer-python PY [--checkpoint CKPT]     (see scripts/parity/escn.py)
    python scripts/parity/check.py scn --peer-python PY [--checkpoint CKPT]      (see scripts/parity/scn.py)
    python scripts/parity/check.py equiformer_v2 --peer-python PY [--checkpoint CKPT]  (model equiformer_v2 = fairchem's
        EquiformerV2, not molequi's variant equiformer_v2_molequi; scripts/parity/equiformer_v2.py)
    python scripts/parity/check.py eqgat_diff --peer-code PATH [--checkpoint CKPT]  (scripts/parity/eqgat_diff.py)
    python scripts/parity/check.py faenet --peer-python PY [--size default]  (scripts/parity/faenet.py)

``mace``: builds mace-torch models with random weights in the peer python (``PY``, a python with mace-torch,
e.g. the venv of ``scripts/bench/setup_peers.sh``), saves each as ``*.model`` the way mace_run_train does
(``torch.save`` of the module), imports it with ``molequi.interop.mace`` and evaluates both on

- rMD17 ethanol (3 frames of ``data/md17/rmd17_ethanol_train_01.npz``),
- a distorted Cu(111) slab with O adatoms (periodic, with stress),
- a box of 64 water molecules at 0.997 g/cm^3 (periodic, with stress),

with mace-torch's ``MACECalculator`` and molequi's ``MolequiCalculator``. Models (``--models``):

- ``small``:      ScaleShiftMACE, H/C/O, 16x0e+16x1o, max_ell 3, correlation 3, r_max 5, non-residual first
                  block (molecules only);
- ``small_f32``:  the same hyperparameters saved in float32, as many published files are (its U matrices
                  are the exact ones rounded; the import projects them onto the exact basis);
- ``foundation``: MACE-MP-size hyperparameters: 89 elements, 128x0e+128x1o, max_ell 3, correlation 3,
                  r_max 6, 2 layers, ScaleShiftMACE, non-residual first block;
- ``options``:    MACE (no scale/shift), two heads (the second imported), Gaussian radial basis, Agnesi
                  distance transform, ZBL pair repulsion, envelope on the tensor-product weights;
- ``soft``:       ScaleShiftMACE, 3 layers, 8x0e+8x1o+8x2e, Soft distance transform, ZBL;
- ``chebyshev``:  Chebyshev radial basis (of the Agnesi-transformed distance, so that T_n stays bounded):
                  energies only. mace-torch's ``torch.special.chebyshev_polynomial_t`` has no autograd
                  formula and returns a result without a gradient, so mace-torch's forces and stress for this
                  basis leave out the basis's derivative (they are not -dE/dx); molequi's are.

``--checkpoint FILE`` checks that file instead (on the structures whose elements it has). Prints one JSON
object {"peer", "max_abs_err_energy", "max_abs_err_forces", "max_abs_err_stress", "tolerance", "ok",
"relative", "models"} and exits 1 when a relative error (max abs error / max abs reference value, per
quantity) exceeds the tolerance (default 1e-6 in float64, 1e-4 with ``--dtype float32``, where both
programs evaluate in float32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PEER_SCRIPT = Path(__file__).with_name("_mace_peer.py")
ETHANOL = ROOT / "data" / "md17" / "rmd17_ethanol_train_01.npz"

BASE = {
    "num_bessel": 8, "num_polynomial_cutoff": 5, "max_ell": 3, "num_interactions": 2,
    "interaction_cls": "RealAgnosticResidualInteractionBlock", "MLP_irreps": "16x0e",
}
SPECS = {
    "small": dict(BASE, model="ScaleShiftMACE", seed=1, r_max=5.0, hidden_irreps="16x0e+16x1o",
                  interaction_cls_first="RealAgnosticInteractionBlock", avg_num_neighbors=7.3,
                  atomic_numbers=[1, 6, 8], correlation=3, radial_MLP=[32, 32, 32]),
    "small_f32": dict(BASE, model="ScaleShiftMACE", seed=6, r_max=5.0, hidden_irreps="16x0e+16x1o",
                      interaction_cls_first="RealAgnosticInteractionBlock", avg_num_neighbors=7.3,
                      atomic_numbers=[1, 6, 8], correlation=3, radial_MLP=[32, 32, 32], dtype="float32"),
    "foundation": dict(BASE, model="ScaleShiftMACE", seed=2, r_max=6.0, hidden_irreps="128x0e+128x1o",
                       interaction_cls_first="RealAgnosticInteractionBlock", avg_num_neighbors=61.96,
                       atomic_numbers=list(range(1, 90)), correlation=3, radial_MLP=[64, 64, 64]),
    "options": dict(BASE, model="MACE", seed=3, r_max=5.5, hidden_irreps="32x0e+32x1o+32x2e",
                    interaction_cls_first="RealAgnosticResidualInteractionBlock", avg_num_neighbors=20.0,
                    atomic_numbers=[1, 6, 8, 29], correlation=2, radial_MLP=[16, 16],
                    radial_type="gaussian", distance_transform="Agnesi", pair_repulsion=True,
                    apply_cutoff=False, heads=["pbe", "r2scan"], _head="r2scan"),
    "soft": dict(BASE, model="ScaleShiftMACE", seed=4, r_max=4.5, hidden_irreps="8x0e+8x1o+8x2e",
                 interaction_cls_first="RealAgnosticInteractionBlock", avg_num_neighbors=12.0,
                 num_interactions=3, atomic_numbers=[1, 6, 8, 29], correlation=2, radial_MLP=[16, 16, 16],
                 distance_transform="Soft", pair_repulsion=True),
    "chebyshev": dict(BASE, model="ScaleShiftMACE", seed=5, r_max=4.5, hidden_irreps="8x0e+8x1o",
                      interaction_cls_first="RealAgnosticInteractionBlock", avg_num_neighbors=12.0,
                      atomic_numbers=[1, 6, 8, 29], correlation=2, radial_MLP=[16], radial_type="chebyshev",
                      distance_transform="Agnesi", _energy_only=True),
}


def structures():
    """[(name, Atoms)]: ethanol frames, a distorted Cu/O slab and a water box (periodic)."""
    import ase
    from ase.build import add_adsorbate, fcc111

    out = []
    with np.load(ETHANOL) as d:
        for i in (0, 7, 13):
            out.append((f"ethanol[{i}]", ase.Atoms(numbers=d["nuclear_charges"], positions=d["coords"][i])))
    rng = np.random.default_rng(0)
    slab = fcc111("Cu", size=(3, 3, 3), vacuum=5.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    add_adsorbate(slab, "O", 1.2, "hcp")
    slab.positions += rng.normal(scale=0.08, size=slab.positions.shape)
    slab.cell = slab.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3)))
    slab.pbc = True
    out.append(("CuO slab", slab))
    n = 4  # 4^3 = 64 molecules
    side = (64 * 18.015 / 0.997 / 0.60221) ** (1 / 3)
    pos, numbers = [], []
    geom = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    for idx in np.ndindex(n, n, n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        centre = (np.array(idx) + 0.5) * side / n
        pos.extend(centre + geom @ q.T)
        numbers.extend([8, 1, 1])
    water = ase.Atoms(numbers=numbers, positions=np.array(pos) + rng.normal(scale=0.05, size=(192, 3)),
                      cell=np.eye(3) * side, pbc=True)
    water.wrap()
    out.append(("water box", water))
    return out


def run_peer(py: str, *args: str) -> None:
    proc = subprocess.run([py, str(PEER_SCRIPT), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"peer failed: {' '.join(args[:1])}\n{proc.stderr[-3000:]}")


def compare(name: str, model_file: Path, head: str | None, py: str, frames, work: Path,
            energy_only: bool = False, dtype: str = "float64") -> dict:
    import ase.io
    import torch

    from molequi.calculators.calculator import MolequiCalculator
    from molequi.interop.mace import export_mace, import_mace

    t0 = time.perf_counter()
    export = export_mace(model_file, python=py)
    model = import_mace(model_file, head=head, python=py, export=export)
    t_import = time.perf_counter() - t0
    elements = set(int(z) for z in export["hyper"]["atomic_numbers"])
    chosen = [(n, a) for n, a in frames if set(a.numbers.tolist()) <= elements]
    xyz = work / f"{name}.xyz"
    ase.io.write(xyz, [a for _, a in chosen], format="extxyz")
    # both sides evaluate the structures as written (extxyz rounds positions to 1e-8 Å)
    chosen = [(n, a) for (n, _), a in zip(chosen, ase.io.read(xyz, ":"))]
    ref_file = work / f"{name}.json"
    run_peer(py, "eval", str(model_file), str(xyz), str(ref_file), "--dtype", dtype,
             *(["--head", head] if head else []))
    ref = json.loads(ref_file.read_text())
    calc = MolequiCalculator(model, dtype=getattr(torch, dtype), skin=0.0)
    err = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    scale = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    per_structure = []
    for (sname, atoms), r in zip(chosen, ref):
        atoms = atoms.copy()
        atoms.calc = calc
        row = {"structure": sname, "atoms": len(atoms)}
        e = atoms.get_potential_energy()
        row["energy"] = abs(e - r["energy"])
        scale["energy"] = max(scale["energy"], abs(r["energy"]))
        if energy_only or "forces" not in r:  # the peer does not differentiate this model correctly
            row["forces"] = row["stress"] = "not compared: the peer's derivatives omit the radial basis"
            per_structure.append(row)
            err["energy"] = max(err["energy"], row["energy"])
            continue
        f = atoms.get_forces()
        row["forces"] = float(np.abs(f - np.array(r["forces"])).max())
        scale["forces"] = max(scale["forces"], float(np.abs(r["forces"]).max()))
        if "stress" in r:
            s = atoms.get_stress(voigt=True)
            row["stress"] = float(np.abs(s - np.array(r["stress"])).max())
            scale["stress"] = max(scale["stress"], float(np.abs(r["stress"]).max()))
        for key in err:
            if isinstance(row.get(key, 0.0), float):
                err[key] = max(err[key], row.get(key, 0.0))
        per_structure.append(row)
    return {"model": name, "file": str(model_file), "head": head, "import_s": round(t_import, 2),
            "max_abs_err": err, "max_abs_ref": scale, "structures": per_structure}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["edm"]:  # EDM's parity check lives in edm.py: check.py edm --peer-code PATH [...]
        sys.path.insert(0, str(Path(__file__).parent))
        from edm import main as edm_main

        return edm_main(argv[1:])
    if argv[:1] == ["geoldm"]:  # GeoLDM's: check.py geoldm --peer-code PATH [...] (scripts/parity/geoldm.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from geoldm import main as geoldm_main

        return geoldm_main(argv[1:])
    if argv[:1] == ["qhnet"]:  # QHNet's: check.py qhnet --peer-code PATH [...] (scripts/parity/qhnet.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from qhnet import main as qhnet_main

        return qhnet_main(argv[1:])
    if argv[:1] == ["escn"]:  # fairchem eSCN's: check.py escn --peer-python PY [...] (scripts/parity/escn.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from escn import main as escn_main

        return escn_main(argv[1:])
    if argv[:1] == ["scn"]:  # fairchem SCN's: check.py scn --peer-python PY [...] (scripts/parity/scn.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from scn import main as scn_main

        return scn_main(argv[1:])
    if argv[:1] == ["equiformer_v2"]:  # model equiformer_v2 vs fairchem's: check.py equiformer_v2 --peer-python PY
        sys.path.insert(0, str(Path(__file__).parent))
        from equiformer_v2 import main as equiformer_v2_main

        return equiformer_v2_main(argv[1:])
    if argv[:1] == ["faenet"]:  # the FAENet package's: check.py faenet --peer-python PY [...] (faenet.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from faenet import main as faenet_main

        return faenet_main(argv[1:])
    if argv[:1] == ["eqgat_diff"]:  # EQGAT-diff's: check.py eqgat_diff --peer-code PATH [...] (eqgat_diff.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from eqgat_diff import main as eqgat_diff_main

        return eqgat_diff_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=["mace", "edm"])
    parser.add_argument("--peer-python", required=True, help="python with mace-torch installed")
    parser.add_argument("--checkpoint", help="a mace-torch *.model file to check instead of random models")
    parser.add_argument("--head", help="head of --checkpoint to import (default: mace-torch's choice)")
    parser.add_argument("--models", default="small,small_f32,foundation,options,soft,chebyshev", help="comma list of " + ",".join(SPECS))
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="precision both programs evaluate in (default float64)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative tolerance (default 1e-6 in float64, 1e-4 in float32)")
    parser.add_argument("--workdir", help="keep the model files and results here")
    args = parser.parse_args(argv)
    if args.tolerance is None:
        args.tolerance = 1e-6 if args.dtype == "float64" else 1e-4

    frames = structures()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        if args.checkpoint:
            results.append(compare("checkpoint", Path(args.checkpoint), args.head, args.peer_python, frames, work,
                                   dtype=args.dtype))
        else:
            for name in args.models.split(","):
                spec = dict(SPECS[name])
                head = spec.pop("_head", None)
                energy_only = spec.pop("_energy_only", False)
                (work / f"{name}.json.spec").write_text(json.dumps(spec))
                model_file = work / f"{name}.model"
                run_peer(args.peer_python, "build", str(work / f"{name}.json.spec"), str(model_file))
                results.append(compare(name, model_file, head, args.peer_python, frames, work, energy_only,
                                       args.dtype))
    err = {k: max(r["max_abs_err"][k] for r in results) for k in ("energy", "forces", "stress")}
    rel = {k: max(r["max_abs_err"][k] / max(r["max_abs_ref"][k], 1e-300) for r in results)
           for k in ("energy", "forces", "stress")}
    ok = all(v <= args.tolerance for v in rel.values())
    print(json.dumps({"peer": "mace-torch", "dtype": args.dtype, "max_abs_err_energy": err["energy"],
                      "max_abs_err_forces": err["forces"], "max_abs_err_stress": err["stress"],
                      "tolerance": args.tolerance, "ok": ok, "relative": rel, "models": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
