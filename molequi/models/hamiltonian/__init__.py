"""Models that predict Hamiltonian (Fock / Kohn-Sham) matrices in an atomic-orbital basis.

``qhnet`` is QHNet as its reference code defines it (``molequi.models.hamiltonian.qhnet``);
``hamiltonian_conv`` the faster QHNet-style model that was registered as ``qhnet`` before
(``molequi.models.hamiltonian.conv``). ``legacy_qhnet_section`` maps a model section (a config or an old
checkpoint's) that says ``qhnet`` but carries the old model's fields onto ``hamiltonian_conv``.
"""

from __future__ import annotations

import warnings

# fields only the old model (now hamiltonian_conv) had: a "qhnet" section holding any of them is old
LEGACY_QHNET_FIELDS = frozenset({"channels", "radial_hidden", "r_max", "avg_neighbors"})


def legacy_qhnet_section(raw: dict) -> dict:
    """``raw`` with name ``hamiltonian_conv`` when it says ``qhnet`` with the old model's fields (a warning
    says so); otherwise ``raw`` unchanged."""
    if raw.get("name") != "qhnet" or not LEGACY_QHNET_FIELDS & set(raw):
        return raw
    warnings.warn("model 'qhnet' with fields of the model now named 'hamiltonian_conv' "
                  f"({sorted(LEGACY_QHNET_FIELDS & set(raw))}): read as 'hamiltonian_conv'; 'qhnet' is now "
                  "the reference QHNet architecture", stacklevel=2)
    return {**raw, "name": "hamiltonian_conv"}


def __getattr__(name):  # the model classes import e3nn: load them when asked for
    if name in ("QHNet", "QHNetConfig"):
        from molequi.models.hamiltonian import qhnet

        return getattr(qhnet, name)
    if name in ("HamiltonianConv", "HamiltonianConvConfig"):
        from molequi.models.hamiltonian import conv

        return getattr(conv, name)
    raise AttributeError(name)


__all__ = ["QHNet", "QHNetConfig", "HamiltonianConv", "HamiltonianConvConfig", "legacy_qhnet_section"]
