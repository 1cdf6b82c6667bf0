"""Parity of molequi's SCN (``model.name: scn``) and its fairchem import with fairchem-core 1.10.0's SCN
(``fairchem.core.models.scn.scn.SphericalChannelNetwork``).

    python scripts/parity/check.py scn --peer-python PY [--checkpoint CKPT] [--size tiny|oc20] [--frames ...]

``PY`` is a python with fairchem-core (``bash scripts/bench/setup_peers.sh fairchem``). Without ``--checkpoint`` the
peer (``_scn_peer.py``) builds fairchem's SCN with random weights (seeded) and saves it as fairchem's trainer does
(``module.``-prefixed state dict, ``config: {"model": {"name": "scn", ...}}``); molequi imports the file
(``molequi import fairchem``); both evaluate energies and forces in float64 on the shipped real OC20 frames, each
with its own graph (the check requires the same edges in the same order) and the same random edge-frame rolls.
Every interaction block's output is compared too (``layer_rel_err``).

Sizes: ``tiny`` (test: lmax 5 with a second resolution at lmax 4 for neighbours of rank >= 12, 2 bands, 4 taps,
16 neighbours, 8 sphere channels reduced to 6 for the messages, linear maps x3 so that the SiLUs and random frames matter), ``oc20`` (fairchem's OC20 S2EF All+MD
``configs/s2ef/all/scn/scn-all-md.yml``: 16 interactions, lmax 6, 1024 hidden channels, 40 neighbours, cutoff 8).

The comparison is ``escn.py``'s ``run`` (same JSON contract); exits 1 when a relative error exceeds the tolerance
(default 1e-5) or the graphs differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from escn import build_argparser as escn_argparser  # noqa: E402
from escn import run_and_report  # noqa: E402

PEER = Path(__file__).with_name("_scn_peer.py")

SIZES = {
    "tiny": {"num_interactions": 2, "lmax": 5, "mmax": 1, "num_resolutions": 2, "sphere_channels": 8,
             "sphere_channels_reduce": 6, "hidden_channels": 16, "num_taps": -1, "use_grid": True, "num_bands": 2,
             "num_sphere_samples": 16, "num_basis_functions": 8, "distance_function": "gaussian",
             "basis_width_scalar": 2.0, "distance_resolution": 0.25, "cutoff": 6.0, "max_num_neighbors": 16,
             "use_pbc": True, "regress_forces": True, "otf_graph": True, "_gain": 3.0},
    # configs/s2ef/all/scn/scn-all-md.yml (fairchem)
    "oc20": {"num_interactions": 16, "hidden_channels": 1024, "sphere_channels": 128, "sphere_channels_reduce": 128,
             "num_sphere_samples": 128, "num_basis_functions": 128, "distance_function": "gaussian",
             "show_timing_info": False, "max_num_neighbors": 40, "cutoff": 8.0, "lmax": 6, "num_bands": 2,
             "use_grid": True, "regress_forces": True, "use_pbc": True, "basis_width_scalar": 2.0,
             "otf_graph": True},
}


def build_argparser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """eSCN's options (``escn.build_argparser``) with SCN's sizes; no ``--hydra`` (fairchem 1.10 has no SCN
    backbone)."""
    parser = escn_argparser(parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    for action in parser._actions:
        if action.dest == "size":
            action.choices, action.help = sorted(SIZES), "sizes of the random model (tiny: tests; oc20: scn-all-md.yml)"
        elif action.dest == "checkpoint":
            action.help = "a fairchem SCN checkpoint to check (default: random weights)"
        elif action.dest == "hydra":
            action.help = argparse.SUPPRESS
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_argparser()
    args = parser.parse_args(argv)
    if args.hydra:
        parser.error("fairchem-core 1.10.0 has no SCN HydraModel backbone")
    return run_and_report(args, peer=PEER, sizes=SIZES, model_name="scn")


if __name__ == "__main__":
    sys.exit(main())
