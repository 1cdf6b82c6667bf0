"""EDM's variational bound (``EDM.likelihood_terms``) term by term against independent computations:
torch.distributions / scipy Gaussians on an explicit orthonormal basis of the zero-mean subspace, scipy's
normal CDF for the discretised likelihood, the schedule's alpha^2 table for the SNR weights, and the
training-loss normalisations written out per molecule. (The whole bound against EDM's own code is
``tests/interop/test_edm_parity.py``.)"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch_geometric.data import Batch, Data

from molequi.errors import ConfigError, ModelError
from molequi.models.generative.edm import EDM, bits_per_dimension
from molequi.models.generative.graph import centred_gaussian, fully_connected_edges

T = 50


def _model(**kw):
    torch.manual_seed(0)
    m = EDM(EDM.Config(hidden=16, layers=2, timesteps=T, **kw)).double()
    m.size_counts[3] = 2.0
    m.size_counts[5] = 6.0
    return m.eval()


def _batch():
    g = torch.Generator().manual_seed(3)
    mols = [Data(numbers=torch.tensor([6, 1, 1, 1, 1]), pos=torch.randn(5, 3, generator=g, dtype=torch.float64)),
            Data(numbers=torch.tensor([8, 1, 1]), pos=torch.randn(3, 3, generator=g, dtype=torch.float64))]
    return Batch.from_data_list(mols)


def _noise(batch, F, seed):
    g = torch.Generator().manual_seed(seed)
    ex = centred_gaussian(batch.batch, 2, dtype=torch.float64, generator=g)
    eh = torch.randn(batch.batch.numel(), F, generator=g, dtype=torch.float64)
    return ex, eh


def _subspace_basis(n):
    """(3n, 3(n-1)) orthonormal basis of {x in R^{n x 3}: sum_i x_i = 0}, flattened row-major."""
    centring = np.eye(n) - np.ones((n, n)) / n
    u, s, _ = np.linalg.svd(np.kron(centring, np.eye(3)))
    return u[:, : 3 * (n - 1)]


def _terms(m, batch, t, seed=1):
    noise, noise0 = _noise(batch, m.n_features, seed), _noise(batch, m.n_features, seed + 1)
    terms = m.likelihood_terms(batch, t_int=torch.tensor(t), noise=noise, noise0=noise0)
    return terms, noise, noise0


def test_prior_kl_matches_gaussians_on_the_zero_mean_subspace():
    m, batch = _model(), _batch()
    terms, _, _ = _terms(m, batch, [3, 7])
    a2 = m.schedule.alphas2_table[T].item()
    a_T, s_T = math.sqrt(a2), math.sqrt(1 - a2)
    x, h = m.encode(batch.numbers, batch.pos, batch.batch, 2)
    for k in range(2):
        sel = batch.batch == k
        n = int(sel.sum())
        # positions: coordinates of alpha_T x in an orthonormal basis of the 3(n-1)-dim subspace
        mu = _subspace_basis(n).T @ (a_T * x[sel]).numpy().reshape(-1)
        d = mu.size
        q = torch.distributions.MultivariateNormal(torch.tensor(mu), s_T ** 2 * torch.eye(d, dtype=torch.float64))
        p = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64),
                                                   torch.eye(d, dtype=torch.float64))
        kl_x = torch.distributions.kl_divergence(q, p).item()
        kl_h = torch.distributions.kl_divergence(torch.distributions.Normal(a_T * h[sel], s_T),
                                                 torch.distributions.Normal(0.0, 1.0)).sum().item()
        assert terms["kl_prior"][k].item() == pytest.approx(kl_x + kl_h, rel=1e-9, abs=1e-12)
    assert 0 < terms["kl_prior"].max() < 1e-2  # alpha_T ~ 3e-3: the prior is nearly matched


def test_prior_kl_closed_form_against_monte_carlo():
    """KL = E_q[log q(z) - log p(z)] by Monte Carlo (40000 draws of zero-mean noise); precision s = 0.3 keeps
    alpha_T^2 ~ 0.3 so that the KL is several nats."""
    m, batch = _model(precision=0.3), _batch()
    terms, _, _ = _terms(m, batch, [1, 1])
    a2 = m.schedule.alphas2_table[T].item()
    assert 0.25 < a2 < 0.35
    x, h = m.encode(batch.numbers, batch.pos, batch.batch, 2)
    g = torch.Generator().manual_seed(0)
    samples = [[], []]
    for _ in range(8):
        ex = torch.randn(5000, *x.shape, generator=g, dtype=torch.float64)
        for k in range(2):  # project each molecule's noise to zero mean
            sel = batch.batch == k
            ex[:, sel] -= ex[:, sel].mean(1, keepdim=True)
        eh = torch.randn(5000, *h.shape, generator=g, dtype=torch.float64)
        zx = math.sqrt(a2) * x + math.sqrt(1 - a2) * ex
        zh = math.sqrt(a2) * h + math.sqrt(1 - a2) * eh
        for k in range(2):
            sel = batch.batch == k
            d = 3 * (int(sel.sum()) - 1)  # q and p are Gaussians on the 3(n-1)-dim subspace (+ n F features)
            lq = -0.5 * (ex[:, sel] ** 2).sum((1, 2)) - 0.5 * d * math.log(1 - a2) \
                - 0.5 * (eh[:, sel] ** 2).sum((1, 2)) - 0.5 * h[sel].numel() * math.log(1 - a2)
            lp = -0.5 * (zx[:, sel] ** 2).sum((1, 2)) - 0.5 * (zh[:, sel] ** 2).sum((1, 2))
            samples[k].append(lq - lp)
    for k in range(2):
        r = torch.cat(samples[k])
        se = (r.std() / math.sqrt(r.numel())).item()
        assert terms["kl_prior"][k].item() > 1.0
        assert abs(r.mean().item() - terms["kl_prior"][k].item()) < 4 * se


def test_gaussian_constants_and_diffusion_weight_from_the_alpha_table():
    m, batch = _model(), _batch()
    t = [1, 37]
    terms, (ex, eh), _ = _terms(m, batch, t)
    a2 = m.schedule.alphas2_table.numpy()
    sigma_x = math.sqrt((1 - a2[0]) / a2[0])  # std of p(x | z_0): sigma_0 / alpha_0
    x, h = m.encode(batch.numbers, batch.pos, batch.batch, 2)
    edges = fully_connected_edges(batch.batch, 2)
    for k, n in enumerate((5, 3)):
        d = 3 * (n - 1)
        assert terms["neg_log_constants"][k].item() == pytest.approx(-d * stats.norm(scale=sigma_x).logpdf(0.0),
                                                                      rel=1e-12)
    tt = torch.tensor(t)
    a_t = torch.tensor(np.sqrt(a2[t]))[batch.batch, None]
    s_t = torch.tensor(np.sqrt(1 - a2[t]))[batch.batch, None]
    px, ph = m.dynamics(a_t * x + s_t * ex, a_t * h + s_t * eh, tt.double() / T, batch.batch, edges)
    snr = a2 / (1 - a2)
    for k in range(2):
        sel = batch.batch == k
        err = ((px[sel] - ex[sel]) ** 2).sum() + ((ph[sel] - eh[sel]) ** 2).sum()
        expected = T * 0.5 * (snr[t[k] - 1] / snr[t[k]] - 1) * err.item()
        assert terms["diffusion"][k].item() == pytest.approx(expected, rel=1e-9)
    assert torch.equal(terms["t"], tt)


@pytest.mark.parametrize("include_charges", [True, False])
def test_discretised_type_and_charge_likelihood_against_scipy(include_charges):
    m, batch = _model(include_charges=include_charges, norm_values=[1.0, 4.0, 10.0]), _batch()
    terms, _, (ex0, eh0) = _terms(m, batch, [2, 2])
    a0 = math.sqrt(m.schedule.alphas2_table[0].item())
    s0 = math.sqrt(1 - m.schedule.alphas2_table[0].item())
    x, h = m.encode(batch.numbers, batch.pos, batch.batch, 2)
    z0x, z0h = a0 * x + s0 * ex0, a0 * h + s0 * eh0
    px, _ = m.dynamics(z0x, z0h, torch.zeros(2, dtype=torch.float64), batch.batch,
                       fully_connected_edges(batch.batch, 2))
    types = m.type_of_z[batch.numbers].numpy()
    z0h = z0h.numpy()
    for k in range(2):
        sel = (batch.batch == k).numpy()
        log_p = 0.0
        for i in np.flatnonzero(sel):
            # type: mass of N(4 z_k, 4 s0) on [1/2, 3/2] for each type k, normalised over the types
            mass = np.array([stats.norm.cdf(1.5, 4 * z0h[i, c], 4 * s0) - stats.norm.cdf(0.5, 4 * z0h[i, c], 4 * s0)
                             for c in range(m.n_types)]) + 1e-10
            log_p += np.log(mass[types[i]]) - np.log(mass.sum())
            if include_charges:  # charge Z: mass of N(10 z_Z, 10 s0) on [Z - 1/2, Z + 1/2]
                Z = batch.numbers[i].item()
                mu = 10 * z0h[i, m.n_types]
                log_p += np.log(stats.norm.cdf(Z + 0.5, mu, 10 * s0) - stats.norm.cdf(Z - 0.5, mu, 10 * s0) + 1e-10)
        sel_t = torch.from_numpy(sel)
        expected = 0.5 * ((px[sel_t] - ex0[sel_t]) ** 2).sum().item() - log_p
        assert terms["loss_0"][k].item() == pytest.approx(expected, rel=1e-7, abs=1e-6)


def test_nll_sums_the_terms_log_pN_and_bits_per_dimension():
    m, batch = _model(norm_values=[2.0, 4.0, 10.0]), _batch()
    terms, _, _ = _terms(m, batch, [5, 9])
    assert terms["log_pN"].tolist() == pytest.approx([math.log(6 / 8), math.log(2 / 8)])
    assert terms["delta_log_px"].tolist() == pytest.approx([-12 * math.log(2.0), -6 * math.log(2.0)])
    total = terms["kl_prior"] + terms["diffusion"] + terms["neg_log_constants"] + terms["loss_0"] \
        - terms["delta_log_px"] - terms["log_pN"]
    assert torch.allclose(terms["nll"], total)
    ll = m.log_likelihood(batch, t_int=torch.tensor([5, 9]), noise=_noise(batch, m.n_features, 1),
                          noise0=_noise(batch, m.n_features, 2))
    assert torch.allclose(ll, -terms["nll"])
    dims = m.dimensions(torch.tensor([5, 3]))
    assert dims.tolist() == [12 + 5 * 6, 6 + 3 * 6]
    assert bits_per_dimension(terms["nll"], dims).tolist() == pytest.approx(
        [terms["nll"][0].item() / (42 * math.log(2)), terms["nll"][1].item() / (24 * math.log(2))])


def test_random_draws_follow_the_generator_and_errors_are_named():
    m, batch = _model(), _batch()
    a = m.log_likelihood(batch, torch.Generator().manual_seed(4))
    b = m.log_likelihood(batch, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ModelError, match="never occurred"):
        m.size_counts[5] = 0.0
        m.log_likelihood(batch)
    with pytest.raises(ModelError, match="no molecule-size histogram"):
        m.size_counts.zero_()
        m.log_likelihood(batch)
    assert torch.isfinite(m.likelihood_terms(batch, include_size=False)["nll"]).all()


@pytest.mark.parametrize("mode", ["edm", "molecule"])
def test_training_loss_normalisation(mode):
    """EDM divides each molecule's squared error by (3 + F) x the batch's largest molecule (its padded size)."""
    m, batch = _model(loss_normalisation=mode), _batch()
    m.train()
    loss, _ = m.training_loss(batch, generator=torch.Generator().manual_seed(7))
    # the same draws by hand: t, eps_x, eps_h from the generator in training_loss's order
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, T + 1, (2,), generator=g)
    ex = centred_gaussian(batch.batch, 2, dtype=torch.float64, generator=g)
    x, h = m.encode(batch.numbers, batch.pos, batch.batch, 2)
    eh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    a2 = m.schedule.alphas2_table[t]
    a, s = a2.sqrt()[batch.batch, None], (1 - a2).sqrt()[batch.batch, None]
    px, ph = m.dynamics(a * x + s * ex, a * h + s * eh, t.double() / T, batch.batch,
                        fully_connected_edges(batch.batch, 2))
    per_mol = []
    for k, n in enumerate((5, 3)):
        sel = batch.batch == k
        err = ((px[sel] - ex[sel]) ** 2).sum() + ((ph[sel] - eh[sel]) ** 2).sum()
        per_mol.append(err.item() / ((3 + 6) * (5 if mode == "edm" else n)))
    assert loss.item() == pytest.approx(np.mean(per_mol), rel=1e-10)


def test_loss_normalisation_is_validated():
    with pytest.raises(ConfigError, match="loss_normalisation"):
        EDM(EDM.Config(hidden=8, layers=1, loss_normalisation="padded"))


def test_eval_cli_reports_the_nll_of_a_diffusion_checkpoint(tmp_path, capsys):
    import json

    import ase
    import ase.io

    from molequi.cli.main import main
    from molequi.models.generative.io import save_checkpoint

    m, batch = _model(), _batch()
    save_checkpoint(m.float(), tmp_path / "edm.pt")
    frames = [ase.Atoms(numbers=batch.numbers[batch.batch == k].numpy(), positions=batch.pos[batch.batch == k].numpy())
              for k in range(2)]
    ase.io.write(tmp_path / "mols.xyz", frames)
    assert main(["eval", str(tmp_path / "edm.pt"), str(tmp_path / "mols.xyz"), "--json", "--float64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ll = m.double().log_likelihood(batch, torch.Generator().manual_seed(0))  # the draws eval makes (seed 0)
    assert out["molecules"] == 2
    assert out["nll"] == pytest.approx(-ll.mean().item(), rel=1e-5)
    assert out["bits_per_dim"] == pytest.approx(-ll.sum().item() / ((42 + 24) * math.log(2)), rel=1e-5)
