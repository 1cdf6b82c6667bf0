"""Progressive distillation: the target reproduces two teacher steps in one; the student halves the steps."""

import torch
from torch_geometric.data import Data

from molequi.models.generative.distill import distill_round, two_step_target
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
