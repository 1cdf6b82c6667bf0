"""Shared fixtures of the Hamiltonian tests: a tiny float64 hamiltonian_conv, a few PySCF-labelled waters."""

import numpy as np
import pytest
import torch

WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])


@pytest.fixture(scope="session")
def tiny_model():
    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        cfg = HamiltonianConvConfig(channels=6, num_layers=1, num_radial=8, radial_hidden=8)
        model = HamiltonianConv(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


@pytest.fixture(scope="session")
def water_labels():
    """Three PySCF PBE/def2-SVP labels of displaced waters (about 1 s each)."""
    from molequi.qc.pyscf_labels import pyscf_label

    rng = np.random.default_rng(0)
    return [
        pyscf_label([8, 1, 1], WATER + rng.normal(0, 0.03, (3, 3)), xc="pbe", basis="def2-svp", forces=False)
        for _ in range(3)
    ]
