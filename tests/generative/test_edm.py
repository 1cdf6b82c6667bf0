"""EDM: E(3) equivariance of the denoiser, centred positions, the schedule's formula, unpadded edges."""

import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from molequi.errors import ConfigError, InputError, ModelError
from molequi.models.generative.edm import EDM
from molequi.models.generative.graph import fully_connected_edges, remove_mean, sizes_to_batch
from molequi.models.generative.schedules import NoiseSchedule, cosine_alphas2, polynomial_alphas2
from molequi.nn.scatter import scatter_sum
from molequi.testing import random_rotation


def tiny(**kw):
    return EDM(EDM.Config(hidden=16, layers=2, timesteps=20, **kw))


def test_fully_connected_edges_per_molecule():
    batch = sizes_to_batch(torch.tensor([3, 1, 2]))
    ei = fully_connected_edges(batch)
    assert ei.shape == (2, 3 * 2 + 0 + 2 * 1)
    pairs = set(map(tuple, ei.t().tolist()))
    assert pairs == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (4, 5), (5, 4)}


def test_denoiser_equivariant_float64():
    torch.manual_seed(0)
    model = tiny().double()
    sizes = torch.tensor([5, 3, 7])
    batch = sizes_to_batch(sizes)
    ei = fully_connected_edges(batch)
    x = remove_mean(torch.randn(15, 3, dtype=torch.float64), batch, 3)
    h = torch.randn(15, model.n_features, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ex, eh = model.dynamics(x, h, t, batch, ei)
    rng = np.random.default_rng(0)
    for reflection in (False, True):
        R = torch.as_tensor(random_rotation(rng, reflection=reflection))
        shift = torch.randn(3, 3, dtype=torch.float64)[batch]  # per-molecule translations
        ex2, eh2 = model.dynamics(x @ R.T + shift, h, t, batch, ei)
        assert torch.allclose(ex2, ex @ R.T, atol=1e-10, rtol=0)
        assert torch.allclose(eh2, eh, atol=1e-10, rtol=0)
    # permutation inside a molecule permutes the output
    perm = torch.cat([torch.tensor([4, 2, 0, 1, 3]), torch.arange(5, 15)])
    ex3, eh3 = model.dynamics(x[perm], h[perm], t, batch, ei)
    assert torch.allclose(ex3, ex[perm], atol=1e-10) and torch.allclose(eh3, eh[perm], atol=1e-10)


def test_positions_stay_centred():
    torch.manual_seed(1)
    model = tiny().double()
    model.size_counts[4] = 1.0
    model.size_counts[6] = 1.0
    for method in ("ancestral", "ddim"):
        sizes = torch.tensor([4, 6, 4])
        batch = sizes_to_batch(sizes)
        numbers, pos, b = model.sample_batch(sizes, steps=5, method=method)
        com = scatter_sum(pos, b, 3) / sizes.unsqueeze(-1)
        assert com.abs().max() < 1e-10 * max(1.0, float(pos.abs().max()))
        assert set(numbers.tolist()) <= {1, 6, 7, 8, 9}
    # the velocity the network returns is centred too
    ei = fully_connected_edges(batch)
    ex, _ = model.dynamics(torch.randn(14, 3).double(), torch.randn(14, model.n_features).double(),
                           torch.rand(3).double(), batch, ei)
    assert (scatter_sum(ex, batch, 3)).abs().max() < 1e-10


def test_polynomial_schedule_matches_formula():
    T, s = 1000, 1e-5
    a2 = polynomial_alphas2(T, s, 2.0)
    t = np.linspace(0, T + 1, T + 1) / (T + 1)
    f = (1 - t ** 2) ** 2
    # EDM clips step ratios below 0.001 only at the very end; elsewhere the formula holds exactly
    ratios = f[1:] / f[:-1]
    ok = np.concatenate([[True], np.cumprod(ratios >= 0.001) > 0])
    expected = (1 - 2 * s) * f + s
    assert np.allclose(a2[ok], expected[ok], rtol=1e-12, atol=1e-15)
    assert a2[0] == pytest.approx(1 - s, abs=1e-12) and a2[-1] == pytest.approx(s, rel=1e-3)
    sched = NoiseSchedule("polynomial_2", T, s)
    g = sched.gamma(torch.arange(T + 1), torch.float64).numpy()
    assert np.allclose(g, -np.log(a2 / (1 - a2)), rtol=1e-12)
    alpha, sigma = sched.alpha_sigma(torch.tensor([0, 500, 1000]), torch.float64)
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones(3, dtype=torch.float64))
    assert np.all(np.diff(a2) <= 0)  # monotone


