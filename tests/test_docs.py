"""The documentation names only what exists, and the source cites the documentation, not a machine.

- every path (``molequi/...``, ``tests/...``, ``scripts/...``, ``configs/...``, ``docs/...``) written in
  backticks in ``docs/architecture.md`` exists in the repository (a ``<placeholder>`` part, as in
  ``molequi/models/<name>.py``, stands for a file to create: its folder must exist);
- every dotted ``molequi.xxx`` name in backticks imports as a module, or is an attribute of one;
- every part of the package has a section, and each section's "Imports:" line is what its modules import
  (read from the source with ``tests/test_layering.py``'s import walk), no more and no less;
- inference (checkpoint, calculator, MD) loads neither Lightning nor the trainer, as the page says;
- the README links both documents, and no source file cites an absolute path of a development machine.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"
PATH_ROOTS = ("molequi/", "tests/", "scripts/", "configs/", "docs/")


def _code_spans(text: str) -> list[str]:
    """The contents of the `inline code` spans of a markdown text (fenced blocks included line by line)."""
    spans = re.findall(r"`([^`\n]+)`", text)
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        spans += block.split()
    return spans


def _paths(spans: list[str]) -> list[str]:
    out = []
    for span in spans:
        for token in re.split(r"[\s,()]+", span):
            token = token.rstrip(".:;")
            if token.startswith(PATH_ROOTS):
                out.append(token)
    return sorted(set(out))


def _dotted_names(spans: list[str]) -> list[str]:
    out = []
    for span in spans:
        out += re.findall(r"(?<![\w/.])molequi(?:\.[A-Za-z_]\w*)+", span)
    return sorted(set(out))


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and walk the rest as attributes (AttributeError or
    ImportError when something named does not exist)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name != ".".join(parts[:i]):
                raise  # the module exists but one of its own imports failed
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_architecture_paths_exist():
    spans = _code_spans(ARCHITECTURE.read_text())
    paths = _paths(spans)
    assert len(paths) > 20, "docs/architecture.md should name the files to touch"
    missing = []
    for p in paths:
        if "<" in p:  # a file to create: its folder must exist
            p = p[: p.index("<")].rpartition("/")[0]
        if "*" in p:
            if not list(REPO.glob(p)):
                missing.append(p)
        elif not (REPO / p.rstrip("/")).exists():
            missing.append(p)
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_architecture_modules_import():
    names = _dotted_names(_code_spans(ARCHITECTURE.read_text()))
    assert len(names) > 20
    broken = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            broken.append(f"{name} ({type(exc).__name__}: {exc})")
    assert not broken, f"docs/architecture.md names modules or objects that do not exist: {broken}"


def _import_map():
    spec = importlib.util.spec_from_file_location("_layering", REPO / "tests" / "test_layering.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.import_map()


def _part(module: str) -> str:
    """``molequi.data.md17`` -> ``molequi.data``: the package (or top-level module) a module belongs to."""
    return ".".join(module.split(".")[:2])


def package_imports() -> dict[str, set[str]]:
    """part of molequi -> the other parts its modules import."""
    out: dict[str, set[str]] = {}
    for module, targets in _import_map().items():
        if module == "molequi":
            continue
        part = _part(module)
        out.setdefault(part, set()).update(_part(t) for t in targets if _part(t) not in (part, "molequi"))
    return out


def documented_imports(text: str) -> dict[tuple[str, ...], set[str] | None]:
    """(parts named in a ``### `molequi.x``` heading) -> the parts its "Imports:" paragraph lists (None:
    "anything")."""
    out: dict[tuple[str, ...], set[str] | None] = {}
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    for section in sections:
        heading, _, body = section.partition("\n")
        parts = tuple(re.findall(r"`(molequi\.\w+)`", heading))
        if not parts:
            continue
        match = re.search(r"^Imports:(.*?)(?:\n\s*\n|\Z)", body, flags=re.M | re.S)
        assert match, f"section {heading!r} has no 'Imports:' line"
        listed = match.group(1)
        out[parts] = None if "anything" in listed else set(re.findall(r"`(molequi\.\w+)`", listed))
    return out


def test_architecture_imports_lines_are_true():
    actual = package_imports()
    documented = documented_imports(ARCHITECTURE.read_text())
    covered = {p for parts in documented for p in parts}
    assert set(actual) <= covered, f"parts of molequi without a section: {sorted(set(actual) - covered)}"
    wrong = []
    for parts, listed in documented.items():
        if listed is None:
            continue
        real = set().union(*(actual.get(p, set()) for p in parts)) - set(parts)
        if real != listed:
            wrong.append(f"{', '.join(parts)}: imports {sorted(real)}, page says {sorted(listed)}")
    assert not wrong, "update the 'Imports:' lines of docs/architecture.md:\n" + "\n".join(wrong)


def test_checker_rejects_what_does_not_exist():
    spans = _code_spans("see `molequi/no_such_module.py` and `molequi.models.no_such_builder`, or\n"
                        "```bash\npython scripts/no_such_script.py\n```\n")
    assert _paths(spans) == ["molequi/no_such_module.py", "scripts/no_such_script.py"]
    assert not (REPO / "molequi/no_such_module.py").exists()
    assert _dotted_names(spans) == ["molequi.models.no_such_builder"]
    with pytest.raises(AttributeError):
        resolve("molequi.models.no_such_builder")
    assert resolve("molequi.models.build_model").__name__ == "build_model"
    page = ("### `molequi.a`\n\nText.\n\nImports: `molequi.b`,\n`molequi.c`.\n\n"
            "### `molequi.d`, `molequi.e`\n\nImports: anything.\n")
    assert documented_imports(page) == {("molequi.a",): {"molequi.b", "molequi.c"},
                                        ("molequi.d", "molequi.e"): None}


def test_inference_loads_no_trainer():
    code = ("import sys, molequi.calculators, molequi.simulate, molequi.checkpoint\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'lightning' or "
            "m.startswith(('molequi.train', 'molequi.cli')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300)
    assert out.stdout.strip() == "[]", out.stdout


def test_readme_links_the_docs():
    readme = (REPO / "README.md").read_text()
    for doc in ("docs/architecture.md", "docs/formats.md"):
        assert f"]({doc})" in readme, doc
        assert (REPO / doc).is_file()


def test_source_cites_no_machine_paths():
    """Docstrings cite ``docs/formats.md``; no absolute path of a development machine anywhere in code."""
    pattern = re.compile(r"(?<![\w.])/(?:work|root|home)/|shared/docs/")
    offenders = []
    for folder in ("molequi", "scripts", "tests", "configs"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".sh", ".md") or path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
