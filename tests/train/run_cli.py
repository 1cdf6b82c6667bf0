"""``molequi`` CLI with the test-only ``tiny`` model registered (used by subprocess tests)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny_model  # noqa: E402

tiny_model.register()

from molequi.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