def test_cosine_schedule_formula():
    T, s = 500, 0.008
    a = cosine_alphas2(T)
    t = np.arange(T + 1) / T
    f = np.cos(0.5 * math.pi * (t + s) / (1 + s)) ** 2
    assert np.allclose(a[:400], (f / f[0])[:400], rtol=1e-10)
    assert a[0] == 1.0 and np.all(np.diff(a) <= 0)


def test_training_loss_and_size_histogram():
    torch.manual_seed(0)
    model = tiny()
    from torch_geometric.data import Data

    recs = []
    for n in (3, 5):
        d = Data(numbers=torch.tensor([6] + [1] * (n - 1)), pos=torch.randn(n, 3))
        d.num_nodes = n
        recs.append(d)
    batch = Batch.from_data_list(recs)
    model.train()
    loss, logs = model.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"loss_x", "loss_h"}
    assert model.size_counts[3] == 1 and model.size_counts[5] == 1
    assert set(model.sample_sizes(50).tolist()) <= {3, 5}


def test_named_errors():
    with pytest.raises(ConfigError):
        EDM(EDM.Config(schedule="linear"))
    model = tiny()
    with pytest.raises(ModelError):
        model.sample(2)  # never trained: no size histogram
    with pytest.raises(InputError):
        model.time_grid(0)
    with pytest.raises(ModelError):
        model.encode(torch.tensor([17]), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), 1)


