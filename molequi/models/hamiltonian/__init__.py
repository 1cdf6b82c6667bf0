"""Models that predict Hamiltonian (Fock / Kohn-Sham) matrices in an atomic-orbital basis."""

from molequi.models.hamiltonian.qhnet import QHNet, QHNetConfig

__all__ = ["QHNet", "QHNetConfig"]
