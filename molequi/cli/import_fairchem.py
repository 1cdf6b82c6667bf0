"""``molequi import fairchem CKPT --out OUT.pt``: a fairchem-core trainer checkpoint of eSCN, SCN or EquiformerV2 as a molequi
checkpoint (the ``fairchem`` kind of the ``import`` verb; library: ``molequi.interop.fairchem``)."""

from __future__ import annotations


def register_kind(kinds) -> None:
    p = kinds.add_parser(
        "fairchem",
        help="a fairchem-core checkpoint of eSCN, SCN or EquiformerV2 (checkpoint.pt / best_checkpoint.pt of fairchem's "
        "trainer; the model class or a HydraModel with its backbone)",
        description="Import a fairchem-core (1.x) trainer checkpoint of eSCN or EquiformerV2. The pickle is scanned before "
        "loading and anything but tensors and plain values is refused (naming the global); the file is then "
        "read with weights_only. eSCN saved as fairchem's eSCN class or as a HydraModel (escn_backbone + energy and "
        "force heads) is read, and EquiformerV2 (equiformer_v2, or a HydraModel of equiformer_v2_backbone with its "
        "energy and force heads; molequi model equiformer_v2) and SCN (scn) are read; other models and options molequi "
        "does not implement are refused by name. The model computes fairchem's model output; the trainer's label "
        "normalizers are printed, not applied.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="fairchem checkpoint (torch.save of the trainer state)")
    p.add_argument("--out", required=True, help="molequi checkpoint to write (e.g. escn.pt)")
    p.add_argument("--ema", action="store_true",
                   help="take the exponential-moving-average weights of a training checkpoint (ckpt['ema'], what "
                   "fairchem validates with) instead of its raw state_dict (what fairchem's OCPCalculator loads)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="precision of the written weights (default float64)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from molequi.interop.fairchem import import_fairchem_checkpoint

    payload = import_fairchem_checkpoint(args.checkpoint, args.out, dtype=getattr(torch, args.dtype), ema=args.ema)
    cfg = payload["config"]["model"]
    kind = {"escn": "eSCN", "scn": "SCN"}.get(cfg["name"], "EquiformerV2 (equiformer_v2)")
    print(f"imported {args.checkpoint} -> {args.out}: {kind} lmax {cfg['lmax']} mmax {cfg['mmax']}, "
          f"{cfg['num_layers']} layers, {cfg['sphere_channels']} sphere channels, cutoff {cfg['r_max']} Å, "
          f"{cfg['max_neighbors']} neighbours, {'EMA' if args.ema else 'raw'} weights, {args.dtype}; normalizers not applied: "
          f"{payload['fairchem_normalizers'] or 'none'}")
    return 0
