"""EDM's training details through ``molequi train`` (issue 16 item 4): EDM's adaptive gradient clipping and
its EMA (plain decay, no warm-up), checked against EDM's own ``gradient_clipping`` / ``Queue`` / ``EMA``
imported from its source tree, and periodic sampling with stability metrics checked against EDM's own
``check_stability``.

EDM's tree: ``../shared/peers/edm`` beside the clone (github.com/ehoogeboom/e3_diffusion_for_molecules,
commit fce07d701a2d2340f3522df588832c2c0f7e044a)."""

import copy
import csv
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from molequi.config import Config
from molequi.data.qm9 import read_qm9_xyz
from molequi.train.clipping import EDMGradClip

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / ".." / "shared" / "peers" / "edm"
QM9 = REPO / "data" / "qm9" / "crescendo"
needs_peer = pytest.mark.skipif(
    not (PEER / "equivariant_diffusion" / "utils.py").is_file(),
    reason=f"EDM's source tree (ehoogeboom/e3_diffusion_for_molecules @ fce07d7) is not at {PEER}")


@pytest.fixture()
def edm(monkeypatch):
    """EDM's modules ``utils`` (Queue, gradient_clipping), ``equivariant_diffusion.utils`` (EMA) and
    ``qm9.analyze`` (check_stability), imported from its tree."""
    monkeypatch.syspath_prepend(str(PEER))
    for name in [m for m in sys.modules if m.split(".")[0] in ("utils", "equivariant_diffusion", "qm9",
                                                                 "configs")]:
        monkeypatch.delitem(sys.modules, name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        mods = {name: importlib.import_module(name) for name in
                ("utils", "equivariant_diffusion.utils", "qm9.analyze", "configs.datasets_config")}
    yield mods
    for name in [m for m in sys.modules if m.split(".")[0] in ("utils", "equivariant_diffusion", "qm9",
                                                                 "configs")]:
        sys.modules.pop(name, None)


@needs_peer
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adaptive_clip_equals_edm_gradient_clipping(edm, capsys, dtype):
    """120 steps of gradients whose norms jump between 0.1 and 1e4: after each, EDMGradClip (its queue, limit
    and scaling as device tensors) and EDM's own gradient_clipping (with its Queue started at 3000, numpy's
    mean and std) leave bitwise identical gradients, return the same norm and limit and hold the same queue,
    for float64 and float32 gradients."""
    rng = np.random.default_rng(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(dtype)
    ref_model = copy.deepcopy(ours_model)
    queue = edm["utils"].Queue()
    queue.add(3000)
    ours = EDMGradClip()
    clipped = 0
    for step in range(120):
        scale = float(10.0 ** rng.uniform(-1, 4)) * (50.0 if step % 17 == 5 else 1.0)
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            g = (torch.from_numpy(rng.standard_normal(tuple(p.shape))) * scale).to(dtype)
            p.grad, q.grad = g.clone(), g.clone()
        queue_before = copy.deepcopy(queue)
        limit = float(ours.limit())
        norm, returned_limit = ours.clip(ours_model.parameters())
        ref_norm = edm["utils"].gradient_clipping(ref_model, queue)
        assert float(returned_limit) == limit == float(1.5 * queue_before.mean() + 2 * queue_before.std())
        assert float(norm) == float(ref_norm)
        clipped += float(norm) > limit
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            assert torch.equal(p.grad, q.grad)
        assert ours.norms == [float(v) for v in queue.items]
    assert len(ours.norms) == 50 and 10 < clipped < 110  # both branches of the rule were taken
    capsys.readouterr()  # EDM prints each clip


def test_adaptive_clip_reads_nothing_from_the_device():
    """EDMGradClip.clip traces into one Dynamo graph with scalar capture off, so it holds no float(tensor),
    .item() or bool(tensor): nothing a GPU step would wait for (issue 20 item 1); the traced clip scales the
    gradients as the eager one."""
    import torch._dynamo as dynamo

    assert not dynamo.config.capture_scalar_outputs
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4).double()
    grads = [torch.randn_like(p) * 1e4 for p in model.parameters()]
    eager, traced = EDMGradClip(), EDMGradClip()
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    norm, limit = eager.clip(model.parameters())
    expected = [p.grad.clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    dynamo.reset()
    try:
        t_norm, t_limit = torch.compile(traced.clip, fullgraph=True, backend="eager")(list(model.parameters()))
    finally:
        dynamo.reset()
    assert float(t_norm) == float(norm) and float(t_limit) == float(limit) == 3000 * 1.5 and float(norm) > 3000
    for p, e in zip(model.parameters(), expected):
        assert torch.equal(p.grad, e)
    assert traced.norms == eager.norms == [4500.0, 3000.0]


class _Recorder:
    """Lightning callback: the gradient norm before clipping and the weights after every optimiser step."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class Recorder(Callback):
            def __init__(self):
                self.norms, self.weights, self.initial = [], [], None

            def on_train_start(self, trainer, pl_module):
                self.initial = copy.deepcopy(pl_module.task.model)

            def on_after_backward(self, trainer, pl_module):
                grads = [p.grad for p in pl_module.task.model.parameters() if p.grad is not None]
                self.norms.append(float(torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g) for g in grads]))))

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.weights.append([p.detach().clone() for p in pl_module.task.model.parameters()])

        return Recorder()


@needs_peer
def test_edm_training_details_through_the_trainer(tmp_path, edm, capsys):
    """A tiny EDM trained by molequi.train with optim.grad_clip: edm_adaptive, ema_decay 0.9 without warm-up
    and sampling every 3 steps: the clip queue equals EDM's gradient_clipping fed the same gradient norms,
    the EMA equals EDM's EMA class applied to the same weight sequence, the logged sample stability equals
    EDM's check_stability on the same molecules, and the run folder holds the PNG and the history."""
    from molequi.models.generative.edm import EDM
    from molequi.train.run import train

    molecules = read_qm9_xyz(QM9)
    cfg = Config.from_dict({
        "model": {"name": "edm", "hidden": 8, "layers": 1, "timesteps": 20},
        "task": {"name": "diffusion", "sample_every_steps": 3, "sample_n": 6, "sample_steps": 4,
                 "sample_batch_size": 4},
        "optim": {"lr": 5e-3, "scheduler": "none", "ema_decay": 0.9, "ema_warmup": False,
                  "grad_clip": "edm_adaptive", "amsgrad": True},
        "trainer": {"max_steps": 7, "batch_size": 4, "accelerator": "cpu", "devices": 1, "precision": "float64",
                    "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1},
    })
    recorder = _Recorder()
    sampled = []
    original_sample = EDM.sample

    def spy(self, n, **kw):
        out = original_sample(self, n, **kw)
        sampled.append(out)
        return out

    EDM.sample = spy
    try:
        result = train(cfg, splits={"train": molecules[:16], "valid": molecules[16:], "test": []},
                       callbacks=[recorder], enable_summary=False)
    finally:
        EDM.sample = original_sample
    module = result.module
    assert result.global_step == 7 and len(recorder.norms) == 7

    # clipping: EDM's queue fed the same pre-clip norms (a model whose gradient has exactly that norm)
    queue = edm["utils"].Queue()
    queue.add(3000)
    probe = torch.nn.Linear(1, 1, bias=False).double()
    for norm in recorder.norms:
        probe.weight.grad = torch.full((1, 1), norm, dtype=torch.float64)
        edm["utils"].gradient_clipping(probe, queue)
    assert module.grad_clipper.norms == pytest.approx([float(v) for v in queue.items], rel=1e-12)

    # EMA: EDM's class over the recorded weights, from the initial weights (EDM deep-copies the model)
    ma_model = copy.deepcopy(recorder.initial)
    live = copy.deepcopy(recorder.initial)
    ema = edm["equivariant_diffusion.utils"].EMA(0.9)
    for weights in recorder.weights:
        with torch.no_grad():
            for p, w in zip(live.parameters(), weights):
                p.copy_(w)
        ema.update_model_average(ma_model, live)
    averaged = module.ema.averaged_state_dict(module.task.model)
    for name, p in ma_model.named_parameters():
        assert torch.allclose(averaged[name], p.detach(), rtol=0, atol=1e-12), name
    assert not torch.allclose(averaged["dynamics.embedding.weight"],
                              dict(module.task.model.named_parameters())["dynamics.embedding.weight"])

    # periodic sampling at steps 3 and 6: EDM's check_stability on the molecules sampled then
    run = tmp_path / "run"
    history = json.loads((run / "sample_quality.json").read_text())
    assert [h["step"] for h in history] == [3, 6] and len(sampled) == 2
    info = edm["configs.datasets_config"].get_dataset_info("qm9", False)
    index = {z: i for i, z in enumerate((1, 6, 7, 8, 9))}
    for entry, mols in zip(history, sampled):
        stable_atoms = stable_mols = atoms = 0
        for m in mols:
            types = np.array([index[int(z)] for z in m.numbers])
            mol_stable, n_stable, n = edm["qm9.analyze"].check_stability(np.asarray(m.positions), types, info)
            stable_mols += int(mol_stable)
            stable_atoms += int(n_stable)
            atoms += int(n)
        assert entry["atom_stability"] == pytest.approx(100.0 * stable_atoms / atoms)
        assert entry["molecule_stability"] == pytest.approx(100.0 * stable_mols / len(mols))
    # different weights between the rounds, same noise: the samples differ
    assert any(not np.array_equal(a.positions, b.positions) for a, b in zip(*sampled))
    png = (run / "sample_quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    rows = list(csv.DictReader(open(next((run / "logs").glob("version_*/metrics.csv")))))
    logged = [(int(r["step"]), float(r["sample/atom_stability"])) for r in rows if r.get("sample/atom_stability")]
    assert logged == [(3, pytest.approx(history[0]["atom_stability"])),
                      (6, pytest.approx(history[1]["atom_stability"]))]
    assert any(r.get("train/grad_norm") for r in rows)
    capsys.readouterr()


def test_sampling_leaves_training_randomness_alone(tmp_path):
    """The same run with and without periodic sampling ends with bitwise equal weights (sampling draws
    from its own generator inside fork_rng)."""
    from molequi.train.run import train

    molecules = read_qm9_xyz(QM9)

    def run(name, sample_every_steps):
        cfg = Config.from_dict({
            "model": {"name": "edm", "hidden": 8, "layers": 1, "timesteps": 10},
            "task": {"name": "diffusion", "sample_every_steps": sample_every_steps, "sample_n": 3,
                     "sample_steps": 3},
            "optim": {"lr": 1e-3, "scheduler": "none", "ema_decay": 0.999, "ema_warmup": False,
                      "grad_clip": "edm_adaptive"},
            "trainer": {"max_steps": 4, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                        "output": str(tmp_path / name), "progress_bar": False, "log_every": 1},
        })
        return train(cfg, splits={"train": molecules[:16], "valid": [], "test": []}, enable_summary=False)

    plain, sampling = run("plain", None), run("sampling", 2)
    assert not (tmp_path / "plain" / "sample_quality.png").exists()
    assert (tmp_path / "sampling" / "sample_quality.png").exists()
    for a, b in zip(plain.module.task.model.parameters(), sampling.module.task.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not (PEER / "outputs" / "edm_qm9" / "args.pickle").is_file(),
                    reason=f"EDM's published run options (outputs/edm_qm9/args.pickle of ehoogeboom/"
                           f"e3_diffusion_for_molecules @ fce07d7) are not at {PEER}")
def test_edm_qm9_config_matches_edm_published_run():
    """configs/edm_qm9.yaml holds the options of EDM's published QM9 run (its args.pickle) and of its
    optimiser (qm9/models.py: get_optim, AdamW with AMSGrad and weight decay 1e-12)."""
    from molequi.config import load_config
    from molequi.interop.edm import edm_config, read_edm_args

    args = read_edm_args(PEER / "outputs" / "edm_qm9" / "args.pickle")
    cfg = load_config(REPO / "configs" / "edm_qm9.yaml")
    o, t, task, m = cfg.optim, cfg.trainer, cfg.task.config, cfg.model.config
    assert (o.lr, t.batch_size, o.ema_decay, t.max_epochs) == (args["lr"], args["batch_size"], args["ema_decay"],
                                                                args["n_epochs"])
    assert (task.sample_every, task.sample_n) == (args["test_epochs"], args["n_stability_samples"])
    assert args["clip_grad"] is True and o.grad_clip == "edm_adaptive" and o.ema_warmup is False
    assert (o.optimizer, o.amsgrad, o.weight_decay, o.scheduler) == ("adamw", True, 1e-12, "none")
    assert m == edm_config(args)  # the whole architecture and schedule, as molequi's import of the run reads it
    assert cfg.data.name == "qm9" and cfg.data.options["split"] == "edm"


def test_adaptive_clip_queue_and_sample_history_survive_a_resume(tmp_path):
    """A run stopped after 4 steps and resumed to 6 ends with the same weights, the same clip queue and the
    same sampling history as one run of 6 steps (the queue and the history travel in last.ckpt)."""
    from molequi.train.run import train

    molecules = read_qm9_xyz(QM9)

    def cfg(name, steps):
        return Config.from_dict({
            "model": {"name": "edm", "hidden": 8, "layers": 1, "timesteps": 10},
            "task": {"name": "diffusion", "sample_every_steps": 3, "sample_n": 3, "sample_steps": 3},
            "optim": {"lr": 1e-3, "scheduler": "none", "ema_decay": 0.99, "ema_warmup": False,
                      "grad_clip": "edm_adaptive"},
            "trainer": {"max_steps": steps, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                        "checkpoint_every": 2, "output": str(tmp_path / name), "progress_bar": False,
                        "log_every": 1},
        })

    splits = {"train": molecules[:16], "valid": [], "test": []}
    whole = train(cfg("whole", 6), splits=splits, enable_summary=False)
    train(cfg("cut", 4), splits=splits, enable_summary=False)
    resumed = train(cfg("cut", 6), splits=splits, resume="yes", enable_summary=False)
    assert resumed.global_step == whole.global_step == 6
    assert resumed.module.grad_clipper.norms == whole.module.grad_clipper.norms
    assert len(whole.module.grad_clipper.norms) == 7  # the starting 3000 and six steps
    for a, b in zip(whole.module.task.model.parameters(), resumed.module.task.model.parameters()):
        assert torch.equal(a, b)
    history = [json.loads((tmp_path / n / "sample_quality.json").read_text()) for n in ("whole", "cut")]
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in hist] for hist in history]
    assert strip[0] == strip[1] and [h["step"] for h in strip[0]] == [3, 6]
