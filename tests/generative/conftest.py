"""Shared fixtures of the generative tests."""

import pytest
import torch

from molequi.models.generative.edm import EDM
from molequi.models.generative.io import save_checkpoint


@pytest.fixture()
def tiny_edm_checkpoint(tmp_path):
    """``make(timesteps)`` -> path of a freshly saved, untrained one-layer EDM whose size histogram covers 3-5
    atoms (enough for the CLIs to sample)."""

    def make(timesteps: int = 10):
        torch.manual_seed(0)
        m = EDM(EDM.Config(hidden=8, layers=1, timesteps=timesteps))
        m.size_counts[3:6] = 1.0
        path = tmp_path / f"edm_T{timesteps}.pt"
        save_checkpoint(m, path)
        return path

    return make
