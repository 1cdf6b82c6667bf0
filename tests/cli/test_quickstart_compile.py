"""``molequi quickstart --compile`` trains compiled where Inductor can build kernels (a C++ compiler on PATH
or in $CXX) and refuses, before any work, where it cannot; the default and ``--quick`` stay eager."""

import sys

from molequi.cli.quickstart import compiler_available, quickstart_config


def test_compiler_found_through_cxx_or_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++ / clang++
    monkeypatch.delenv("CXX", raising=False)
    assert not compiler_available()
    monkeypatch.setenv("CXX", sys.executable)  # any executable named by $CXX counts
    assert compiler_available()
    monkeypatch.delenv("CXX")
    fake = tmp_path / "g++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert compiler_available()


def test_config_carries_the_choice(tmp_path):
    assert quickstart_config(str(tmp_path), 60.0, compile=True).trainer.compile is True
    assert quickstart_config(str(tmp_path), None, max_steps=100).trainer.compile is False


def test_compile_without_a_compiler_is_refused_before_training(monkeypatch, tmp_path, capsys):
    from molequi.cli.main import build_parser

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    args = build_parser().parse_args(["quickstart", "--compile", "--out", str(tmp_path / "out")])
    import pytest

    from molequi.errors import ConfigError

    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        args.func(args)
    assert not (tmp_path / "out").exists()
