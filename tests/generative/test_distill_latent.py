"""Latent progressive distillation of GeoLDM (AccGeoLDM) and v / x students: the parameterisation conversions
against hand-computed values, the latent two-step target against two hand-written teacher DDIM steps, a tiny
GeoLDM distilled by ``molequi distill`` whose v student samples (latent DDIM, then the frozen decoder)."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from molequi.cli.main import main
from molequi.errors import ModelError
from molequi.models.generative.distill import distillation_loss, two_step_x_target
from molequi.models.generative.edm import eps_from_output, x_from_output
from molequi.models.generative.geoldm import GeoLDM
from molequi.models.generative.graph import centred_gaussian, fully_connected_edges, sizes_to_batch
from molequi.models.generative.io import load_generative, save_checkpoint

DATA = Path(__file__).resolve().parents[2] / "data" / "qm9_geometries" / "qm9_geometries.extxyz"


def test_conversions_hand_values():
    # alpha 0.6, sigma 0.8, x = 2, eps = -1: z = 1.2 - 0.8 = 0.4, v = 0.6 (-1) - 0.8 (2) = -2.2
    z, a, s = torch.tensor([0.4], dtype=torch.float64), 0.6, 0.8
    v, x, eps = torch.tensor([-2.2], dtype=torch.float64), torch.tensor([2.0]), torch.tensor([-1.0])
    for par, out in (("eps", eps), ("v", v), ("x", x)):
        assert torch.allclose(eps_from_output(out.double(), z, a, s, par), eps.double(), atol=1e-14), par
        assert torch.allclose(x_from_output(out.double(), z, a, s, par), x.double(), atol=1e-14), par


def _geoldm(**kw):
    torch.manual_seed(0)
    cfg = dict(hidden=16, layers=2, timesteps=64, latent_nf=2)
    m = GeoLDM(GeoLDM.Config(**{**cfg, **kw})).double()
    m.size_counts[3:6] = 1.0
    return m.eval()


def _with_output(model, outputs):
    """A copy of ``model`` whose denoiser returns ``outputs`` (whatever its input)."""
    student = copy.deepcopy(model)
    student.dynamics.forward = lambda *a, **k: outputs
    return student


def _alpha_sigma(model, t):
    g = model.schedule.gamma(torch.as_tensor(t), torch.float64)
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()  # alpha^2 = sigmoid(-gamma) = 1 - sigma^2


def _hand_ddim(teacher, z, t, s, b, ei, ng):
    """z_s = alpha_s x_hat + sigma_s eps, x_hat = (z_t - sigma_t eps) / alpha_t (Song et al.), t, s (B,)."""
    ex, eh = teacher.epsilon(*z, t, b, ei, ng)
    (a_t, s_t), (a_s, s_s) = _alpha_sigma(teacher, t), _alpha_sigma(teacher, s)
    a_t, s_t, a_s, s_s = (c[b].unsqueeze(-1) for c in (a_t, s_t, a_s, s_s))
    return tuple(a_s * (zz - s_t * e) / a_t + s_s * e for zz, e in zip(z, (ex, eh)))


@pytest.mark.parametrize("par", ["eps", "v", "x"])
def test_latent_two_step_target_is_one_student_step(par):
    """One student DDIM step with the exact target (read as eps, v or x) lands where two hand-written teacher
    DDIM steps land, in GeoLDM's latent space (float64, 1e-10); each molecule at its own step."""
    teacher = _geoldm()
    sizes = torch.tensor([3, 5, 4])
    b, ng = sizes_to_batch(sizes), 3
    ei = fully_connected_edges(b, ng)
    g = torch.Generator().manual_seed(1)
    z = (centred_gaussian(b, ng, dtype=torch.float64, generator=g),
         torch.randn(12, teacher.latent_features(), dtype=torch.float64, generator=g))
    t, mid, s = torch.tensor([64, 32, 8]), torch.tensor([56, 24, 4]), torch.tensor([48, 16, 0])
    with torch.no_grad():
        two = _hand_ddim(teacher, _hand_ddim(teacher, z, t, mid, b, ei, ng), mid, s, b, ei, ng)
        tx, th, z2x, z2h = two_step_x_target(teacher, *z, t, mid, s, b, ei, ng)
    assert torch.allclose(z2x, two[0], atol=1e-10) and torch.allclose(z2h, two[1], atol=1e-10)
    a, sg = (c[b].unsqueeze(-1) for c in _alpha_sigma(teacher, t))
    eps = [(zz - a * xx) / sg for zz, xx in zip(z, (tx, th))]
    out = {"eps": eps, "x": [tx, th], "v": [a * e - sg * xx for e, xx in zip(eps, (tx, th))]}[par]
    student = _with_output(teacher, tuple(out))
    student.config = dataclasses.replace(teacher.config, parameterisation=par)
    with torch.no_grad():
        one = student.step(*z, t, s, b, ei, ng, method="ddim")
    assert torch.allclose(one[0], two[0], atol=1e-10) and torch.allclose(one[1], two[1], atol=1e-10)


