"""Progressive distillation: the target reproduces two teacher steps in one; the student halves the steps."""

import dataclasses

import torch
from torch_geometric.data import Batch, Data

from molequi.models.generative.distill import (
    distill_round,
    distillation_loss,
    local_step_errors,
    loss_weights,
    two_step_target,
)
from molequi.models.generative.edm import EDM
from molequi.models.generative.graph import centred_gaussian, fully_connected_edges, sizes_to_batch
from molequi.models.generative.io import load_generative, save_checkpoint


def _teacher():
    torch.manual_seed(0)
    m = EDM(EDM.Config(hidden=16, layers=2, timesteps=64)).double()
    m.size_counts[3:6] = 1.0
    return m.eval()


def _records(n=8):
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        size = 3 + k % 3
        d = Data(numbers=torch.tensor([6] + [1] * (size - 1)), pos=torch.randn(size, 3, generator=g).double())
        d.num_nodes = size
        out.append(d)
    return out


def test_two_step_target_is_one_ddim_step():
    teacher = _teacher()
    sizes = torch.tensor([3, 5])
    b = sizes_to_batch(sizes)
    ei = fully_connected_edges(b)
    z_x = centred_gaussian(b, 2, dtype=torch.float64)
    z_h = torch.randn(8, teacher.n_features, dtype=torch.float64)
    t, mid, s = 48, 40, 32
    ex, eh, z2x, z2h = two_step_target(teacher, z_x, z_h, t, mid, s, b, ei, 2)

    class Fixed(EDM):  # a "student" whose network returns the target epsilon
        def epsilon(self, *args, **kw):
            return ex, eh

    student = Fixed(teacher.config).double()
    zx, zh = student.step(z_x, z_h, t, s, b, ei, 2, method="ddim")
    assert torch.allclose(zx, z2x, atol=1e-10) and torch.allclose(zh, z2h, atol=1e-10)


def test_two_step_target_per_molecule():
    """Each molecule of a batch at its own student step: one DDIM step with the target epsilon lands on the
    teacher's two steps, and each molecule's target equals the one computed for it alone."""
    teacher = _teacher()
    sizes = torch.tensor([3, 5, 4])
    b = sizes_to_batch(sizes)
    ei = fully_connected_edges(b)
    z_x = centred_gaussian(b, 3, dtype=torch.float64)
    z_h = torch.randn(12, teacher.n_features, dtype=torch.float64)
    t, mid, s = torch.tensor([64, 16, 40]), torch.tensor([60, 12, 36]), torch.tensor([56, 8, 32])
    ex, eh, z2x, z2h = two_step_target(teacher, z_x, z_h, t, mid, s, b, ei, 3)

    class Fixed(EDM):
        def epsilon(self, *args, **kw):
            return ex, eh

    zx, zh = Fixed(teacher.config).double().step(z_x, z_h, t, s, b, ei, 3, method="ddim")
    assert torch.allclose(zx, z2x, atol=1e-10) and torch.allclose(zh, z2h, atol=1e-10)
    for k in range(3):
        sel = b == k
        bk = torch.zeros(int(sel.sum()), dtype=torch.long)
        ek = two_step_target(teacher, z_x[sel], z_h[sel], int(t[k]), int(mid[k]), int(s[k]), bk,
                             fully_connected_edges(bk), 1)
        assert torch.allclose(ek[0], ex[sel], atol=1e-9) and torch.allclose(ek[1], eh[sel], atol=1e-9)


def test_truncated_snr_weights_are_the_x_space_loss():
    """w_t ||d eps||^2 is max(SNR_t, 1) ||d x||^2 (x_hat = (z - sigma eps) / alpha) up to one constant."""
    teacher = _teacher()
    t = torch.tensor(teacher.time_grid(8)[:-1])  # the starts of an 8-step student
    w = loss_weights(teacher, t, 8, "truncated_snr")
    assert abs(float(w.mean()) - 1.0) < 1e-12
    _, a, s = teacher._coeffs(t, None, None)
    snr = a ** 2 / s ** 2
    d_eps = torch.rand(len(t), dtype=torch.float64) + 0.5
    x_loss = torch.maximum(snr, torch.ones_like(snr)) * (s / a * d_eps) ** 2
    ratio = w * d_eps ** 2 / x_loss
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)
    assert float(w[0]) > 1e3 * float(w[-1])  # the high-noise steps are no longer ignored
    default = loss_weights(teacher, t, 8)  # snr: the plain epsilon loss
    assert torch.equal(default, torch.ones(len(t), dtype=torch.float64))


