"""Does a default molequi MACE describe the model a default ``mace_run_train`` builds?

    python scripts/parity/mace_defaults.py --peer-python ~/.cache/molequi/peers/mace/bin/python

The peer venv comes from ``bash scripts/bench/setup_peers.sh mace`` (mace-torch from PyPI). In it, the model
is built by mace-torch's own code path with only the required arguments given (``build_default_arg_parser``,
``check_args``, ``configure_model`` as ``mace_run_train`` calls them; the output scale is set to 0.7 and the
mean to 0.25 instead of being computed from a training set), saved as a ``*.model`` file and imported with
``molequi.interop.mace``. Prints one JSON object: the fields of the imported ``MACE.Config`` that differ from
``MACE.Config()``'s defaults, the imported scale and shift, and ``ok`` (exit 1 when not ok). Known and
accepted: ``hidden_irreps`` (mace-torch 128x0e+128x1o, molequi 64x0e+64x1o) and ``avg_num_neighbors``
(computed from the data by both; None in molequi's config).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PEER = r'''
import sys
import numpy as np, torch
from mace.tools import build_default_arg_parser, check_args
from mace.tools.model_script_utils import configure_model
from mace.tools.utils import AtomicNumberTable

torch.set_default_dtype(torch.float64)
args = build_default_arg_parser().parse_args(["--name", "defaults", "--train_file", "train.xyz"])
args, _ = check_args(args)
args.mean, args.std = 0.25, 0.7
args.compute_energy, args.compute_dipole, args.compute_polarizability = True, False, False  # as run_train
torch.manual_seed(0)
model, _ = configure_model(args, None, np.array([[-13.6, -1029.8, -2041.3]]), heads=["Default"],
                           z_table=AtomicNumberTable([1, 6, 8]))
torch.save(model, sys.argv[1])
print(args.model, args.interaction_first, args.scaling, args.apply_cutoff)
'''
ACCEPTED = {"hidden_irreps", "avg_num_neighbors"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", required=True, help="python of a venv with mace-torch installed")
    args = parser.parse_args(argv)
    from molequi.interop.mace import mace_payload
    from molequi.models.mace import MACE

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "defaults.model"
        run = subprocess.run([args.peer_python, "-c", PEER, str(path)], capture_output=True, text=True)
        if run.returncode:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        payload = mace_payload(path, python=args.peer_python)
    imported = payload["config"]["model"]
    defaults = dataclasses.asdict(MACE.Config())
    differ = {k: {"mace_run_train": imported.get(k), "molequi": v} for k, v in defaults.items()
              if k not in ("scaling", "shift") and imported.get(k) != v}
    stats = payload["statistics"]
    ok = set(differ) <= ACCEPTED and stats["energy_scale"] == 0.7 and stats["energy_shift"] == 0.0
    print(json.dumps({"peer_args": run.stdout.strip().splitlines()[-1].split(), "differ": differ, "scale": stats["energy_scale"],
                      "shift": stats["energy_shift"], "accepted": sorted(ACCEPTED), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
