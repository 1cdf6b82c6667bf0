"""``molequi import mace|edm|geoldm|qhnet|eqgat_diff IN --out OUT.pt``: another program's model file as a molequi checkpoint."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "import",
        help="import a model written by another program (mace-torch, EDM, GeoLDM, QHNet, EQGAT-diff) as a molequi "
        "checkpoint",
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
    from molequi.cli.import_geoldm import register_kind as register_geoldm

    register_geoldm(kinds)
    from molequi.cli.import_fairchem import register_kind as register_fairchem

    register_fairchem(kinds)
    q = kinds.add_parser(
        "qhnet",
        help="a checkpoint of the reference QHNet code (divelab/AIRS OpenDFT/QHNet train_wH.py results.pt)",
        description="Import a QHNet checkpoint written by the reference code (torch.save of "
        "{'state_dict': ...} or of a state dict), read with weights_only. Sizes come from the weights; "
        "the blocks are def2-SVP (the reference's fixed expansion). Unsupported variants are refused.",
    )
    q.add_argument("checkpoint", metavar="CKPT", help="reference checkpoint (e.g. results.pt)")
    q.add_argument("--out", required=True, help="molequi checkpoint to write (e.g. qhnet.pt)")
    q.add_argument("--version", choices=["QHNet_w_bias", "QHNet", "QHNet_wo_bias"],
                   default="QHNet_w_bias",
                   help="which reference model wrote it: QHNet_w_bias (its MD17 config's default and the "
                   "published models) or QHNet (models/QHNet.py, with the upstream fix of issue 23); "
                   "QHNet_wo_bias is refused (molequi has no bias-free expansion)")
    q.add_argument("--elements", default="1,6,7,8,9",
                   help="comma list of atomic numbers the checkpoint is used for (each < the embedding rows)")
    q.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="precision of the written weights (default float64)")
    q.set_defaults(func=run_qhnet)
    g = kinds.add_parser(
        "eqgat_diff",
        help="a checkpoint of the reference EQGAT-diff code (jule-c/eqgat_diff best_mol_stab.ckpt)",
        description="Import an EQGAT-diff Lightning checkpoint (or a DenoisingEdgeNetwork state dict), read "
        "with weights_only: the denoiser's weights, the marginal priors and the size distribution. Sizes come "
        "from the weights; options molequi does not implement are refused with the list of them. Sampling "
        "uses molequi's tabulation of the cosine schedule (alpha_bar up to 0.4 % from the reference's).",
    )
    g.add_argument("checkpoint", metavar="CKPT", help="reference checkpoint (e.g. best_mol_stab.ckpt)")
    g.add_argument("--out", required=True, help="molequi checkpoint to write (e.g. eqgat_diff.pt)")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="precision of the written weights (default float64)")
    g.set_defaults(func=run_eqgat_diff)


def run_eqgat_diff(args) -> int:
    import torch

    from molequi.interop.eqgat_diff import import_eqgat_diff_checkpoint

    payload = import_eqgat_diff_checkpoint(args.checkpoint, args.out, dtype=getattr(torch, args.dtype))
    cfg = payload["config"]["model"]
    print(f"imported {args.checkpoint} -> {args.out}: EQGAT-diff {cfg['hidden']} scalar / {cfg['vectors']} "
          f"vector / {cfg['edge_hidden']} edge channels, {cfg['layers']} layers, cross products "
          f"{'on' if cfg['cross_product'] else 'off'}, T {cfg['timesteps']}, {len(cfg['elements'])} elements, "
          f"{args.dtype}")
    return 0


def run_qhnet(args) -> int:
    import torch

    from molequi.errors import InputError
    from molequi.interop.qhnet import import_qhnet_checkpoint

    try:
        elements = [int(z) for z in args.elements.split(",")]
    except ValueError:
        raise InputError(f"--elements '{args.elements}': expected atomic numbers like 1,6,8") from None
    payload = import_qhnet_checkpoint(args.checkpoint, args.out, version=args.version, elements=elements,
                                      dtype=getattr(torch, args.dtype))
    cfg = payload["config"]["model"]
    print(f"imported {args.checkpoint} -> {args.out}: QHNet ({args.version}) hidden {cfg['hidden_size']}, "
          f"{cfg['num_layers']} layers, cutoff {cfg['max_radius']} Å, {cfg['basis']}, elements {elements}, "
          f"{args.dtype}")
    return 0


def run(args) -> int:
    import torch

    from molequi.interop.mace import import_mace_checkpoint

    payload = import_mace_checkpoint(args.model_file, args.out, head=args.head, python=args.peer_python,
                                     dtype=getattr(torch, args.dtype))
    cfg = payload["config"]["model"]
    print(f"imported {args.model_file} -> {args.out}: MACE {cfg['hidden_irreps']}, {cfg['num_interactions']} "
          f"layers, r_max {cfg['r_max']} Å, {len(payload['elements'])} elements, {args.dtype}")
    return 0