def test_distillation_loss_of_a_student_that_is_the_target_is_zero():
    teacher = _teacher()
    batch = Batch.from_data_list(_records(6))
    seen = {}

    class Oracle(EDM):  # returns the two-step target the loss asks for
        def epsilon(self, z_x, z_h, t, b, ei, num_graphs, context=None):
            grid = torch.tensor(teacher.time_grid(8))
            k = (grid[::2][:-1] == t.unsqueeze(-1)).nonzero()[:, 1]
            seen["t"] = t
            mid, s = grid[2 * k + 1], grid[2 * k + 2]
            return two_step_target(teacher, z_x, z_h, t, mid, s, b, ei, num_graphs)[:2]

    oracle = Oracle(teacher.config).double()
    oracle.load_state_dict(teacher.state_dict())
    loss = distillation_loss(oracle, teacher, batch, 4, torch.Generator().manual_seed(3))
    assert float(loss) < 1e-20 and len(set(seen["t"].tolist())) > 1  # molecules at different steps
    untaught = distillation_loss(teacher, teacher, batch, 4, torch.Generator().manual_seed(3))
    assert float(untaught.detach()) > 1e-6  # the teacher itself is not its own two-step target


def test_student_halves_steps(tmp_path):
    teacher = _teacher()
    student = distill_round(teacher, _records(), 4, iterations=3, batch_size=4, lr=1e-3, log=None)
    assert student.config.sampling_steps == 4 and teacher.config.sampling_steps is None
    assert len(student.time_grid(None)) == 5 and student.time_grid(None) == teacher.time_grid(8)[::2]
    calls = []
    student.dynamics.register_forward_hook(lambda *a: calls.append(1))
    student.sample(3, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4 + 1  # 4 steps + the final x_0 prediction
    path = tmp_path / "student_4.pt"
    save_checkpoint(student, path)
    again = load_generative(path)
    assert again.config.sampling_steps == 4
    for k, v in student.state_dict().items():
        assert torch.equal(v, again.state_dict()[k].to(v.dtype))


def test_local_step_errors_vanish_for_the_two_step_oracle():
    teacher = _teacher()

    class Oracle(EDM):  # one step = the teacher's two steps, exactly
        def epsilon(self, z_x, z_h, t, b, ei, num_graphs, context=None):
            grid = teacher.time_grid(8)
            k = grid.index(int(t))
            return two_step_target(teacher, z_x, z_h, t, grid[k + 1], grid[k + 2], b, ei, num_graphs)[:2]

    oracle = Oracle(dataclasses.replace(teacher.config, sampling_steps=4)).double()
    copy = EDM(dataclasses.replace(teacher.config, sampling_steps=4)).double()
    copy.load_state_dict(teacher.state_dict())  # an undistilled student: one teacher step for two
    sizes = torch.tensor([3, 5])
    exact = local_step_errors(teacher, oracle, sizes, torch.Generator().manual_seed(0))
    plain = local_step_errors(teacher, copy, sizes, torch.Generator().manual_seed(0))
    assert [(r["t"], r["s"]) for r in exact] == list(zip(teacher.time_grid(4)[:-1], teacher.time_grid(4)[1:]))
    assert max(max(r["x_rms"], r["h_rms"]) for r in exact) < 1e-10
    assert min(r["x_rms"] + r["h_rms"] for r in plain) > 1e-8
    _, a, s = teacher._coeffs(64, None, None)
    _, a2, s2 = teacher._coeffs(48, None, None)
    assert abs(exact[0]["c_eps"] - float(s2 - a2 * s / a)) < 1e-12 and abs(exact[0]["c_eps"]) > 1.0