def test_v_student_loss_is_the_eps_loss_and_zero_at_the_target():
    """The v student's x-space loss max(SNR, 1) |x_tilde - x_hat|^2 equals the epsilon-space loss of the same
    prediction with weight max(1, 1/SNR) (the documented identity); a student that outputs the exact v
    target has loss 0."""
    teacher = _geoldm()
    records = [_molecule(n) for n in (3, 4, 5)]
    batch = Batch.from_data_list(records)
    b, ng = teacher._batch_info(batch)
    ei = fully_connected_edges(b, ng)

    def targets(seed):  # recompute the draws of distillation_loss (diffusion_data, k, noised) for seed
        g = torch.Generator().manual_seed(seed)
        x, h = teacher.diffusion_data(batch, g)
        grid = torch.tensor(teacher.time_grid(8))
        k = torch.randint(0, 4, (ng,), generator=g)
        t, mid, s = grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]
        z = teacher.noised(x, h, t, b, ng, g)[:2]
        return z, t, two_step_x_target(teacher, *z, t, mid, s, b, ei, ng)[:2]

    z, t, (tx, th) = targets(5)
    a, sg = (c[b].unsqueeze(-1) for c in _alpha_sigma(teacher, t))
    exact_v = tuple(a * (zz - a * xx) / sg - sg * xx for zz, xx in zip(z, (tx, th)))
    v_student = _with_output(teacher, exact_v)
    v_student.config = dataclasses.replace(teacher.config, parameterisation="v")
    loss = distillation_loss(v_student, teacher, batch, 4, torch.Generator().manual_seed(5))
    assert float(loss) < 1e-18
    off = tuple(o + 0.1 * torch.randn_like(o) for o in exact_v)
    v_student.dynamics.forward = lambda *a_, **k_: off
    eps_hat = tuple(sg * zz + a * o for zz, o in zip(z, off))
    eps_student = _with_output(teacher, eps_hat)
    for w in ("snr", "truncated_snr"):
        lv = distillation_loss(v_student, teacher, batch, 4, torch.Generator().manual_seed(5), w)
        le = distillation_loss(eps_student, teacher, batch, 4, torch.Generator().manual_seed(5), w)
        assert float(lv) > 0 and torch.allclose(lv, le, rtol=1e-10), w


def _molecule(n):
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(n)
    d = Data(numbers=torch.tensor([6] + [1] * (n - 1)), pos=torch.randn(n, 3, generator=g).double())
    d.num_nodes = n
    return d


