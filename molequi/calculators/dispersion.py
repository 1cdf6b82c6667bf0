"""DFT-D3 dispersion added to a model's energies, forces and stress (``dispersion: d3bj``), as MACE users add
it to MACE-MP-0 (``mace_mp(dispersion=True)``).

``D3(functional="pbe", damping="bj", three_body=False)`` evaluates Grimme's D3 correction of one structure:

- molecules with Becke-Johnson damping: ``tad-dftd3`` (PyTorch, forces by autograd), atom-resolved energies;
- periodic structures, and zero damping: ``dftd3`` (the Python API of s-dftd3, the reference
  implementation), whose lattice sums and zero damping ``tad-dftd3`` 0.7 does not do; forces from its
  analytic gradient, stress from its virial, atom energies from its pairwise energies. D3's real-space
  cut-offs are hard, so its periodic energy has tiny steps where a pair crosses one (forces are the analytic
  gradient between the steps).

The two back ends agree to ~1e-12 Ha on molecules (``tests/calculators/test_dispersion.py``). Defaults are
those of the DFT-D3 program, ASE's ``DFTD3`` and mace-torch's ``TorchDFTD3Calculator``: two-body only
(``three_body=True`` adds the Axilrod-Teller-Muto term with s9 = 1), the functional's published parameters
(``tad_dftd3.param.get_functional_params`` / s-dftd3's parameter table, the same data base).

Units: eV, eV/Å, eV/Å^3 (ASE's Voigt order) in and out; both libraries work in Bohr and Hartree inside.

Training uses the same object: ``molequi.train`` subtracts the correction from the labels
(``data.dispersion``) and the checkpoint records it, so ``MolequiCalculator.from_checkpoint`` adds it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.units import Bohr, Hartree

from molequi.errors import ConfigError, InputError

#: ``dispersion`` method names -> damping variant
METHODS = {"d3bj": "bj", "d3zero": "zero"}


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"the D3 dispersion correction needs the {package!r} package",
                         hint=f"pip install {package} (or molequi[d3])") from exc


@dataclass(frozen=True)
class D3:
    """Grimme's D3 correction for ``functional`` with ``damping`` "bj" (Becke-Johnson) or "zero"."""

    functional: str = "pbe"
    damping: str = "bj"
    three_body: bool = False

    def __post_init__(self):
        if self.damping not in ("bj", "zero"):
            raise ConfigError(f"D3 damping must be 'bj' or 'zero', got {self.damping!r}")
        self._params()  # an unknown functional is an error now, not at the first structure

    @classmethod
    def from_spec(cls, spec) -> D3 | None:
        """``None``, a ``D3``, a method name (``"d3bj"``) or a dict ``{method, functional, three_body}``."""
        if spec is None or isinstance(spec, D3):
            return spec
        if isinstance(spec, str):
            spec = {"method": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"dispersion must be null, a method name or a mapping, got {spec!r}")
        unknown = set(spec) - {"method", "functional", "three_body"}
        if unknown:
            raise ConfigError(f"dispersion: unknown keys {sorted(unknown)}; valid: method, functional, "
                              "three_body")
        method = spec.get("method", "d3bj")
        if method not in METHODS:
            raise ConfigError(f"dispersion method {method!r} is not one of {', '.join(METHODS)}")
        return cls(functional=str(spec.get("functional", "pbe")), damping=METHODS[method],
                   three_body=bool(spec.get("three_body", False)))

    def to_spec(self) -> dict:
        method = next(k for k, v in METHODS.items() if v == self.damping)
        return {"method": method, "functional": self.functional, "three_body": self.three_body}

    # ------------------------------------------------------------------ evaluation
    def _params(self):
        import torch

        param = _need("tad_dftd3.param", "tad-dftd3")
        try:
            p = param.get_functional_params(self.functional, self.damping, dtype=torch.float64)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"no D3({self.damping}) parameters for functional {self.functional!r}: "
                              f"{exc}") from None
        p["s9"] = torch.tensor(1.0 if self.three_body else 0.0, dtype=torch.float64)
        return p

    def __call__(self, atoms, stress: bool = True) -> dict:
        """``energy`` (eV), ``energies`` (n,), ``forces`` (n, 3) and, for periodic structures with
        ``stress``, ``stress`` (Voigt, eV/Å^3) of the D3 correction of ``atoms``."""
        if np.any(atoms.pbc) or self.damping != "bj":
            return self._s_dftd3(atoms, stress)
        return self._molecule(atoms)

    def _molecule(self, atoms) -> dict:
        import torch

        d3 = _need("tad_dftd3", "tad-dftd3")
        numbers = torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.long)
        pos = torch.tensor(np.asarray(atoms.positions, dtype=np.float64) / Bohr, requires_grad=True)
        with torch.enable_grad():
            energies = d3.dftd3(numbers, pos, self._params())
            (grad,) = torch.autograd.grad(energies.sum(), pos)
        energies = energies.detach().numpy() * Hartree
        return {"energy": float(energies.sum()), "energies": energies,
                "forces": -grad.numpy() * (Hartree / Bohr)}

    def _s_dftd3(self, atoms, stress: bool) -> dict:
        iface = _need("dftd3.interface", "dftd3")
        periodic = bool(np.any(atoms.pbc))
        if periodic and abs(np.linalg.det(atoms.cell[:])) < 1e-12:
            raise InputError("a periodic structure needs a full-rank cell for the D3 lattice sums",
                             hint="set the cell, or pbc=False for a molecule")
        model = iface.DispersionModel(np.asarray(atoms.numbers), np.asarray(atoms.positions) / Bohr,
                                      np.asarray(atoms.cell[:]) / Bohr if periodic else None,
                                      np.asarray(atoms.pbc, dtype=bool) if periodic else None)
        if self.damping == "bj":
            param = iface.RationalDampingParam(method=self.functional, atm=self.three_body)
        else:
            param = iface.ZeroDampingParam(method=self.functional, atm=self.three_body)
        res = model.get_dispersion(param, grad=True)
        pairs = model.get_pairwise_dispersion(param)
        pair_energy = pairs["additive pairwise energy"] + pairs["non-additive pairwise energy"]
        energies = pair_energy.sum(1) * Hartree
        out = {"energy": float(res["energy"]) * Hartree, "energies": energies,
               "forces": -np.asarray(res["gradient"]) * (Hartree / Bohr)}
        if stress and periodic:
            virial = np.asarray(res["virial"]) * Hartree / atoms.get_volume()
            out["stress"] = virial.flat[[0, 4, 8, 5, 2, 1]].copy()
        return out


def add_dispersion(results: dict, d3: D3, atoms, stress: bool) -> dict:
    """``results`` (a calculator's) plus the D3 correction; a committee's members all get the same shift."""
    corr = d3(atoms, stress=stress)
    out = dict(results)
    for key in ("energy", "free_energy"):
        if key in out:
            out[key] = out[key] + corr["energy"]
    out["energies"] = out["energies"] + corr["energies"]
    out["forces"] = out["forces"] + corr["forces"]
    if "stress" in out and "stress" in corr:
        out["stress"] = out["stress"] + corr["stress"]
    if "committee_energy" in out:
        out["committee_energy"] = out["committee_energy"] + corr["energy"]
    out["dispersion_energy"] = corr["energy"]
    return out


__all__ = ["D3", "METHODS", "add_dispersion"]
