"""``molequi import geoldm RUN_DIR --out OUT.pt``: a GeoLDM run folder (args.pickle + generative_model*.npy) as a
molequi checkpoint (the ``geoldm`` kind of the ``import`` verb; library: ``molequi.interop.geoldm``)."""

from __future__ import annotations


def register_kind(kinds) -> None:
    p = kinds.add_parser(
        "geoldm",
        help="a GeoLDM run folder (MinkaiXu/GeoLDM outputs/<exp_name>: args.pickle + weights)",
        description="Import a trained GeoLDM (Xu et al. 2023) latent diffusion run folder: args.pickle is read "
        "with a restricted unpickler, the weights (generative_model_ema.npy, a torch.save file) with "
        "weights_only; autoencoder and latent denoiser both. Options molequi's GeoLDM does not implement are "
        "refused by name. The checkpoint samples with 'molequi generate' and gives GeoLDM's likelihood bound.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="GeoLDM run folder holding args.pickle and the weights")
    p.add_argument("--out", required=True, help="molequi checkpoint to write (e.g. geoldm_qm9.pt)")
    p.add_argument("--weights", help="weights file (default: generative_model_ema.npy, else "
                   "generative_model.npy in RUN_DIR)")
    p.add_argument("--geoldm-code", metavar="PATH", help="GeoLDM's source tree: the molecule-size histogram "
                   "(log p(N), the sizes generate draws) comes from its configs/datasets_config.py; without it "
                   "the checkpoint has no histogram")
    p.set_defaults(func=run)


def run(args) -> int:
    from molequi.interop.geoldm import import_geoldm_run

    model = import_geoldm_run(args.run_dir, args.out, weights=args.weights, geoldm_code=args.geoldm_code)
    cfg = model.config
    sizes = "size histogram from GeoLDM's datasets_config" if float(model.size_counts.sum()) > 0 else \
        "no size histogram (give --geoldm-code to sample without explicit sizes)"
    print(f"imported {args.run_dir} -> {args.out}: GeoLDM nf {cfg.hidden}, {cfg.layers} layers, latent_nf "
          f"{cfg.latent_nf}, trainable_ae {cfg.trainable_ae}, elements {cfg.elements}, T {cfg.timesteps}; {sizes}")
    return 0
