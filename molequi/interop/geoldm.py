"""Import a trained GeoLDM (Xu et al. 2023, github.com/MinkaiXu/GeoLDM) run folder.

GeoLDM is built on EDM's code base and saves its runs as EDM does (``outputs/<exp_name>/``): ``args.pickle``
(the ``argparse.Namespace`` of ``main_qm9.py``, EDM's options plus ``train_diffusion``, ``trainable_ae``,
``ae_path``, ``latent_nf``, ``kl_weight``) and ``generative_model_ema.npy`` / ``generative_model.npy`` (the
``torch.save``d state dict of ``EnLatentDiffusion``, the autoencoder included under ``vae.``). This module
reuses EDM's import (``molequi.interop.edm``): the same restricted unpickler, the same option checks (options
molequi lacks raise ``UnsupportedGeoLDMOptionError`` naming them), the same ``weights_only`` load and the
same EGNN weight mapping, for three networks::

    dynamics.egnn.*                  -> dynamics.*                   (latent denoiser, latent_nf + time in)
    vae.encoder.egnn.*               -> autoencoder.encoder.*        (1 block, no time)
    vae.encoder.final_mlp.{0,2}      -> autoencoder.encoder_head.{0,2}
    vae.decoder.egnn.*               -> autoencoder.decoder.*        (n_layers blocks, no time)

GeoLDM's ``normalize_factors`` is read and ignored: its latent model never normalises (molequi's GeoLDM keeps
``norm_values`` [1, 1, 1]). An autoencoder-only run (``train_diffusion`` false) has no latent denoiser and is
refused; ``ae_path`` (where the first stage came from) is informational: its weights are in the state dict.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from molequi.errors import InputError
from molequi.interop.edm import (
    StateMapper,
    UnsupportedEDMOptionError,
    _count,
    _number,
    edm_config,
    find_weights,
    load_edm_state,
    read_edm_args,
    read_size_histogram,
)

# GeoLDM's options on top of EDM's, with the type each must have
_GEOLDM_OPTIONS = {
    "latent_nf": (_count, "a positive integer"), "kl_weight": (_number, "a finite number"),
    "trainable_ae": (lambda v: isinstance(v, bool), "true or false"),
    "train_diffusion": (lambda v: isinstance(v, bool), "true or false"),
    "ae_path": (lambda v: v is None or isinstance(v, str), "a folder or None"),
}


class UnsupportedGeoLDMOptionError(UnsupportedEDMOptionError):
    """A GeoLDM run uses an option (or a value of one) that molequi's GeoLDM does not implement."""


def geoldm_config(options: dict, *, size_histogram: dict[int, int] | None = None):
    """``GeoLDM.Config`` of a GeoLDM run's options (``read_edm_args``): EDM's checks (``edm_config``) for the
    shared options, then GeoLDM's own."""
    from molequi.models.generative.edm import EDM
    from molequi.models.generative.geoldm import GeoLDM

    wrong = [f"{k}={options[k]!r} ({what})" for k, (ok, what) in _GEOLDM_OPTIONS.items()
             if k in options and not ok(options[k])]
    if wrong:
        raise UnsupportedGeoLDMOptionError("this GeoLDM run's options have values of the wrong type: "
                                           + "; ".join(wrong) + " (is the args.pickle damaged?)")
    missing = [k for k in ("latent_nf", "train_diffusion") if k not in options]
    if missing:
        raise UnsupportedGeoLDMOptionError(f"the run's options lack {missing}: is this a GeoLDM args.pickle? "
                                           "(an EDM run imports with 'molequi import edm')")
    if not options["train_diffusion"]:
        raise UnsupportedGeoLDMOptionError(
            "train_diffusion=False: this is GeoLDM's autoencoder-only first stage (no latent denoiser, it cannot "
            "generate); import the latent diffusion run trained on it (--train_diffusion --ae_path THIS_RUN)")
    try:
        base = edm_config({k: v for k, v in options.items() if k not in _GEOLDM_OPTIONS},
                          size_histogram=size_histogram)
    except UnsupportedEDMOptionError as exc:
        raise UnsupportedGeoLDMOptionError(str(exc).replace("molequi's EDM", "molequi's GeoLDM")
                                           .replace("EDM run", "GeoLDM run")) from None
    shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(EDM.Config)}
    return GeoLDM.Config(**{**shared, "norm_values": [1.0, 1.0, 1.0]}, latent_nf=int(options["latent_nf"]),
                         kl_weight=float(options.get("kl_weight", 0.01)),
                         trainable_ae=bool(options.get("trainable_ae", False)), train_diffusion=True)


def geoldm_state_to_molequi(state: dict, model) -> dict:
    """Map an ``EnLatentDiffusion`` state dict onto ``model`` (a ``GeoLDM`` of ``geoldm_config``); every GeoLDM
    weight must be used and every molequi weight filled, with matching shapes (``CheckpointError`` otherwise)."""
    cfg = model.config
    m = StateMapper(state, model, "GeoLDM", keep=lambda k: not k.startswith(("dynamics.", "autoencoder.")),
                    used={"buffer", "gamma.gamma", "vae.buffer"})
    m.egnn("dynamics.egnn.", "dynamics.", cfg.layers, cfg.hidden, cfg.attention)
    m.egnn("vae.encoder.egnn.", "autoencoder.encoder.", 1, cfg.hidden, cfg.attention)
    for k in (0, 2):
        m.linear(f"vae.encoder.final_mlp.{k}", f"autoencoder.encoder_head.{k}")
    m.egnn("vae.decoder.egnn.", "autoencoder.decoder.", cfg.layers, cfg.hidden, cfg.attention)
    return m.result()


def build_geoldm_model(options: dict, state: dict, *, size_histogram: dict[int, int] | None = None):
    """A molequi ``GeoLDM`` carrying a GeoLDM run's architecture and weights (float32, eval mode)."""
    from molequi.models.generative.geoldm import GeoLDM

    model = GeoLDM(geoldm_config(options, size_histogram=size_histogram))
    model.load_state_dict(geoldm_state_to_molequi(state, model))
    if size_histogram:
        for n, count in size_histogram.items():
            model.size_counts[int(n)] = float(count)
    return model.eval()


def import_geoldm_run(run_dir: str | Path, out: str | Path, *, weights: str | Path | None = None,
                      geoldm_code: str | Path | None = None):
    """Read a GeoLDM run folder and write it as a molequi checkpoint ``out``; returns the model.

    geoldm_code  GeoLDM's source tree: the size histogram comes from its ``configs/datasets_config.py``
                 (parsed, never executed); without it the checkpoint has no histogram (sampling needs sizes)
    """
    from molequi.models.generative.io import save_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder", hint="give a GeoLDM run folder, outputs/<exp_name>")
    options = read_edm_args(run_dir / "args.pickle")
    geoldm_config(options)  # refuse unsupported options before touching the weights
    if options.get("conditioning"):
        raise UnsupportedGeoLDMOptionError(
            f"conditioning={options['conditioning']}: importing conditioned GeoLDM runs is not implemented "
            "(their property normalisation is not in the run folder)")
    state = load_edm_state(find_weights(run_dir, weights))
    hist = None
    if geoldm_code is not None:
        hist = read_size_histogram(geoldm_code, options.get("dataset", "qm9"), bool(options.get("remove_h", False)))
    model = build_geoldm_model(options, state, size_histogram=hist)
    save_checkpoint(model, out)
    return model


__all__ = ["geoldm_config", "geoldm_state_to_molequi", "build_geoldm_model", "import_geoldm_run",
           "UnsupportedGeoLDMOptionError"]
