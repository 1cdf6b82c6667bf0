"""Speed of molequi's ``eqgat_diff`` denoiser against the reference EQGAT-diff code, same weights, same batch.

    python scripts/bench/eqgat_diff_speed.py [--peer-code PATH] [--molecules 32] [--repeats 7] [--threads 1]

PATH is the reference repository (github.com/jule-c/eqgat_diff at 98dce2f; default $MOLEQUI_EQGAT_DIFF_CODE or
../shared/peers/eqgat_diff), imported with the shims of scripts/parity/eqgat_diff.py (torch_scatter through
torch_geometric.utils).

In one invocation, float32, ``--threads`` threads: the reference's ``DenoisingEdgeNetwork`` at its
``hparams.py`` size (sdim 256, vdim 64, edim 32, 7 layers, no cross products) with random weights, and
molequi's ``EQGATDiffusion`` holding the same weights (imported from the checkpoint the reference's Trainer
would write). Both run on one batch of ``--molecules`` QM9 molecules from data/qm9_geometries (bonds and
charges perceived by RDKit, noised at a random t per molecule):

- ``forward``: one denoiser call without gradients (a sampling step's network part);
- ``train``: denoiser call, the loss terms (the reference: its ``DiffusionLoss``; molequi:
  ``reference_loss_terms``, equal to it), weighted with its lc_* weights, backward and an Adam step.

Calls are interleaved (the order rotates every round) after one warm-up each; medians of process CPU and
wall seconds are kept (the machine is shared: both are recorded, with the load average). Before timing,
the outputs of both are checked to agree (float32: 1e-4 relative). Writes
bench_results/eqgat_diff_speed.json (``--out`` to change) with ``provenance``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (str(REPO), str(HERE), str(REPO / "scripts" / "parity")):
    if p not in sys.path:
        sys.path.insert(0, p)

import eqgat_diff as parity  # noqa: E402  (scripts/parity/eqgat_diff.py)
from _common import RESULTS, interleaved, machine, provenance  # noqa: E402

PEER_VERSION = "98dce2f"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer-code", default=None)
    ap.add_argument("--molecules", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "eqgat_diff_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from molequi.interop.eqgat_diff import REFERENCE_ELEMENTS, import_eqgat_diff
    from molequi.models.generative.categorical import reference_loss_terms

    peer = parity.import_peer(parity.peer_path(args.peer_code))
    hp = parity.hparams("paper", False)
    torch.set_default_dtype(torch.float64)  # the reference's buffers and the checkpoint in float64 first
    ref = parity.build_reference(peer, hp, len(REFERENCE_ELEMENTS), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best_mol_stab.ckpt"
        parity.write_lightning_checkpoint(peer, ref, hp, parity.priors(len(REFERENCE_ELEMENTS), args.seed), path)
        ours = import_eqgat_diff(path, dtype=torch.float32)
    torch.set_default_dtype(torch.float32)
    ref = ref.float()
    rng = np.random.default_rng(args.seed)
    indices = sorted(rng.choice(2000, size=args.molecules, replace=False).tolist())
    inp64 = parity.noised_batch(parity.molecules(indices), ours.config.elements, ours.config.charges, args.seed)
    inp = {k: (v.float() if v.is_floating_point() else v) for k, v in inp64.items()}
    B = args.molecules
    w = (inp["ab"] / (1 - inp["ab"])).clamp(0.05, 1.5)
    lc = (hp["lc_coords"], hp["lc_atoms"], hp["lc_charges"], hp["lc_bonds"])

    check_ref, check_ours = parity.reference_outputs(ref, inp), parity.molequi_outputs(ours, inp)
    agree = {k: float((check_ref[k] - check_ours[k]).abs().max() / check_ref[k].abs().max()) for k in check_ref}
    if max(agree.values()) > 1e-4:
        raise SystemExit(f"the two denoisers disagree in float32: {agree}")

    ref_loss = peer.loss(modalities=["coords", "atoms", "charges", "bonds"], param=["data"] * 4)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-6)
    opt_ours = torch.optim.Adam(ours.net.parameters(), lr=1e-6)
    truth = {"coords": inp["x0"], "atoms": inp["types"], "charges": inp["charges"], "bonds": inp["bonds"]}

    def ref_forward():
        with torch.no_grad():
            parity.reference_outputs(ref, inp)

    def ours_forward():
        parity.molequi_outputs(ours, inp)

    def ref_train():
        src, dst = inp["edge_index"]
        order = torch.argsort(dst * inp["x"].shape[0] + src)
        ei = inp["edge_index"][:, order]
        out = ref(x=torch.cat([inp["a"], inp["q"]], -1), t=inp["t"].clamp_min(1e-3).unsqueeze(-1), pos=inp["x"],
                  edge_index_local=None, edge_index_global=ei, edge_attr_global=inp["b"][order],
                  batch=inp["batch"], batch_edge_global=inp["batch"][ei[0]])
        K = inp["a"].shape[1]
        terms = ref_loss(true_data={**truth, "bonds": inp["bonds"][order]},
                         pred_data={"coords": out["coords_pred"], "atoms": out["atoms_pred"][:, :K],
                                    "charges": out["atoms_pred"][:, K:], "bonds": out["bonds_pred"]},
                         batch=inp["batch"], bond_aggregation_index=ei[1], weights=w)
        loss = sum(c * terms[k] for c, k in zip(lc, ("coords", "atoms", "charges", "bonds")))
        opt_ref.zero_grad()
        loss.backward()
        opt_ref.step()

    def ours_train():
        x0, la, lq, lb = ours.net(inp["x"], inp["a"], inp["q"], inp["b"], inp["t"], inp["batch"],
                                  inp["edge_index"], inp["rev"])
        terms = reference_loss_terms(x0, inp["x0"], la, inp["types"], lq, inp["charges"], lb, inp["bonds"],
                                     inp["batch"], inp["edge_index"], B)
        loss = sum(c * (w * t).sum() for c, t in zip(lc, terms))
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()

    forward = interleaved({"reference": ref_forward, "molequi": ours_forward}, args.repeats)
    train = interleaved({"reference": ref_train, "molequi": ours_train}, args.repeats)
    result = {
        "settings": {"molecules": B, "atoms": int(inp["x"].shape[0]), "edges": int(inp["edge_index"].shape[1]),
                     "qm9_indices": indices, "dtype": "float32", "threads": args.threads,
                     "repeats": args.repeats, "sizes": {k: hp[k] for k in ("sdim", "vdim", "edim", "num_layers")},
                     "cross_product": False, "parameters": sum(p.numel() for p in ours.net.parameters())},
        "float32_agreement_relative": agree,
        "forward": forward, "train": train,
        "reference_over_molequi": {
            f"{what}_{k}": section["reference"][f"median_{k}_s"] / section["molequi"][f"median_{k}_s"]
            for what, section in (("forward", forward), ("train", train)) for k in ("cpu", "wall")},
        "machine": machine(),
        "provenance": provenance("EQGAT-diff reference code (jule-c/eqgat_diff)", PEER_VERSION, True),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    tmp_out.replace(out)
    print(f"{'':10s} {'reference CPU/wall s':>22s} {'molequi CPU/wall s':>22s} {'ref/molequi CPU':>16s}")
    for what, section in (("forward", forward), ("train step", train)):
        r, m = section["reference"], section["molequi"]
        print(f"{what:10s} {r['median_cpu_s']:10.3f} / {r['median_wall_s']:9.3f} "
              f"{m['median_cpu_s']:10.3f} / {m['median_wall_s']:9.3f} "
              f"{r['median_cpu_s'] / m['median_cpu_s']:15.2f}x")
    print(f"{B} QM9 molecules, {result['settings']['atoms']} atoms, {result['settings']['edges']} edges; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
