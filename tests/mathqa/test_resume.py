"""A MathQA run killed (SIGKILL) in the middle of an epoch and started again with the same command
ends with the same numbers as a run that was never interrupted."""

import json
import signal
import subprocess
import sys

import pytest

from col775.cli import main
from col775.mathqa import synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ("seconds", "train/examples_per_second", "train_examples_per_second", "train_minutes")

# Runs the command in a child process that kills itself with SIGKILL when training reaches update STEP
# (counted over the whole run): a kill at a known point of an epoch, as sudden as a real one.
KILL_AT_STEP = """
import os, signal, sys
from col775.mathqa import train
from col775.cli import main
update, steps = train.optimise, []
def optimise(*args, **kwargs):
    steps.append(1)
    if len(steps) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return update(*args, **kwargs)
train.optimise = optimise
main(sys.argv[2:])
"""


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def outcome(out) -> tuple[list[dict], dict]:
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return without_timing(history), without_timing([json.loads((out / "metrics.json").read_text())])[0]


def test_sigkill_mid_epoch_then_same_command_equals_an_uninterrupted_run(tmp_path):
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=64, n_dev=12, n_test=8, seed=3)

    def command(out):  # 4 updates per epoch; dropout and teacher forcing below 1 both draw random numbers
        return ["mathqa", "train", "--data", str(folder), "--out", str(out), "--glove", "random",
                "--embedding-dim", "8", "--hidden-size", "16", "--target-embedding-dim", "8", "--epochs", "2",
                "--batch-size", "16", "--beam-size", "2", "--max-decode-len", "16", "--dropout", "0.3",
                "--teacher-forcing", "0.5", "--lr", "3e-3", "--warmup-steps", "2", "--patience", "0", "--device", "cpu", "--seed", "5"]

    assert main(command(tmp_path / "whole")) == 0
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, "6", *command(tmp_path / "killed")],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    history = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(history) == 1 and not (tmp_path / "killed" / "metrics.json").exists()  # killed in epoch 2
    assert main(command(tmp_path / "killed")) == 0
    resumed, whole = outcome(tmp_path / "killed"), outcome(tmp_path / "whole")
    assert [row["epoch"] for row in resumed[0]] == [0, 1]
    assert resumed == whole
