"""Parity of molequi's EquiformerV2 (``model.name: equiformer_v2``, alias ``equiformer_v2_fairchem``; not the
EquiformerV2-style variant ``equiformer_v2_molequi``) and its fairchem import with fairchem-core 1.10.0's EquiformerV2 (``EquiformerV2Backbone`` + ``EqV2ScalarHead`` + ``EqV2VectorHead``).

    python scripts/parity/check.py equiformer_v2 --peer-python PY [--checkpoint CKPT] [--size tiny|tiny_rms|oc20]

``PY`` is a python with fairchem-core (``bash scripts/bench/setup_peers.sh fairchem``). Without ``--checkpoint`` the
peer (``_equiformer_v2_peer.py``) builds fairchem's model with random weights (seeded; every parameter fairchem
starts at a constant moved away from it) and saves it as fairchem's trainer saves a HydraModel
(``module.backbone.*``, ``module.output_heads.{energy,forces}.*``; config ``{"model": {"name": "hydra", ...}}``).
molequi imports the file (``molequi.interop.fairchem``); both evaluate energies and forces in float64, eval mode,
on the shipped real OC20 frames (``data/oc20/oc20_real.extxyz``), each with its own graph (the check requires the
same edges in the same order) and the same random edge-frame rolls (``torch.rand`` from the same seed). Every
block's output is compared too (``layer_rel_err``).

Sizes: ``tiny`` (test; ``layer_norm_sh``, grid-MLP FFN, lmax 3 > mmax 2: the rescaled rotations and grids; the
checkpoint has an EMA, checked as ``import --ema`` against fairchem's ``ExponentialMovingAverage.copy_to()``),
``tiny_rms`` (``rms_norm_sh``, separable-S2 FFN, fairchem's own grid sizes), ``tiny_plain`` (fairchem's one-class
``equiformer_v2`` model and checkpoint layout), ``oc20`` (fairchem's OC20 S2EF All
configuration ``configs/s2ef/all/equiformer_v2/equiformer_v2_N@8_L@4_M@2_31M.yml``, 31M parameters).

The comparison is ``escn.py``'s ``run`` (same JSON contract: ``ok``, ``relative``, ``max_abs_err_*``,
``structures`` with per-frame forward CPU / wall seconds of each side and per-block errors); exits 1 when a
relative error (max abs error / max abs reference value, per quantity) exceeds the tolerance (default 1e-5) or
the graphs differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from escn import run_and_report  # noqa: E402

PEER = Path(__file__).with_name("_equiformer_v2_peer.py")

_TINY = {"num_layers": 2, "lmax_list": [3], "mmax_list": [2], "sphere_channels": 8, "attn_hidden_channels": 8,
         "num_heads": 2, "attn_alpha_channels": 4, "attn_value_channels": 4, "ffn_hidden_channels": 8,
         "edge_channels": 8, "max_radius": 6.0, "max_neighbors": 12, "alpha_drop": 0.1, "drop_path_rate": 0.1,
         "weight_init": "uniform", "use_pbc": True, "regress_forces": True, "otf_graph": True}
SIZES = {
    "tiny": {**_TINY, "norm_type": "layer_norm_sh", "use_grid_mlp": True, "grid_resolution": 10, "_ema": True},
    "tiny_rms": {**_TINY, "norm_type": "rms_norm_sh", "use_grid_mlp": False, "grid_resolution": None},
    # fairchem's one-class (deprecated) equiformer_v2 model, saved under its own names
    "tiny_plain": {**_TINY, "norm_type": "layer_norm_sh", "use_grid_mlp": True, "grid_resolution": 10,
                   "_layout": "plain"},
    # configs/s2ef/all/equiformer_v2/equiformer_v2_N@8_L@4_M@2_31M.yml (fairchem-core 1.x)
    "oc20": {"use_pbc": True, "regress_forces": True, "otf_graph": True, "max_neighbors": 20, "max_radius": 12.0,
             "max_num_elements": 90, "num_layers": 8, "sphere_channels": 128, "attn_hidden_channels": 64,
             "num_heads": 8, "attn_alpha_channels": 64, "attn_value_channels": 16, "ffn_hidden_channels": 128,
             "norm_type": "layer_norm_sh", "lmax_list": [4], "mmax_list": [2], "grid_resolution": 18,
             "num_sphere_samples": 128, "edge_channels": 128, "use_atom_edge_embedding": True,
             "distance_function": "gaussian", "num_distance_basis": 512, "attn_activation": "silu",
             "use_s2_act_attn": False, "ffn_activation": "silu", "use_gate_act": False, "use_grid_mlp": True,
             "alpha_drop": 0.1, "drop_path_rate": 0.1, "proj_drop": 0.0, "weight_init": "uniform"},
}


def build_argparser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", required=True, help="python with fairchem-core (setup_peers.sh fairchem)")
    parser.add_argument("--checkpoint", help="a fairchem EquiformerV2 checkpoint to check (default: random weights)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="sizes of the random model (tiny / tiny_rms: tests; oc20: the OC20 S2EF All 31M config)")
    parser.add_argument("--frames", default="0,1,18,36",
                        help="comma list of frames of data/oc20/oc20_real.extxyz (0..36), or 'all'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    parser.add_argument("--workdir", help="keep the checkpoint, graphs and results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    return run_and_report(args, hydra="_layout" not in SIZES.get(args.size, {}), peer=PEER, sizes=SIZES,
                          model_name="equiformer_v2")


if __name__ == "__main__":
    sys.exit(main())
