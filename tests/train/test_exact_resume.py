"""A tiny MACE killed by SIGKILL five times (twice between steps, once inside a checkpoint write, once
inside a validation round, once right after a checkpoint is in place) and resumed each time with ``--resume auto`` ends bitwise equal to the same run
uninterrupted: weights, EMA weights, optimiser and plateau-scheduler state, data position and every logged
metric. No checkpoint file is ever unreadable."""

from conftest import morse_structures
from resume_harness import check_checkpoints, compare, mace_config, run_to_end, run_with_kills

MAX_STEPS = 14  # 8 training structures, batch 3: epochs of 3 batches, so kills fall mid-epoch and at ends


def write_data(path):
    from ase.io import write

    from molequi.data.records import data_to_atoms

    write(path, [data_to_atoms(r) for r in morse_structures(10, seed=3)], format="extxyz")


def test_killed_and_resumed_mace_equals_the_uninterrupted_run(tmp_path):
    data = tmp_path / "morse.xyz"
    write_data(data)
    ref_cfg = mace_config(tmp_path / "reference", data, MAX_STEPS)
    run_to_end(ref_cfg)
    cfg = mace_config(tmp_path / "killed", data, MAX_STEPS)
    report = run_with_kills(cfg, [("after", 4), ("write", 6), ("val", 8), ("saved", 10), ("after", 11)])
    # between-steps kills leave a checkpoint at or after the target; a kill inside the write of step 6 leaves
    # step 5's; a kill inside the validation after step 8 leaves step 7's (step 8 is saved after its round)
    assert report[0]["last_step"] >= 4 and report[4]["last_step"] >= 11, report
    assert report[1]["last_step"] == 5 and report[2]["last_step"] == 7 and report[3]["last_step"] == 10, report
    assert all(not r["unreadable"] for r in report), report
    run = tmp_path / "killed" / "run"
    assert not check_checkpoints(run / "checkpoints")
    assert len(list((run / "logs").glob("version_*"))) == 6  # five kills, six launches
    diffs = compare(tmp_path / "reference" / "run", run)
    assert diffs == [], "\n".join(diffs)
