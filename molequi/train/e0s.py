"""Per-element reference energies (E0s) and the output scale and shift of a new run, as ``mace_run_train``
chooses them (mace-torch 0.3.16: ``--E0s``, ``--scaling``, ``--model``).

``task.E0s`` (the ``energy_forces`` task)::

    fit             least squares E_s ~ sum_Z count_s(Z) E0[Z] over the training frames that have an energy
                    (``molequi.data.statistics.fit_e0s``: numpy's minimum-norm ``lstsq``, as mace-torch's);
                    every frame stays in training. molequi's default.
    average         mace-torch's ``compute_average_E0s`` (``--E0s average``): the same least squares, after
                    the single-atom frames tagged ``config_type=IsolatedAtom`` are removed from the data, as
                    mace-torch's ``load_from_xyz`` removes them from training.
    isolated_atoms  E0[Z] = the energy of the IsolatedAtom frame of element Z (MACE's convention for E0s in
                    the training file); those frames are removed from the data (every split).
    {Z: eV}         the given values (atomic numbers or symbols as keys).

An element of the training frames with no E0 is a ``MissingE0Error`` naming it.

The scale and shift of the per-atom readout (``E_i = E0[z_i] + scale * y_i + shift``) follow the model
config's ``scaling`` / ``shift`` when it has them (MACE): ``rms_forces`` = RMS of the training force
components (mace-torch's default ``rms_forces_scaling``), ``std`` = standard deviation of the per-atom energy
after E0s, ``none`` = 1; shift ``none`` = 0 (mace-torch's ``--model MACE``) or ``mean`` (``ScaleShiftMACE``).
Models without those fields keep std and mean.
"""

from __future__ import annotations

import dataclasses

from ase.data import atomic_numbers, chemical_symbols

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, DatasetError, MissingE0Error

ISOLATED_ATOM = "IsolatedAtom"  # mace-torch's config_type of the frames that carry E0s


def is_isolated_atom(record) -> bool:
    """A single-atom frame with ``config_type`` IsolatedAtom (mace-torch's ``load_from_xyz`` test)."""
    return getattr(record, "config_type", None) == ISOLATED_ATOM and int(record[K.NUMBERS].numel()) == 1


def _in_memory(records) -> bool:
    return isinstance(records, (list, tuple))


def remove_isolated_atoms(splits: dict) -> tuple[dict, dict[int, float]]:
    """``splits`` without their IsolatedAtom frames, and those frames' energies {Z: eV}.

    Lazy datasets (LMDB) carry no ``config_type`` and are returned as they are. An IsolatedAtom frame without
    an energy, or two of one element with different energies, is a ``DatasetError``.
    """
    out, energies = {}, {}
    for name, records in splits.items():
        if records is None or not _in_memory(records):
            out[name] = records
            continue
        kept = []
        for i, record in enumerate(records):
            if not is_isolated_atom(record):
                kept.append(record)
                continue
            z = int(record[K.NUMBERS].reshape(-1)[0])
            if K.ENERGY not in record:
                raise DatasetError(f"{name} frame {i}: config_type=IsolatedAtom ({chemical_symbols[z]}) has "
                                   "no energy; give it one or set task.E0s explicitly")
            e = float(record[K.ENERGY].reshape(-1)[0])
            if z in energies and abs(energies[z] - e) > 1e-9 * max(1.0, abs(e)):
                raise DatasetError(f"{name} frame {i}: a second IsolatedAtom frame of {chemical_symbols[z]} "
                                   f"with energy {e} eV (the first had {energies[z]} eV); keep one")
            energies[z] = e
        out[name] = kept
    return out, energies


def _as_numbers(values: dict) -> dict[int, float]:
    out = {}
    for key, value in values.items():
        if isinstance(key, str) and not key.strip().lstrip("-").isdigit():
            if key not in atomic_numbers:
                raise ConfigError(f"task.E0s: '{key}' is not a chemical symbol or an atomic number")
            z = atomic_numbers[key]
        else:
            z = int(key)
        if not 1 <= z < len(chemical_symbols):
            raise ConfigError(f"task.E0s: atomic number {z} is not 1..{len(chemical_symbols) - 1}")
        out[z] = float(value)
    return out


def check_e0s(e0s: dict[int, float], elements, what: str) -> dict[int, float]:
    """``e0s`` restricted to ``elements``; ``MissingE0Error`` naming the elements that have none."""
    missing = [int(z) for z in elements if int(z) not in e0s]
    if missing:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
        raise MissingE0Error(f"task.E0s {what}: no E0 for {names}, which the training frames contain; "
                             "add them (an IsolatedAtom frame each, or task.E0s: {Z: eV, ...}) or use "
                             "task.E0s: fit")
    return {int(z): float(e0s[int(z)]) for z in elements}


def prepare_e0s(setting, splits: dict) -> tuple[dict, dict[int, float] | None]:
    """(splits, E0s given up front) for ``task.E0s`` = ``setting``: IsolatedAtom frames removed for average
    and isolated_atoms; the E0s are those frames' energies (isolated_atoms) or the mapping; None means
    "fit by least squares on the training statistics" (fit, average)."""
    if isinstance(setting, dict):
        return splits, _as_numbers(setting)
    if setting in ("fit", None):
        return splits, None
    splits, isolated = remove_isolated_atoms(splits)
    if setting == "average":
        return splits, None
    if setting == "isolated_atoms":
        if not isolated:
            raise MissingE0Error("task.E0s isolated_atoms: the data hold no single-atom frame with "
                                 "config_type=IsolatedAtom (MACE's convention); add one per element or give "
                                 "task.E0s: {Z: eV, ...}")
        return splits, isolated
    raise ConfigError(f"task.E0s: unknown setting {setting!r} (fit, average, isolated_atoms or {{Z: eV}})")


def output_scaling(statistics: Statistics, scaling: str = "std", shift: str = "mean") -> Statistics:
    """``statistics`` with ``energy_scale`` / ``energy_shift`` set as ``scaling`` / ``shift`` say (see the
    module docstring); ``compute_statistics`` gives std and mean, and the RMS force in ``force_rms``."""
    scale = {"std": statistics.energy_scale, "rms_forces": statistics.force_rms, "none": 1.0}.get(scaling)
    offset = {"mean": statistics.energy_shift, "none": 0.0}.get(shift)
    if scale is None or offset is None:
        raise ConfigError(f"model scaling {scaling!r} / shift {shift!r}: expected rms_forces | std | none "
                          "and none | mean")
    return dataclasses.replace(statistics, energy_scale=float(scale), energy_shift=float(offset))


__all__ = ["ISOLATED_ATOM", "is_isolated_atom", "remove_isolated_atoms", "prepare_e0s", "check_e0s",
           "output_scaling"]
