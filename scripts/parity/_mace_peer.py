"""Peer side of the MACE parity check; run by a python that has mace-torch (not molequi's venv).

    PY _mace_peer.py build SPEC.json OUT.model     a mace-torch model with random weights, saved as
                                                   mace_run_train saves one (torch.save of the module)
    PY _mace_peer.py eval MODEL STRUCTURES.xyz OUT.json [--head NAME] [--dtype float32|float64]
                                                   energy (eV), forces (eV/Å), stress (eV/Å^3, ASE Voigt)
                                                   of every frame with mace-torch's MACECalculator

SPEC is a JSON object of ScaleShiftMACE / MACE keyword arguments with irreps as strings, interaction class
names, plus "seed", "model" ("MACE" | "ScaleShiftMACE"), and optional "scale" / "shift" / "E0_range".
"""

from __future__ import annotations

import json
import sys

import mace  # noqa: F401  (must precede e3nn under recent torch)
import numpy as np
import torch


def build(spec_path: str, out: str) -> None:
    from e3nn import o3
    from mace import modules

    spec = json.load(open(spec_path))
    torch.set_default_dtype(getattr(torch, spec.pop("dtype", "float64")))  # the dtype the model is saved in
    seed = int(spec.pop("seed", 0))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    kind = spec.pop("model", "ScaleShiftMACE")
    heads = spec.get("heads", ["Default"])
    z = spec["atomic_numbers"]
    e0 = rng.uniform(-5.0, -1.0, size=(len(heads), len(z)))
    kwargs = dict(spec)
    kwargs["hidden_irreps"] = o3.Irreps(spec["hidden_irreps"])
    kwargs["MLP_irreps"] = o3.Irreps(spec["MLP_irreps"])
    kwargs["interaction_cls"] = modules.interaction_classes[spec["interaction_cls"]]
    kwargs["interaction_cls_first"] = modules.interaction_classes[spec["interaction_cls_first"]]
    kwargs["num_elements"] = len(z)
    kwargs["atomic_energies"] = e0 if len(heads) > 1 else e0[0]
    kwargs["gate"] = torch.nn.functional.silu
    if kind == "ScaleShiftMACE":
        scale = spec.get("scale", [float(x) for x in rng.uniform(0.5, 2.0, len(heads))])
        shift = spec.get("shift", [float(x) for x in rng.uniform(-0.5, 0.5, len(heads))])
        kwargs.pop("scale", None), kwargs.pop("shift", None)
        kwargs["atomic_inter_scale"] = scale if len(heads) > 1 else scale[0]
        kwargs["atomic_inter_shift"] = shift if len(heads) > 1 else shift[0]
        model = modules.ScaleShiftMACE(**kwargs)
    else:
        model = modules.MACE(**kwargs)
    # random weights everywhere: mace-torch initialises some blocks to small or structured values
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.numel() > 0:
                p.copy_(torch.randn_like(p) * (1.0 if p.dim() != 3 else 0.5))
    torch.save(model, out)


def evaluate(model_path: str, xyz: str, out: str, head: str | None, dtype: str = "float64") -> None:
    import ase.io
    from mace.calculators import MACECalculator

    kwargs = {"head": head} if head else {}
    calc = MACECalculator(model_paths=model_path, device="cpu", default_dtype=dtype, **kwargs)
    results = []
    for atoms in ase.io.read(xyz, ":"):
        atoms.calc = calc
        entry = {"energy": float(atoms.get_potential_energy())}
        try:  # mace-torch's Chebyshev basis has no derivative: energies only
            entry["forces"] = atoms.get_forces().tolist()
            if atoms.pbc.all():
                entry["stress"] = atoms.get_stress(voigt=True).tolist()
        except RuntimeError as exc:
            entry["no_derivatives"] = str(exc).splitlines()[0]
        results.append(entry)
    json.dump(results, open(out, "w"))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "build":
        build(*rest)
    elif cmd == "eval":
        options = {"--head": None, "--dtype": "float64"}
        for flag in options:
            if flag in rest:
                i = rest.index(flag)
                options[flag] = rest[i + 1]
                rest = rest[:i] + rest[i + 2:]
        evaluate(*rest, options["--head"], options["--dtype"])
    else:
        raise SystemExit(f"unknown command {cmd}")
