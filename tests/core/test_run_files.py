"""What a run folder's files survive: temporaries of killed writes, a full disk, a half-written
metrics.jsonl, and checkpoints that carry code."""

import errno
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from col775 import cli
from col775.core.runs import RunDir, RunFolderError, read_run, rng_state, set_rng_state
from tests.core.tiny_resnet import train_args


def _model():
    torch.manual_seed(0)
    return {"model": torch.nn.Linear(3, 2)}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: nothing runs under this PID now
    return child.pid


def _temporaries(folder):
    return sorted(p.name for p in folder.rglob(".*.tmp*"))


def test_opening_a_run_removes_every_temporary_even_one_whose_pid_was_reused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    dead, reused = _dead_pid(), os.getppid()  # a killed writer's PID that a live process now carries
    stale = [
        run / "checkpoints" / f".last.pt.tmp{dead}", run / "checkpoints" / f".best.pt.tmp{dead}",
        run / f".config.yaml.tmp{dead}", run / f".metrics.json.tmp{dead}", run / f".metrics.jsonl.tmp{dead}",
    ]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    (run / "checkpoints" / f".last.pt.tmp{reused}").write_bytes(b"")
    (run / "keep.tmp1").write_bytes(b"")  # not an atomic write's temporary: not ours to remove
    RunDir(run, {}).close()
    assert _temporaries(run) == []
    assert (run / "keep.tmp1").is_file()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_checkpoint_is_one_error_naming_the_folder_and_leaves_no_temporary(
    tmp_path, monkeypatch
):
    run = RunDir(tmp_path / "run", {})
    run.save_checkpoint(0, _model())
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(RunFolderError) as caught:
        run.save_checkpoint(1, _model(), best=True)
    stats = os.statvfs(tmp_path)
    free_mib = float(str(caught.value).split(" MiB free in ")[0].rsplit("(", 1)[1])
    assert free_mib == pytest.approx(stats.f_bavail * stats.f_frsize / 2**20, abs=64)
    assert f"free in {tmp_path / 'run' / 'checkpoints'}" in str(caught.value)
    assert _temporaries(tmp_path / "run") == []
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before  # the old one is intact


def test_a_full_disk_ends_the_command_with_one_line(tmp_path, monkeypatch, capsys, resnet_cache):
    monkeypatch.setattr(os, "fsync", _no_space)
    code = cli.main(train_args(resnet_cache, tmp_path / "run", epochs=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"col775: error: no space left on the device writing {tmp_path / 'run'}")
    assert _temporaries(tmp_path / "run") == []


def _two_epochs(folder):
    run = RunDir(folder, {})
    for epoch in range(2):
        run.log_epoch({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
        run.save_checkpoint(epoch, _model())
    run.close()
    return folder / "metrics.jsonl"


def test_resume_drops_a_half_written_last_line(tmp_path):
    history = _two_epochs(tmp_path / "run")
    with open(history, "a") as handle:
        handle.write('{"epoch": 2, "loss": 0.3')  # killed while appending epoch 2's record
    run = RunDir(tmp_path / "run", {})
    assert run.resume(_model())[0] == 2
    assert [json.loads(line)["epoch"] for line in history.read_text().splitlines()] == [0, 1]


@pytest.mark.parametrize("damage", ["middle", "last-not-an-object"])
def test_other_damage_to_metrics_jsonl_names_the_file_and_line(tmp_path, damage):
    history = _two_epochs(tmp_path / "run")
    lines = history.read_text().splitlines()
    if damage == "middle":
        lines[0] = lines[0][:10]
        number = 1
    else:
        lines.append("[1, 2]")
        number = 3
    history.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{history} line {number} "):
        RunDir(tmp_path / "run", {}).resume(_model())
    with pytest.raises(ValueError, match=f"{history} line {number} "):
        read_run(tmp_path / "run")


class Payload:
    """Unpickling this runs code: it touches a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_naming_the_file(tmp_path):
    run = RunDir(tmp_path / "run", {})
    run.save_checkpoint(0, _model())
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    marker = tmp_path / "code-ran"
    state["extra"] = {"note": Payload(marker)}
    torch.save(state, last)
    with pytest.raises(RunFolderError, match=f"{last} holds pickled objects .*refused"):
        run.resume(_model())
    assert not marker.exists()


def test_rng_state_survives_a_weights_only_checkpoint_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.normal()  # leave a cached Gaussian in both generators
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.gauss(0, 1), random.random(), np.random.normal(), np.random.rand(5), torch.rand(5))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    drawn = (random.gauss(0, 1), random.random(), np.random.normal(), np.random.rand(5), torch.rand(5))
    assert drawn[:3] == expected[:3]
    assert np.array_equal(drawn[3], expected[3]) and torch.equal(drawn[4], expected[4])
