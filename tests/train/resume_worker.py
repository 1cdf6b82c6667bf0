"""``molequi`` CLI under deterministic CPU settings, for the kill-and-resume tests and benchmark.

One thread, ``torch.use_deterministic_algorithms(True)``. When ``MOLEQUI_TEST_PAUSE_AT_STEP`` is set, the
checkpoint write of that global step stops inside the temporary file, after its bytes are written and before
the rename (the file named by ``MOLEQUI_TEST_PAUSE_MARKER`` is created then), and sleeps: the caller kills
the process there to test that a write interrupted by SIGKILL leaves the previous checkpoint whole.
``MOLEQUI_TEST_PAUSE_IN_VALIDATION_AT_STEP`` likewise stops inside the validation round at that global step
(after its first batch). ``MOLEQUI_TEST_PAUSE_AFTER_SAVE_AT_STEP`` stops right after ``last.ckpt`` of that
step is complete (renamed into place), before anything else the step does. Nothing
here changes molequi; it wraps ``molequi.io.atomic_write`` from the outside.
"""

import os
import sys
import time

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny_model  # noqa: E402

tiny_model.register()

import molequi.io  # noqa: E402

PAUSE_AT = os.environ.get("MOLEQUI_TEST_PAUSE_AT_STEP")
SAVED_AT = os.environ.get("MOLEQUI_TEST_PAUSE_AFTER_SAVE_AT_STEP")
if PAUSE_AT is not None or SAVED_AT is not None:
    _atomic_write = molequi.io.atomic_write

    def _pausing_write_torch(path, obj):
        step = obj.get("global_step") if isinstance(obj, dict) else None

        def write(fh):
            torch.save(obj, fh)
            if PAUSE_AT is not None and step == int(PAUSE_AT) and str(path).endswith(".ckpt"):
                fh.flush()
                open(os.environ["MOLEQUI_TEST_PAUSE_MARKER"], "w").close()
                time.sleep(600)
        result = _atomic_write(path, write)
        if SAVED_AT is not None and step == int(SAVED_AT) and str(path).endswith("last.ckpt"):
            open(os.environ["MOLEQUI_TEST_PAUSE_MARKER"], "w").close()
            time.sleep(600)
        return result

    import molequi.train.run  # noqa: E402

    molequi.train.run.atomic_write_torch = _pausing_write_torch

VAL_PAUSE_AT = os.environ.get("MOLEQUI_TEST_PAUSE_IN_VALIDATION_AT_STEP")
if VAL_PAUSE_AT is not None:
    import molequi.train.module  # noqa: E402

    _validation_step = molequi.train.module.TaskModule.validation_step

    def _pausing_validation_step(self, batch, batch_idx):
        _validation_step(self, batch, batch_idx)
        if self.global_step == int(VAL_PAUSE_AT) and not self.trainer.sanity_checking:
            open(os.environ["MOLEQUI_TEST_PAUSE_MARKER"], "w").close()
            time.sleep(600)

    molequi.train.module.TaskModule.validation_step = _pausing_validation_step

from molequi.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
