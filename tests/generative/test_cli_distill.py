"""``molequi distill``: students of half the steps each, as checkpoints that ``molequi generate`` samples;
named errors for what cannot be distilled."""

import json
from pathlib import Path

import pytest

from molequi.cli.main import main
from molequi.models.generative.io import load_generative

DATA = Path(__file__).resolve().parents[2] / "data" / "qm9_geometries" / "qm9_geometries.extxyz"


@pytest.fixture()
def teacher(tiny_edm_checkpoint):
    return tiny_edm_checkpoint(16)


def test_distill_writes_each_student(teacher, tmp_path, capsys):
    out = tmp_path / "students"
    assert main(["distill", str(teacher), "--data", str(DATA), "--limit", "6", "--start-steps", "8",
                 "--rounds", "2", "--iterations", "4", "--batch-size", "4", "--out-dir", str(out)]) == 0
    a, b = load_generative(out / "student_4.pt"), load_generative(out / "student_2.pt")
    assert (a.config.sampling_steps, b.config.sampling_steps) == (4, 2)
    ref = load_generative(teacher)
    moved = max(float((pa - pr).abs().max().detach()) for pa, pr in zip(a.parameters(), ref.parameters()))
    assert moved > 0  # trained, not a copy of the teacher
    summary = json.loads((out / "distill.json").read_text())
    assert summary["molecules"] == 6 and summary["start_steps"] == 8 and len(summary["students"]) == 2
    assert "student_2.pt" in capsys.readouterr().out
    # an earlier student is the default teacher of the next halving: 2 -> 1
    assert main(["distill", str(out / "student_2.pt"), "--data", str(DATA), "--limit", "3", "--rounds", "1",
                 "--iterations", "2", "--batch-size", "2", "--out-dir", str(out)]) == 0
    assert load_generative(out / "student_1.pt").config.sampling_steps == 1
    assert main(["generate", str(out / "student_1.pt"), "--n", "2", "--out", str(tmp_path / "m.sdf")]) == 0


def test_distill_named_errors(teacher, tmp_path, capsys):
    base = ["distill", str(teacher), "--data", str(DATA), "--limit", "3", "--iterations", "1",
            "--out-dir", str(tmp_path / "s")]
    assert main([*base, "--start-steps", "12", "--rounds", "3"]) == 1  # 12 cannot be halved 3 times
    assert "cannot be halved" in capsys.readouterr().err
    assert main([*base, "--start-steps", "32", "--rounds", "1"]) == 1  # beyond T = 16
    assert "exceeds" in capsys.readouterr().err
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\n\nXx 0 0 0\n")
    assert main(["distill", str(teacher), "--data", str(bad), "--out-dir", str(tmp_path / "s")]) == 1
    assert not (tmp_path / "s" / "student_8.pt").exists()
    sulfur = tmp_path / "s.xyz"
    sulfur.write_text("2\n\nH 0 0 0\nH 0 0 0.74\n2\n\nS 0 0 0\nH 0 0 1.34\n")
    assert main(["distill", str(teacher), "--data", str(sulfur), "--out-dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "[16]" in err and "frame 1" in err
