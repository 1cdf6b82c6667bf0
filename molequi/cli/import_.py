"""``molequi import mace IN_FILE --out OUT.pt``: turn another program's model file into a molequi checkpoint."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "import",
        help="import a model written by another program (mace-torch, EDM) as a molequi checkpoint",
        description="Read a foreign model file safely (in a separate process with that program installed) "
        "and write an ordinary molequi checkpoint that md, relax, predict, eval and train use.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    m = kinds.add_parser(
        "mace",
        help="a mace-torch *.model file (pickled MACE / ScaleShiftMACE, as mace_run_train writes)",
        description="Import a mace-torch *.model file. It is loaded by a python that has mace-torch "
        "(--peer-python, $MOLEQUI_MACE_PYTHON, or the venv of scripts/bench/setup_peers.sh), never in "
        "molequi's process. Options molequi does not implement are refused with the list of them.",
    )
    m.add_argument("model_file", metavar="IN_FILE", help="mace-torch model file (*.model)")
    m.add_argument("--out", required=True, help="molequi checkpoint to write (e.g. model.pt)")
    m.add_argument("--head", help="head of a multi-head model (default: the one mace-torch's calculator uses)")
    m.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="precision of the written weights (default float64)")
    m.add_argument("--peer-python", help="python with mace-torch installed")
    m.set_defaults(func=run)
    from molequi.cli.import_edm import register_kind as register_edm

    register_edm(kinds)


def run(args) -> int:
    import torch

    from molequi.interop.mace import import_mace_checkpoint

    payload = import_mace_checkpoint(args.model_file, args.out, head=args.head, python=args.peer_python,
                                     dtype=getattr(torch, args.dtype))
    cfg = payload["config"]["model"]
    print(f"imported {args.model_file} -> {args.out}: MACE {cfg['hidden_irreps']}, {cfg['num_interactions']} "
          f"layers, r_max {cfg['r_max']} Å, {len(payload['elements'])} elements, {args.dtype}")
    return 0
