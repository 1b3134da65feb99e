"""Ctrl-C ends a training run with one line saying where it stopped, and the same command resumes it."""

import json
import os
import re
import signal

from tests.core.tiny_resnet import train_args, wait_for

EPOCHS = 4


def test_ctrl_c_says_where_the_run_stopped_and_the_same_command_resumes(tmp_path, launcher, resnet_cache):
    args = train_args(resnet_cache, tmp_path / "run", EPOCHS)
    pid = launcher.start(args, tmp_path / "out", tmp_path / "err")
    wait_for(tmp_path / "err", "epoch 1: train acc")  # logged once epoch 1 is saved
    os.kill(pid, signal.SIGINT)
    assert launcher.wait(pid) == 130
    err = (tmp_path / "err").read_text()
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    stopped = re.fullmatch(r"col775: interrupted at epoch (\d+), step (\d+); run the same command to resume", last)
    assert stopped, last
    epoch, step = int(stopped[1]), int(stopped[2])
    assert 1 <= epoch <= EPOCHS and 0 <= step <= 7
    saved = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the epoch it names is the first one not finished, or the one just saved when Ctrl-C came between its
    # save and the next epoch's first batch: then it names all 7 of its steps (epoch 1, step 7 here)
    assert saved in (list(range(epoch - 1)), list(range(epoch)))
    if saved == list(range(epoch)):
        assert step == 7, (epoch, step)

    assert launcher.run(args, tmp_path / "out", tmp_path / "err") == 0
    assert f"resuming {tmp_path / 'run'} at epoch {len(saved) + 1}" in (tmp_path / "err").read_text()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(EPOCHS))
    assert (tmp_path / "run" / "metrics.json").is_file()
