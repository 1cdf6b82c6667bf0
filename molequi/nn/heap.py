"""Keep freed memory in the heap during allocation-heavy inference loops (glibc only; a no-op elsewhere).

Under ``torch.no_grad()`` each intermediate tensor is freed as soon as the next operation has read it. glibc's
malloc gives large blocks back to the kernel (it trims the top of the heap once more than a few MB are free,
or maps blocks above its mmap threshold separately), so the next operation maps fresh pages and takes a page
fault on every 4 KiB it touches. In a denoising step of the paper-size EDM (16 QM9 molecules, 5,182 edges x
256 features = 5.3 MB per edge tensor) that was ~100,000 minor page faults and about a third of the step's
CPU time. Training keeps its intermediates alive within a step, but frees the whole autograd graph after it,
and the next step faults the same memory in again (MACE force training, 288 atoms, float32: ~13 % of a step).

``retained_heap()`` raises glibc's ``M_TOP_PAD`` for the duration of a loop: the heap keeps that much free
memory at its top instead of trimming it, and large blocks are served from it instead of fresh mappings.
The training loop (``molequi.train``) runs inside it as well.
On exit the pad goes back to glibc's default (128 KiB) and ``malloc_trim(0)`` returns the free memory.
Setting any of these parameters turns glibc's dynamic mmap threshold off for the rest of the process (it
stays at the value it had reached). Results are bit-identical; only where memory comes from changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform

_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # mallopt parameter numbers from <malloc.h>
_DEFAULT_TOP_PAD = 128 * 1024
_state = {"libc": None, "depth": 0}


def _glibc():
    if _state["libc"] is None:
        lib = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):
                lib = False
        _state["libc"] = lib
    return _state["libc"] or None


@contextlib.contextmanager
def retained_heap(pad_bytes: int = 256 * 1024 * 1024, mmap_threshold: int | None = None):
    """Within the block, freed memory up to ``pad_bytes`` stays in the process heap (see module docstring).

    ``mmap_threshold``: blocks up to this size come from the heap, larger ones from their own mapping (glibc's
    ``M_MMAP_THRESHOLD``, left set after the block). For a block entered early in a process, before glibc's
    dynamic threshold has grown past its 128 KiB start: without it, every tensor above 128 KiB would be a
    fresh mapping, the opposite of the intent (force training of the quickstart MACE: 2x slower steps).

    Nested uses keep the outermost setting. Yields True where it took effect (glibc), False elsewhere.
    """
    lib = _glibc()
    if lib is None:
        yield False
        return
    outer = _state["depth"] == 0
    if outer:
        if mmap_threshold is not None:
            lib.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
        lib.mallopt(_M_TOP_PAD, int(pad_bytes))
    _state["depth"] += 1
    try:
        yield True
    finally:
        _state["depth"] -= 1
        if outer:
            lib.mallopt(_M_TOP_PAD, _DEFAULT_TOP_PAD)
            lib.malloc_trim(0)


__all__ = ["retained_heap"]
