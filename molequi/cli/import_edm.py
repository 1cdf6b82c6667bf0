"""``molequi import edm RUN_DIR --out OUT.pt``: an EDM run folder (args.pickle + generative_model*.npy) as a
molequi checkpoint (the ``edm`` kind of the ``import`` verb; library: ``molequi.interop.edm``)."""

from __future__ import annotations

from molequi.errors import InputError


def register_kind(kinds) -> None:
    p = kinds.add_parser(
        "edm",
        help="an EDM run folder (e3_diffusion_for_molecules outputs/<exp_name>: args.pickle + weights)",
        description="Import a trained EDM (Hoogeboom et al. 2022) run folder: args.pickle is read with a "
        "restricted unpickler, the weights (generative_model_ema.npy, a torch.save file) with "
        "weights_only. Options molequi's EDM does not implement are refused with the list of them. The "
        "checkpoint samples with 'molequi generate' and gives EDM's likelihood (EDM.log_likelihood).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="EDM run folder holding args.pickle and the weights")
    p.add_argument("--out", required=True, help="molequi checkpoint to write (e.g. edm_qm9.pt)")
    p.add_argument("--weights", help="weights file (default: generative_model_ema.npy, else "
                   "generative_model.npy in RUN_DIR)")
    p.add_argument("--edm-code", metavar="PATH", help="EDM's source tree: the molecule-size histogram (log p(N), "
                   "the sizes generate draws) comes from its configs/datasets_config.py; without it the "
                   "checkpoint has no histogram")
    p.add_argument("--context-norm", action="append", default=[], metavar="PROP=MEAN,MAD",
                   help="conditioned models: EDM's normalisation of a property (mean and mean absolute "
                   "deviation on its training split, in the property's QM9 units); once per property")
    p.set_defaults(func=run)


def parse_context_norms(items: list[str]) -> dict[str, tuple[float, float]] | None:
    """['alpha=75.3,6.28'] -> {'alpha': (75.3, 6.28)}."""
    norms = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            mean, mad = (float(v) for v in values.split(","))
        except ValueError:
            raise InputError(f"--context-norm '{item}': expected PROP=MEAN,MAD (e.g. alpha=75.3,6.28)") from None
        norms[name.strip()] = (mean, mad)
    return norms or None


def run(args) -> int:
    from molequi.interop.edm import import_edm_run

    model = import_edm_run(args.run_dir, args.out, weights=args.weights, edm_code=args.edm_code,
                           context_norms=parse_context_norms(args.context_norm))
    cfg = model.config
    sizes = "size histogram from EDM's datasets_config" if float(model.size_counts.sum()) > 0 else \
        "no size histogram (give --edm-code to sample without explicit sizes)"
    cond = f", conditioned on {cfg.condition_on}" if cfg.condition_on else ""
    print(f"imported {args.run_dir} -> {args.out}: EDM nf {cfg.hidden}, {cfg.layers} layers, elements "
          f"{cfg.elements}, T {cfg.timesteps}{cond}; {sizes}")
    return 0
