"""Shared pieces of the reader fuzzers: byte-level mutations of a real seed file and the settings.

Every fuzzer is derandomised (``derandomize=True``: the same examples on every run and machine, so a crash
seen once is seen again) and runs at least ``MIN_EXAMPLES`` examples.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

MIN_EXAMPLES = 1000
FUZZ = settings(max_examples=MIN_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# tokens that make numeric and layout parsers misbehave: non-finite values, overflow, Mathematica
# exponents (QM9), huge counts, separators, quotes and line breaks
TEXT_TOKENS = [b"nan", b"inf", b"-inf", b"-", b"Xx", b"0", b"-1", b"1e400", b"*^-6", b"99999999999",
               b"2147483648", b'"', b",", b"=", b":", b"\n", b"\r\n", b" ", b"\t", b"\x00", b"\xff\xfe"]


@st.composite
def mutated(draw, seed: bytes, tokens=TEXT_TOKENS, max_ops: int = 6) -> bytes:
    """``seed`` with 1..max_ops random edits: byte flips, deletions, insertions, truncation, tokens."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "token"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from(tokens))
    return bytes(data)


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for the mutated files (module level: hypothesis examples cannot take tmp_path),
    removed when the test process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
