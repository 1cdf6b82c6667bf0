"""Every tutorial in tutorials/ runs in CI, in reduced mode (MOLEQUI_TUTORIAL_QUICK=1), through the runner
scripts/tutorials.py: each ```python / ```bash block in order, then the figure or table it promises must exist
and not be trivial. One test per tutorial, so pytest-xdist spreads them over the workers. The numbers inside
the tutorials are asserted by the tutorials themselves against independent references (energy conservation,
finite differences, ASE, RDKit, PySCF, numpy baselines); this file checks that they ran and what they ran."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.md"))
_spec = importlib.util.spec_from_file_location("molequi_tutorial_runner", ROOT / "scripts" / "tutorials.py")
runner = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(runner)


def test_every_tutorial_is_collected():
    names = {p.name for p in TUTORIALS}
    assert {"01_data_graphs_symmetry.md", "generation.md", "train_md.md", "qm9_property.md", "oc20_s2ef.md",
            "hamiltonian.md", "check_your_model.md", "import_mace.md", "active_learning.md"} <= names, names


@pytest.mark.tutorial
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_reduced_mode(path, tmp_path):
    tutorial = runner.parse(path)
    assert tutorial.outputs, f"{path.name} promises no figure or table (<!-- tutorial-outputs: ... -->)"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tutorials.py"), "--quick", "--workdir",
                           str(tmp_path), str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:]
    report = json.loads((tmp_path / path.stem / "tutorial_report.json").read_text())
    assert len(report["blocks"]) == sum(b.runs for b in tutorial.blocks) > 0
    assert len(report["outputs"]) == len(tutorial.outputs)
    if path.stem == "import_mace":  # which way it went (mace-torch present or the shipped export) is reported
        assert any("mace-torch" in line for line in report["ran"]), report["ran"]
    # what ran, visible in the test log (-rA)
    print(f"{path.name}: {len(report['blocks'])} blocks in {report['wall_s']} s, "
          f"{len(report['not_run'])} shown only; {report['outputs']}; {report['ran']}")


def _write(tmp_path, text):
    path = tmp_path / "t.md"
    path.write_text(text)
    return path


def test_runner_runs_python_and_bash_in_order_and_checks_outputs(tmp_path):
    path = _write(tmp_path, "<!-- tutorial-outputs: t.csv -->\n```python\nx = 2\nprint('RAN: python')\n```\n"
                  "```bash\necho \"a,b\" > t.csv\n```\n```python norun\nraise SystemExit(3)\n```\n"
                  "```python\nopen('t.csv', 'a').write(f'{x},1.5\\n')\n```\n")
    report = runner.run(path, tmp_path / "w")
    assert [b["language"] for b in report["blocks"]] == ["python", "bash", "python"]
    assert report["not_run"] == [f"{path}:9"] and report["ran"] == ["python"]
    assert (tmp_path / "w" / "t.csv").read_text() == "a,b\n2,1.5\n"


CSV = "<!-- tutorial-outputs: t.csv -->\n"


@pytest.mark.parametrize("text, message", [
    (CSV + "```python\nassert 1 == 2, 'wrong'\n```\n", "t.md:2: python block failed"),
    (CSV + "```bash\nfalse\necho never\n```\n", "t.md:2: bash block exited with 1"),
    (CSV + "```python\nopen('t.csv', 'w').write('a,b\\n')\n```\n", "needs a header"),
    ("<!-- tutorial-outputs: t.png -->\n```python\n"
     "import matplotlib.pyplot as plt\nplt.figure().savefig('t.png')\n```\n", "one flat colour"),
    ("<!-- tutorial-outputs: missing.md -->\n```python\nx = 1\n```\n", "missing.md was not written"),
    ("```python\nx = 1\n```\n", "declares no output"),
    (CSV + "```python\nx = 1\n", "never closed"),
])
def test_runner_fails_loudly(tmp_path, text, message):
    with pytest.raises(runner.TutorialError, match=message):
        runner.run(_write(tmp_path, text), tmp_path / "w")
