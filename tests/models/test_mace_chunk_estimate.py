"""The "auto" edge-chunk policy counts what the message computation really keeps (issue 23 item 1):
``MACELayer.floats_per_edge`` of the neighbour-table paths (inference: ``_FusedPathSums``; training:
``forward_padded``) against the bytes that autograd saves, measured by a saved-tensors hook (distinct
storages, parameters left out) as the slope over the table's width k at a fixed number of atoms, so what is
per atom or per parameter drops out."""

from __future__ import annotations

import pytest
import torch

from molequi.models.mace import MACELayer
from molequi.nn.equivariant import ChannelIrreps

C = 8


def layer_of(irreps_in: str, irreps_out: str) -> MACELayer:
    torch.manual_seed(0)
    return MACELayer(ChannelIrreps.parse(irreps_in), ChannelIrreps.parse(irreps_out), max_ell=2, num_radial=8,
                     radial_mlp=[16, 16, 16], correlation=2, num_elements=2, avg_num_neighbors=10.0)


def saved_bytes(layer: MACELayer, n: int, k: int, envelope: bool, dtype) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for one call of the layer's messages (the
    inputs derived from the positions require gradients; in eval the parameters are frozen, as the
    calculators run it)."""
    for p in layer.parameters():
        p.requires_grad_(layer.training)
    g = torch.Generator().manual_seed(1)
    rows = n * k
    x = torch.randn(n, layer.conv.irreps_in.dim, C, generator=g, dtype=dtype, requires_grad=True)
    sh = torch.randn(rows, 9, generator=g, dtype=dtype, requires_grad=True)
    radial = torch.randn(rows, 8, generator=g, dtype=dtype, requires_grad=True)
    env = torch.rand(rows, 1, generator=g, dtype=dtype, requires_grad=True) if envelope else None
    sender = torch.randint(0, n, (rows,), generator=g)
    storages: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer._messages(x, sh, radial, env, sender, None, k)
    assert out.requires_grad
    return sum(storages.values())


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("envelope", [True, False])
@pytest.mark.parametrize("irreps", [("8x0e", "8x0e+8x1o"), ("8x0e+8x1o", "8x0e")])
def test_estimate_matches_saved_tensors(train, envelope, irreps):
    layer = layer_of(*irreps).train(train)
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        n, k1, k2 = 30, 8, 24
        measured = (saved_bytes(layer, n, k2, envelope, dtype) - saved_bytes(layer, n, k1, envelope, dtype)) / (
            n * (k2 - k1))
        size = torch.finfo(dtype).bits // 8
        estimate = layer.floats_per_edge(k1, envelope, size) * size
        assert abs(estimate / measured - 1) < 0.1, (estimate, measured)  # equal when written


def test_auto_chunks_follow_the_mode(monkeypatch):
    """A budget between the inference and the training estimate: eval runs the table in one piece, training
    in chunks of whole receiving atoms (one budget for both here)."""
    layer = layer_of("8x0e+8x1o", "8x0e")
    x = torch.zeros(1)
    k, rows = 16, 16 * 1000
    layer.eval()
    per_eval = layer.floats_per_edge(k, True, 4) * 4
    layer.train()
    per_train = layer.floats_per_edge(k, True, 4) * 4
    assert per_train > 2 * per_eval  # the fused inference path keeps no per-path tensor
    monkeypatch.setattr("molequi.models.mace.AUTO_CHUNK_BYTES", int(2 * per_eval * rows))
    monkeypatch.setattr("molequi.models.mace.AUTO_CHUNK_BYTES_INFERENCE", int(2 * per_eval * rows))
    assert layer.edges_per_chunk(rows, x, k, True) < rows
    layer.eval()
    assert layer.edges_per_chunk(rows, x, k, True) >= rows


def test_inference_on_the_table_uses_its_own_budget():
    from molequi.models import mace

    layer = layer_of("8x0e+8x1o", "8x0e").eval()
    x, k = torch.zeros(1), 16
    per = layer.floats_per_edge(k, True, 4) * 4
    assert layer.edges_per_chunk(10**8, x, k, True) == int(mace.AUTO_CHUNK_BYTES_INFERENCE // per)
    assert layer.edges_per_chunk(10**8, x, 0, True) == int(mace.AUTO_CHUNK_BYTES // (layer.floats_per_edge() * 4))
