"""``molequi quickstart`` compiles its timed training only where Inductor can build kernels (a C++ compiler on
PATH or in $CXX), and says so in its config; ``--quick`` stays eager."""

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
