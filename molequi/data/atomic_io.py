"""Atomic file writes: write a temporary file in the target's folder, then ``os.replace`` it into place.

A reader never sees a half-written cache or dataset file, and an interrupted write leaves the old file (or
nothing) behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file beside ``path`` and rename it to ``path`` when done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_torch(obj, path: str | os.PathLike) -> None:
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_torch"]
