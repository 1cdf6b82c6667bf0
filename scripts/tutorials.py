"""Run the Markdown tutorials in tutorials/: every fenced ```python and ```bash block, in order.

    python scripts/tutorials.py tutorials/train_md.md                 # full size, as a reader would
    python scripts/tutorials.py --quick tutorials/*.md                # reduced mode (what CI runs)

Conventions a tutorial follows (tests/test_tutorials.py runs each one in reduced mode in the test suite):

* Every ```python and ```bash block runs, top to bottom, in a fresh working folder where the repository's
  folders ``data``, ``tutorials``, ``configs``, ``molequi``, ``scripts`` and ``tests`` are linked, so the
  paths a reader types from the repository root work. Python blocks share one namespace; bash blocks run
  with ``bash -euo pipefail`` and the venv's ``molequi`` first on PATH. A block that is shown but must not
  run (a placeholder file name, a GPU command) says so in its info string: ```python norun or ```bash norun.
  The report counts them.
* Reduced mode sets ``MOLEQUI_TUTORIAL_QUICK=1``; a tutorial reads it to shrink models and step counts
  (``QUICK = os.environ.get("MOLEQUI_TUTORIAL_QUICK") == "1"`` in Python,
  ``[ -n "${MOLEQUI_TUTORIAL_QUICK:-}" ] && ...`` in bash).
* A tutorial ends with something a person can look at, declared in an HTML comment anywhere in the file:
  ``<!-- tutorial-outputs: energy.png errors.csv -->``. After the last block the runner checks that each file
  exists and is not trivial: a PNG of at least 64x64 pixels that is not one flat colour, a CSV with a header
  and at least one row holding a finite number, a Markdown table with at least one data row.

Writes ``tutorial_report.json`` into the working folder (blocks run and skipped, seconds per block, outputs
checked, and the lines each block printed that start with ``RAN:``: what a block chose to do, so a path taken
only when an optional package is present is reported, never skipped silently). Exits 1 naming the block
(file and line) that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("data", "tutorials", "configs", "molequi", "scripts", "tests")
RUNNABLE = ("python", "bash")
_FENCE = re.compile(r"^(```+|~~~+)\s*([^`]*)$")
_OUTPUTS = re.compile(r"<!--\s*tutorial-outputs:\s*(.*?)\s*-->", re.S)


class TutorialError(RuntimeError):
    """A tutorial block failed, or an output it promises is missing or trivial."""


@dataclass
class Block:
    language: str
    info: str
    code: str
    line: int  # 1-based line of the opening fence

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and "norun" not in self.info.split()[1:]


@dataclass
class Tutorial:
    path: Path
    blocks: list[Block]
    outputs: list[str] = field(default_factory=list)


def parse(path: str | Path) -> Tutorial:
    """The fenced code blocks of a Markdown file and the outputs it declares."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    blocks, open_fence, lines, start, info = [], None, [], 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if open_fence is None:
            match = _FENCE.match(stripped)
            if match:
                open_fence, info, start, lines = match.group(1), match.group(2).strip(), number, []
        elif stripped == open_fence:
            language = info.split()[0].lower() if info else ""
            blocks.append(Block(language, info, "\n".join(lines) + "\n", start))
            open_fence = None
        else:
            lines.append(line)
    if open_fence is not None:
        raise TutorialError(f"{path}:{start}: code fence {open_fence} is never closed")
    outputs = [name for group in _OUTPUTS.findall(text) for name in group.split()]
    return Tutorial(path, blocks, outputs)


def check_output(path: Path) -> str:
    """A one-line description of a non-trivial output file; TutorialError when it is missing or trivial."""
    if not path.is_file() or path.stat().st_size == 0:
        raise TutorialError(f"promised output {path.name} was not written")
    suffix = path.suffix.lower()
    if suffix == ".png":
        import matplotlib.image as mpimg
        import numpy as np

        image = np.asarray(mpimg.imread(path), dtype=float)
        if image.ndim < 2 or min(image.shape[:2]) < 64:
            raise TutorialError(f"{path.name}: image of shape {image.shape} is too small to show anything")
        if float(image.std()) < 1e-3:
            raise TutorialError(f"{path.name}: the image is one flat colour")
        return f"{path.name}: PNG {image.shape[1]}x{image.shape[0]}"
    if suffix == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        numbers = [float(v) for row in rows[1:] for v in row if _is_number(v) and math.isfinite(float(v))]
        if len(rows) < 2 or not numbers:
            raise TutorialError(f"{path.name}: a CSV table needs a header and a row with a finite number")
        return f"{path.name}: CSV, {len(rows) - 1} rows"
    if suffix == ".md":
        rows = [r for r in path.read_text().splitlines() if r.startswith("|")]
        data = [r for r in rows[2:] if any(_is_number(c.strip()) for c in r.strip("|").split("|"))]
        if len(rows) < 3 or not data:
            raise TutorialError(f"{path.name}: a Markdown table needs a header, a rule and a row of numbers")
        return f"{path.name}: table, {len(rows) - 2} rows"
    return f"{path.name}: {path.stat().st_size} bytes"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _environment(quick: bool) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MOLEQUI_REPO"] = str(ROOT)
    if quick:
        env["MOLEQUI_TUTORIAL_QUICK"] = "1"
    else:
        env.pop("MOLEQUI_TUTORIAL_QUICK", None)
    return env


