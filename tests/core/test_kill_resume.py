"""Ten SIGKILLs at seeded random moments, some of them inside checkpoint writes, then one run to the end:
the result is the uninterrupted run's, and no temporary file is left behind."""

import json
import os
import random
import signal
import statistics
import time

import pytest

from tests.core.tiny_resnet import train_args

EPOCHS = 5
CYCLES = 10


def _temporaries(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp*"))


def _holder(folder):
    try:
        return int((folder / ".lock").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _saving(folder, name: str, pid: int) -> bool:
    """Whether process `pid` is writing checkpoints/`name` (its temporary exists)."""
    return (folder / "checkpoints" / f".{name}.tmp{pid}").exists()


def _flat(record: dict, prefix: str = "") -> dict:
    """The record with "a/b" keys for nested ones, without timings (they differ from run to run)."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}/")
        elif "per_second" not in key and not key.endswith("seconds"):
            flat[prefix + key] = value
    return flat


def _assert_same(got: dict, want: dict, story: str) -> None:
    got, want = _flat(got), _flat(want)
    assert got.keys() == want.keys(), story
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), (key, story)


def _read(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads((folder / "metrics.json").read_text())


def test_ten_kill_resume_cycles_end_like_an_uninterrupted_run(tmp_path, launcher, resnet_cache):
    logs = (tmp_path / "out", tmp_path / "err")
    assert launcher.run(train_args(resnet_cache, tmp_path / "straight", EPOCHS), *logs) == 0
    expected_history, expected = _read(tmp_path / "straight")
    train_images = expected["data"]["split_sizes"]["train"]
    epoch_seconds = 1.5 * train_images / statistics.median(r["images_per_second"] for r in expected_history)

    out = tmp_path / "killed"
    args = train_args(resnet_cache, out, EPOCHS)
    rng = random.Random(16)
    left_behind, story = [], []  # what each kill left, and how each cycle went (for a failure's message)
    in_writes = 0  # kills sent while the process's checkpoint temporary existed
    for _ in range(CYCLES):
        pid = launcher.start(args, *logs)
        deadline = time.monotonic() + 60
        while _holder(out) != pid and time.monotonic() < deadline:  # it holds the folder: about to resume
            time.sleep(0.001)
        if rng.random() < 0.5:  # while it writes its next last.pt or best.pt
            moment = rng.choice(["last.pt", "best.pt"])
            deadline = time.monotonic() + 10 * epoch_seconds
            while not _saving(out, moment, pid) and time.monotonic() < deadline:
                time.sleep(0.0005)
            in_writes += _saving(out, moment, pid)
        else:  # anywhere in the next two epochs: resuming, training, evaluating, logging, saving
            moment = rng.uniform(0, 2 * epoch_seconds)
            time.sleep(moment)
        os.kill(pid, signal.SIGKILL)
        code = launcher.wait(pid)
        assert code in (-signal.SIGKILL, 0), (tmp_path / "err").read_text()[-2000:]
        left_behind += _temporaries(out)
        saved = len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").is_file() else 0
        story.append(f"pid {pid} killed at {moment} (exit {code}), metrics.jsonl lines {saved}, {_temporaries(out)}")
    assert launcher.run(args, *logs) == 0, (tmp_path / "err").read_text()[-2000:]

    print(f"temporaries the kills left (each removed by the next run): {left_behind}; kills inside writes: {in_writes}")
    # A kill sent while a temporary existed leaves it behind. On a loaded machine the polling can miss every
    # write (the checkpoints are small); then there is nothing to check here, and the rest still holds.
    story = "\n".join(story)
    if in_writes:
        assert any(".pt.tmp" in name for name in left_behind), story
    assert _temporaries(out) == [], story
    history, resumed = _read(out)
    _assert_same(resumed, expected, story)
    assert len(history) == len(expected_history) == EPOCHS, story
    for got, want in zip(history, expected_history):
        _assert_same(got, want, story)
