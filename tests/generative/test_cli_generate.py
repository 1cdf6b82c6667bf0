"""``molequi generate`` on a freshly saved tiny EDM: SDF + XYZ + metrics JSON written, named errors."""

import json

import pytest

from molequi.cli.main import main
from molequi.models.generative.io import save_checkpoint


@pytest.fixture()
def ckpt(tiny_edm_checkpoint):
    return tiny_edm_checkpoint(10)


def test_generate_writes_files(ckpt, tmp_path, capsys):
    out = tmp_path / "mols.sdf"
    assert main(["generate", str(ckpt), "--n", "5", "--steps", "4", "--method", "ddim", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("$$$$") == 5 and "V2000" in text
    xyz = out.with_suffix(".xyz").read_text().splitlines()
    assert int(xyz[0]) in (3, 4, 5)
    summary = json.loads(out.with_suffix(".metrics.json").read_text())
    assert summary["n"] == 5 and "molecule_stability" in summary["metrics"]
    assert "atom_stability" in capsys.readouterr().out


def test_generate_ddim_eta(ckpt, tmp_path, capsys):
    """--eta reaches the sampler (recorded in the metrics JSON); it is refused for the ancestral sampler."""
    out = tmp_path / "mols.sdf"
    assert main(["generate", str(ckpt), "--n", "3", "--steps", "4", "--method", "ddim", "--eta", "0.5",
                 "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".metrics.json").read_text())["eta"] == 0.5
    assert main(["generate", str(ckpt), "--n", "3", "--steps", "4", "--method", "ancestral", "--eta", "0.5",
                 "--out", str(out)]) == 1
    assert "--method ddim" in capsys.readouterr().err
    # a distilled student (sampling_steps set) samples with ddim, eta 1, unless told otherwise
    import dataclasses

    from molequi.models.generative.io import load_generative

    student = load_generative(ckpt)
    student.config = dataclasses.replace(student.config, sampling_steps=4)
    save_checkpoint(student, tmp_path / "student.pt")
    for extra, eta in (([], 1.0), (["--eta", "0"], 0.0)):
        assert main(["generate", str(tmp_path / "student.pt"), "--n", "2", "--out", str(out), *extra]) == 0
        summary = json.loads(out.with_suffix(".metrics.json").read_text())
        assert (summary["method"], summary["eta"], summary["steps"]) == ("ddim", eta, None)


def test_generate_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_text("not a checkpoint")
    assert main(["generate", str(bad), "--n", "2", "--out", str(tmp_path / "m.sdf")]) == 1
    assert "CheckpointError" in capsys.readouterr().err


def test_generate_relax_with_potential(ckpt, tmp_path, capsys):
    """--relax-with: each molecule relaxed through molequi's ASE calculator; metrics before and after."""
    import dataclasses

    from molequi.checkpoint import make_payload, save_model
    from molequi.data.statistics import Statistics
    from molequi.models import get_model_class

    cls = get_model_class("lj")
    cfg = cls.Config()
    stats = Statistics(elements=[1, 6, 7, 8, 9])
    ff = tmp_path / "lj.pt"
    save_model(make_payload(config={"model": {"name": "lj", **dataclasses.asdict(cfg)}}, statistics=stats.to_dict(),
                            model_state=cls.from_config(cfg, stats).state_dict()), ff)
    out = tmp_path / "m.sdf"
    assert main(["generate", str(ckpt), "--n", "2", "--steps", "3", "--out", str(out), "--relax-with", str(ff),
                 "--relax-steps", "5"]) == 0
    summary = json.loads(out.with_suffix(".metrics.json").read_text())
    assert summary["relaxed"]["failed"] == 0 and "atom_stability" in summary["relaxed"]["metrics"]
    assert (tmp_path / "m_relaxed.sdf").read_text().count("$$$$") == 2