def prepare_workdir(workdir: Path) -> None:
    """Link the repository folders a tutorial reads, so repository-relative paths work there."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = workdir / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)


class _Tee(io.TextIOBase):
    """Writes to the real stream and keeps a copy (for the RAN: lines of the report)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def run(path: str | Path, workdir: str | Path, quick: bool = True) -> dict:
    """Run one tutorial in ``workdir``; returns the report (also written as tutorial_report.json)."""
    tutorial = parse(path)
    workdir = Path(workdir).resolve()
    prepare_workdir(workdir)
    env = _environment(quick)
    report = {"tutorial": str(Path(path)), "quick": quick, "blocks": [], "not_run": [], "outputs": [],
              "ran": []}
    namespace = {"__name__": "__tutorial__"}
    old_env, old_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(workdir)
    start_all = time.perf_counter()
    try:
        for block in tutorial.blocks:
            where = f"{tutorial.path}:{block.line}"
            if not block.runs:
                if block.language in RUNNABLE:
                    report["not_run"].append(where)
                continue
            print(f"--- {where} ({block.language})", flush=True)
            start, cpu = time.perf_counter(), time.process_time()
            tee = _Tee(sys.stdout)
            if block.language == "python":
                try:
                    with contextlib.redirect_stdout(tee):
                        exec(compile(block.code, where, "exec"), namespace)
                except Exception as error:
                    traceback.print_exc()
                    raise TutorialError(f"{where}: python block failed: {type(error).__name__}: {error}") \
                        from error
                printed = tee.copy.getvalue()
            else:
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                sys.stdout.write(done.stdout)
                printed = done.stdout
                if done.returncode != 0:
                    tail = "\n".join(done.stdout.splitlines()[-30:])
                    raise TutorialError(f"{where}: bash block exited with {done.returncode}; "
                                        f"its last output:\n{tail}")
            report["ran"] += [line[4:].strip() for line in printed.splitlines() if line.startswith("RAN:")]
            report["blocks"].append({"where": where, "language": block.language,
                                     "wall_s": round(time.perf_counter() - start, 2),
                                     "cpu_s_python": round(time.process_time() - cpu, 2)})
        for name in tutorial.outputs:
            report["outputs"].append(check_output(workdir / name))
    finally:
        report["wall_s"] = round(time.perf_counter() - start_all, 2)
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        (workdir / "tutorial_report.json").write_text(json.dumps(report, indent=1))
    if not report["blocks"]:
        raise TutorialError(f"{tutorial.path}: no runnable block")
    if not tutorial.outputs:
        raise TutorialError(f"{tutorial.path}: declares no output (<!-- tutorial-outputs: FILE ... -->)")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/tutorials.py", description=__doc__.split("\n")[0])
    parser.add_argument("tutorials", nargs="+", help="Markdown files to run, in order")
    parser.add_argument("--quick", action="store_true",
                        help="reduced mode (MOLEQUI_TUTORIAL_QUICK=1): tiny models and few steps, as in CI")
    parser.add_argument("--workdir", default=None,
                        help="folder to run in (a sub-folder per tutorial; default: a new temporary folder)")
    args = parser.parse_args(argv)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="molequi_tutorials_"))
    for path in args.tutorials:
        try:
            report = run(path, base / Path(path).stem, quick=args.quick)
        except TutorialError as error:
            print(f"TUTORIAL FAILED: {error}", file=sys.stderr)
            return 1
        print(f"=== {path}: {len(report['blocks'])} blocks run, {len(report['not_run'])} shown only, "
              f"{report['wall_s']} s; outputs: {'; '.join(report['outputs'])}; in {base / Path(path).stem}")
        for line in report["ran"]:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
