"""Write ``tests/interop/data/mace_tiny.pt``: a tiny mace-torch model's export plus mace-torch's own outputs.

    python scripts/parity/make_mace_fixture.py --peer-python PY

The fixture lets the tests check an import against mace-torch's numbers without mace-torch installed:
it holds the plain-dict export of a random two-head ScaleShiftMACE (``molequi.interop.mace.export_mace``)
and the energies / forces / stress that mace-torch's ``MACECalculator`` computed for head "other" on a
water molecule and a periodic water cell, in float64. Loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "interop" / "data" / "mace_tiny.pt"
SPEC = {"model": "ScaleShiftMACE", "seed": 11, "r_max": 4.0, "num_bessel": 6, "num_polynomial_cutoff": 5,
        "max_ell": 2, "interaction_cls": "RealAgnosticResidualInteractionBlock",
        "interaction_cls_first": "RealAgnosticInteractionBlock", "num_interactions": 2,
        "hidden_irreps": "4x0e+4x1o", "MLP_irreps": "4x0e", "avg_num_neighbors": 3.0,
        "atomic_numbers": [1, 8], "correlation": 2, "radial_MLP": [8], "heads": ["default", "other"]}
HEAD = "other"


def main() -> int:
    import ase
    import ase.io
    import torch

    from molequi.interop.mace import export_mace

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", required=True)
    args = parser.parse_args()
    peer = Path(__file__).with_name("_mace_peer.py")
    rng = np.random.default_rng(5)
    water = ase.Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    cell = ase.Atoms("OH2OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0],
                                          [2.0, 2.1, 1.9], [2.9, 2.3, 1.9], [1.8, 2.9, 2.3]],
                     cell=np.diag([3.9, 4.1, 3.8]) + rng.normal(scale=0.05, size=(3, 3)), pbc=True)
    cell.positions += rng.normal(scale=0.05, size=(6, 3))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "spec.json").write_text(json.dumps(SPEC))
        model = tmp / "tiny.model"
        subprocess.run([args.peer_python, str(peer), "build", str(tmp / "spec.json"), str(model)], check=True)
        ase.io.write(tmp / "s.xyz", [water, cell], format="extxyz")
        subprocess.run([args.peer_python, str(peer), "eval", str(model), str(tmp / "s.xyz"), str(tmp / "r.json"),
                        "--head", HEAD], check=True)
        ref = json.loads((tmp / "r.json").read_text())
        water, cell = ase.io.read(tmp / "s.xyz", ":")  # as mace-torch saw them (rounded to 1e-8 Å)
        export = export_mace(model, python=args.peer_python)
    export.pop("source"), export.pop("origin")
    structures = [{"numbers": torch.tensor(a.numbers), "positions": torch.tensor(a.positions),
                   "cell": torch.tensor(np.array(a.cell)), "pbc": bool(a.pbc.all())} for a in (water, cell)]
    reference = [{k: torch.tensor(v, dtype=torch.float64) for k, v in r.items()} for r in ref]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"export": export, "head": HEAD, "structures": structures, "reference": reference}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