def test_split_egnn_layer_equals_egnn_layer():
    """EDM's feature update is molequi's EGNNLayer: the split evaluation gives the same numbers."""
    from molequi.models.egnn import EGNNLayer
    from molequi.models.generative.layers import EDMBlock

    torch.manual_seed(0)
    block = EDMBlock(12, edge_dim=3).double()
    plain = EGNNLayer(12, 3, update_coords=False, messages_agg="sum", attention=True).double()
    plain.load_state_dict(block.gcl.state_dict())
    batch = sizes_to_batch(torch.tensor([4, 6]))
    ei = fully_connected_edges(batch)
    h, x = torch.randn(10, 12, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    e = torch.randn(ei.shape[1], 3, dtype=torch.float64)
    assert torch.allclose(block.gcl(h, x, ei, edge_attr=e)[0], plain(h, x, ei, edge_attr=e)[0], atol=1e-12)
    assert isinstance(block.gcl, EGNNLayer)


def test_property_conditioning():
    from torch_geometric.data import Data

    torch.manual_seed(0)
    model = tiny(context_dim=1)
    recs = []
    for n, c in ((3, 0.5), (4, -1.0)):
        d = Data(numbers=torch.tensor([6] + [1] * (n - 1)), pos=torch.randn(n, 3), context=torch.tensor([[c]]))
        d.num_nodes = n
        recs.append(d)
    batch = Batch.from_data_list(recs)
    assert batch.context.shape == (2, 1)
    loss, _ = model.training_loss(batch)
    loss.backward()
    mols = model.sample(2, steps=3, context=torch.tensor([[0.5], [-1.0]]))
    assert [len(m.numbers) for m in mols] and all(len(m.numbers) in (3, 4) for m in mols)
    # the context changes the prediction
    b = sizes_to_batch(torch.tensor([3]))
    ei = fully_connected_edges(b)
    x, h = torch.randn(3, 3), torch.randn(3, model.n_features)
    e1 = model.dynamics(x, h, torch.tensor([0.5]), b, ei, torch.tensor([[0.0]]))[1]
    e2 = model.dynamics(x, h, torch.tensor([0.5]), b, ei, torch.tensor([[3.0]]))[1]
    assert not torch.allclose(e1, e2)
    with pytest.raises(ModelError):
        model.sample(1, steps=2)  # conditioned model without context


def test_sample_batch_is_the_plain_step_loop():
    """sample_batch (no_grad, retained heap) draws exactly what a hand-written loop of EDM.step draws from the
    same generator: speed work on the sampler must not change the samples."""
    from molequi.models.generative.graph import centred_gaussian

    torch.manual_seed(2)
    model = tiny().eval()
    sizes = torch.tensor([4, 6, 3])
    batch = sizes_to_batch(sizes)
    ei = fully_connected_edges(batch, 3)
    for method in ("ancestral", "ddim"):
        numbers, pos, _ = model.sample_batch(sizes, steps=7, method=method,
                                             generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        zx = centred_gaussian(batch, 3, generator=g)
        zh = torch.randn(13, model.n_features, generator=g)
        grid = model.time_grid(7)
        for t, s in zip(grid[:-1], grid[1:]):
            zx, zh = model.step(zx, zh, t, s, batch, ei, 3, method=method, generator=g)
        ref_numbers, ref_pos = model.decode(*model.final_prediction(zx, zh, batch, ei, 3))
        assert torch.equal(numbers, ref_numbers)
        assert (pos - ref_pos).abs().max() < 1e-6 and pos.abs().max() > 0.1


def test_ddim_eta_interpolates_to_the_ancestral_step():
    """Generalised DDIM: eta = 1 is the ancestral step (same mean and variance: with the same noise draws the
    two agree to rounding, float64), eta = 0 is deterministic, and the noise of 0 < eta < 1 scales with eta
    while the mean stays the DDPM posterior family's."""
    torch.manual_seed(3)
    model = tiny().double().eval()
    sizes = torch.tensor([4, 6])
    batch = sizes_to_batch(sizes)
    ei = fully_connected_edges(batch, 2)
    zx = remove_mean(torch.randn(10, 3, dtype=torch.float64), batch, 2)
    zh = torch.randn(10, model.n_features, dtype=torch.float64)

    def step(method, eta=0.0, seed=7, t=15, s=9):
        with torch.no_grad():
            return model.step(zx, zh, t, s, batch, ei, 2, method=method, eta=eta,
                              generator=torch.Generator().manual_seed(seed))

    for t, s in ((15, 9), (20, 0), (3, 2)):
        anc, one = step("ancestral", t=t, s=s), step("ddim", 1.0, t=t, s=s)
        assert (anc[0] - one[0]).abs().max() < 1e-12 and (anc[1] - one[1]).abs().max() < 1e-12
    det_a, det_b = step("ddim", 0.0, seed=1), step("ddim", 0.0, seed=2)
    assert torch.equal(det_a[0], det_b[0]) and torch.equal(det_a[1], det_b[1])
    # the noise added at eta is eta times the ancestral one; the deterministic part moves along eps only
    n1 = step("ddim", 1.0)[1] - step("ddim", 1.0, seed=8)[1]
    n_half = step("ddim", 0.5)[1] - step("ddim", 0.5, seed=8)[1]
    assert torch.allclose(n_half, 0.5 * n1, atol=1e-12)
    with pytest.raises(InputError, match="eta"):
        step("ddim", 1.5)
    # a whole sampler: DDIM with eta = 1 draws what the ancestral sampler draws from the same generator
    a = model.sample_batch(sizes, steps=6, method="ancestral", generator=torch.Generator().manual_seed(4))
    d = model.sample_batch(sizes, steps=6, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], d[0]) and (a[1] - d[1]).abs().max() < 1e-9