def test_molequi_distill_geoldm_v_student_samples(tmp_path, capsys):
    """molequi distill on a tiny GeoLDM: one round 8 -> 4 steps with a v student (the latent default) that
    trains only the latent denoiser; the student's checkpoint records v and samples as latent DDIM with its
    v read as eps = sigma z + alpha v, then the teacher's decoder; molequi generate writes its molecules;
    training or the likelihood of a v student is refused by name."""
    torch.manual_seed(0)
    teacher = GeoLDM(GeoLDM.Config(hidden=8, layers=1, timesteps=16, latent_nf=2))
    teacher.size_counts[3:6] = 1.0
    ckpt = tmp_path / "geoldm.pt"
    save_checkpoint(teacher, ckpt)
    out = tmp_path / "students"
    assert main(["distill", str(ckpt), "--data", str(DATA), "--limit", "6", "--start-steps", "8", "--rounds",
                 "1", "--iterations", "3", "--batch-size", "4", "--out-dir", str(out)]) == 0
    summary = json.loads((out / "distill.json").read_text())
    assert (summary["parameterisation"], summary["weighting"], summary["space"]) == ("v", "truncated_snr",
                                                                                     "latent")
    student = load_generative(out / "student_4.pt")
    assert isinstance(student, GeoLDM)
    assert (student.config.parameterisation, student.config.sampling_steps) == ("v", 4)
    ref, new = teacher.state_dict(), student.state_dict()
    assert all(torch.equal(new[k], ref[k]) for k in ref if k.startswith("autoencoder."))
    assert any(not torch.equal(new[k], ref[k]) for k in ref if k.startswith("dynamics."))
    # sampling = latent DDIM with the v output converted by hand, then GeoLDM's p(z | z_0) and decoder
    sizes = torch.tensor([3, 5])
    b, ng = sizes_to_batch(sizes), 2
    ei = fully_connected_edges(b, ng)
    numbers, pos, _ = student.sample_batch(sizes, method="ddim", generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    z = [centred_gaussian(b, ng, generator=g), torch.randn(8, 2, generator=g)]
    grid = [16, 12, 8, 4, 0]
    with torch.no_grad():
        for t, s in zip(grid[:-1], grid[1:]):
            (a_t, s_t), (a_s, s_s) = _alpha_sigma(student, [t]), _alpha_sigma(student, [s])
            v = student.dynamics(*z, torch.full((ng,), t / 16), b, ei)
            eps = [float(s_t) * zz + float(a_t) * vv for zz, vv in zip(z, v)]
            z = [float(a_s) * (zz - float(s_t) * e) / float(a_t) + float(s_s) * e for zz, e in zip(z, eps)]
        (a_0, s_0) = _alpha_sigma(student, [0])
        v = student.dynamics(*z, torch.zeros(ng), b, ei)
        x_hat = [float(a_0) * zz - float(s_0) * vv for zz, vv in zip(z, v)]
        n2, p2 = student.decode_sample(x_hat[0], x_hat[1], b, ei, ng, generator=g)
    assert torch.equal(numbers, n2) and torch.allclose(pos, p2, atol=1e-4)
    mols = tmp_path / "m.sdf"
    assert main(["generate", str(out / "student_4.pt"), "--n", "3", "--out", str(mols)]) == 0
    assert mols.read_text().count("$$$$") == 3
    with pytest.raises(ModelError, match="v-parameterised"):
        student.training_loss(Batch.from_data_list([_f32(3)]))
    with pytest.raises(ModelError, match="v-parameterised"):
        student.likelihood_terms(Batch.from_data_list([_f32(3)]))


def _f32(n):
    d = _molecule(n)
    d.pos = d.pos.float()
    return d


def _bench_report(name: str):
    """scripts/bench/report.py loaded as a module named ``name``."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[2] / "scripts" / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def _toy_row(model, steps, method, eta, stab, cpu, n):
    return {"model": model, "steps": steps, "method": method, "eta": eta, "molecule_stability": stab,
            "cpu_seconds": cpu, "n": n}


def test_report_row_of_the_latent_toy_from_hand_computed_numbers(tmp_path):
    """scripts/bench/report.py's latent-distillation row from a crafted result file: stabilities as given,
    CPU s per molecule and the speed-up over the 1000-step teacher computed here by hand."""
    report = _bench_report("bench_report_latent")

    def r(*args):
        return _toy_row(*args, n=200)

    rows = [r("teacher", 1000, "ancestral", 0.0, 80.0, 40.0), r("teacher", 1000, "ddim", 0.0, 60.0, 40.0),
            r("teacher", 16, "ancestral", 0.0, 55.5, 0.7), r("teacher", 16, "ddim", 0.0, 44.0, 0.6),
            r("student_16.pt", 16, "ddim", 0.0, 45.0, 0.64), r("student_16.pt", 16, "ddim", 1.0, 58.25, 0.5)]
    prov = {"peer": None, "peer_version": None, "peer_measured_in_this_run": None, "threads": 1,
            "load_average": [2.0, 2.0, 2.0]}
    d = {"molecules": 10, "teacher": {"hidden": 8, "layers": 2, "latent_nf": 1, "iterations": 100,
                                      "train_seconds": 120.0},
         "distill": {"start_steps": 32, "parameterisation": "v", "weighting": "truncated_snr",
                     "iterations_per_round": 50}, "rows": rows, "provenance": prov}
    (tmp_path / "generation_toy_geoldm.json").write_text(json.dumps(d))
    cell = report.row_generation_latent_distill(tmp_path)[2]
    assert "ancestral 80.0 / DDIM 60.0 (0.2 CPU s/molecule)" in cell  # 40 / 200
    # 16 steps: student eta 0 / eta 1 vs teacher DDIM / ancestral; 0.5 / 200 = 0.0025 s; 40 / 0.5 = 80x
    assert "16: 45.0 / 58.2 vs 44.0 / 55.5 (0.0025 CPU s/molecule, 80x" in cell
    assert "32 -> 16" in cell and "100 of 100 planned iterations" in cell


def test_report_goal_verdict_of_the_latent_toy_from_hand_computed_numbers(tmp_path):
    """report.py's issue-17 verdict per step count: stabilities pooled over seed 0 and ``extra_seeds``, the
    better teacher sampler, one standard error of the difference and the two-standard-error rule, all
    computed here by hand."""
    report = _bench_report("bench_report_latent_goal")

    def r(*args):
        return _toy_row(*args, n=100)

    rows = [r("teacher", 1000, "ancestral", 0.0, 95.0, 40.0), r("teacher", 1000, "ddim", 0.0, 90.0, 40.0),
            r("teacher", 64, "ancestral", 0.0, 90.0, 4.0), r("teacher", 64, "ddim", 0.0, 80.0, 4.0),
            r("student_64.pt", 64, "ddim", 0.0, 85.0, 4.0), r("student_64.pt", 64, "ddim", 1.0, 92.0, 4.0),
            r("teacher", 32, "ancestral", 0.0, 80.0, 2.0), r("teacher", 32, "ddim", 0.0, 70.0, 2.0),
            r("student_32.pt", 32, "ddim", 0.0, 75.0, 2.0), r("student_32.pt", 32, "ddim", 1.0, 96.0, 2.0),
            r("teacher", 8, "ancestral", 0.0, 40.0, 1.0), r("teacher", 8, "ddim", 0.0, 50.0, 1.0),
            r("student_8.pt", 8, "ddim", 0.0, 60.0, 1.0), r("student_8.pt", 8, "ddim", 1.0, 70.0, 1.0)]
    extra = [{"model": "teacher", "steps": 64, "method": "ancestral", "eta": 0.0, "seeds": [1], "n": 100,
              "molecule_stability": [92.0]},
             {"model": "student_64.pt", "steps": 64, "method": "ddim", "eta": 1.0, "seeds": [1], "n": 100,
              "molecule_stability": [94.0]}]
    prov = {"peer": None, "peer_version": None, "peer_measured_in_this_run": None, "threads": 1,
            "load_average": [2.0, 2.0, 2.0]}
    d = {"molecules": 10, "teacher": {"hidden": 8, "layers": 2, "latent_nf": 1, "iterations": 100,
                                      "train_cpu_seconds": 120.0},
         "distill": {"start_steps": 128, "rounds": 2, "parameterisation": "eps", "weighting": "snr",
                     "iterations_per_round": 50}, "rows": rows, "provenance": prov, "extra_seeds": extra}
    (tmp_path / "generation_toy_geoldm_long.json").write_text(json.dumps(d))
    cell = report.row_generation_latent_distill_long(tmp_path)[2]
    # 64 steps: student (92 + 94) / 2 = 93 %, teacher ancestral (90 + 92) / 2 = 91 %, 200 samples each;
    # se = sqrt(.93 .07 / 200 + .91 .09 / 200) = 2.68 points > 2 / 2: ties; speed 40 / 4 = 10x; lost 95 - 93 = 2
    se = 100 * (0.93 * 0.07 / 200 + 0.91 * 0.09 / 200) ** 0.5
    assert f"64: 93.0 vs 91.0 (200 / 200 samples), +2.0 ± {se:.1f} vs teacher ancestral, 10x, 2.00 points lost: " \
           "not met (ties the teacher)" in cell
    # 8 steps: the teacher's better sampler is DDIM (50); 70 - 50 = 20 > 2 se; 40x; 25 points lost
    se8 = 100 * (0.7 * 0.3 / 100 + 0.5 * 0.5 / 100) ** 0.5
    assert f"8: 70.0 vs 50.0 (100 / 100 samples), +20.0 ± {se8:.1f} vs teacher ddim, 40x, 25.00 points lost: " \
           "not met (loses > 5 points)" in cell
    # 32 steps: 96 vs 80 (ancestral), 16 > 2 se, 40 / 2 = 20x, 95 - 96 = -1 point lost: met
    se32 = 100 * (0.96 * 0.04 / 100 + 0.8 * 0.2 / 100) ** 0.5
    assert f"32: 96.0 vs 80.0 (100 / 100 samples), +16.0 ± {se32:.1f} vs teacher ancestral, 20x, -1.00 points " \
           "lost: met" in cell
    assert "--start-steps 128 --rounds 2" in report.row_generation_latent_distill_long(tmp_path)[1]
