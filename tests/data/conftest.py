"""Make ``fuzz_helpers`` importable from the test modules (pytest runs with --import-mode=importlib).

Appended, not prepended, to ``sys.path``: other folders' tests import their own ``conftest`` by name and must
not find this one first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parent))
