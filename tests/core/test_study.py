"""The study runner: worker processes side by side with their threads and GPUs, failures, plans, options."""

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from col775.cli import build_parser
from col775.core.study import StudyOptions, Trainer, finished_runs, study_options, train_runs, write_plan


@dataclasses.dataclass
class Config:
    name: str
    fail: bool = False


def record_worker(config: Config, run_dir: Path, force: bool) -> None:
    """A stand-in training: notes its process, threads and GPU, then waits until two workers have noted
    theirs (so the test sees them run side by side)."""
    if config.fail:
        raise ValueError(f"run {config.name} was told to fail")
    seen = run_dir.parent / "workers"
    seen.mkdir(exist_ok=True)
    (seen / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(seen.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    run_dir.mkdir(parents=True)
    (run_dir / "seen.json").write_text(json.dumps({
        "pid": os.getpid(), "threads": torch.get_num_threads(), "omp": os.environ["OMP_NUM_THREADS"],
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "workers": len(list(seen.iterdir()))}))
    (run_dir / "config.yaml").write_text("{}")
    (run_dir / "metrics.json").write_text("{}")


def test_workers_run_side_by_side_with_their_threads_and_gpu_and_a_failure_stops_only_its_run(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # this process only: each of 2 workers gets 4 threads
    runs = {f"r{i}": Config(f"r{i}") for i in range(3)} | {"bad": Config("bad", fail=True)}
    failures = train_runs(runs, tmp_path, Trainer("none", record_worker), StudyOptions(jobs=2, gpus=["3", "5"]))
    assert list(failures) == ["bad"]
    assert failures["bad"].startswith("ValueError: run bad was told to fail (log ") and failures["bad"].endswith("bad.log)")
    assert "run bad was told to fail" in (tmp_path / "logs" / "bad.log").read_text()
    seen = [json.loads((tmp_path / f"r{i}" / "seen.json").read_text()) for i in range(3)]
    assert all(s["threads"] == 4 and s["omp"] == "4" and s["workers"] == 2 for s in seen)
    gpu_of = {s["pid"]: s["gpu"] for s in seen}
    assert os.getpid() not in gpu_of and len(gpu_of) == 2 and set(gpu_of.values()) == {"3", "5"}  # a GPU per worker
    assert set(finished_runs(runs, tmp_path)) == {"r0", "r1", "r2"}


def test_plan_writes_one_absolute_command_and_one_preset_per_run(tmp_path, monkeypatch):
    runs = {"a/seed-0": Config("a"), "b/seed-0": Config("b")}
    monkeypatch.chdir(tmp_path)
    write_plan(runs, Path("out"), Trainer("toy", record_worker, ("--flag",)), Path("plan.sh"), force=True)
    lines = [shlex.split(line) for line in (tmp_path / "plan.sh").read_text().splitlines() if not line.startswith("#")]
    out = tmp_path / "out"
    assert lines[1] == [sys.executable, "-m", "col775", "toy", "train", "--preset", str(out / "plan" / "b" / "seed-0.yaml"),
                        "--out", str(out / "b" / "seed-0"), "--flag", "--force"]
    assert yaml.safe_load((out / "plan" / "a" / "seed-0.yaml").read_text()) == {"name": "a", "fail": False}


@pytest.mark.parametrize("flags, expected", [
    ([], StudyOptions()),
    (["--seeds", "0,1,2", "--jobs", "3"], StudyOptions(seeds=[0, 1, 2], jobs=3)),
    (["--gpus", "0,1"], StudyOptions(jobs=2, gpus=["0", "1"])),
    (["--report-only", "--force"], StudyOptions(report_only=True, force=True)),
])
def test_study_flags(flags, expected):
    assert study_options(build_parser().parse_args(["resnet", "study", *flags])) == expected


@pytest.mark.parametrize("flags, message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--plan", "p.sh", "--report-only"], "give one of them"),
    (["--seeds", "0,a"], "--seeds takes whole numbers"),
])
def test_bad_study_flags_are_one_clear_error(flags, message):
    with pytest.raises(ValueError, match=message):
        study_options(build_parser().parse_args(["mathqa", "study", *flags]))


def test_a_plan_puts_the_runs_others_need_first_with_their_own_command(tmp_path):
    needed = {"vae": Config("vae")}
    runs = {"a": Config("a"), "b": Config("b")}
    write_plan(runs, tmp_path / "out", Trainer("toy", record_worker), tmp_path / "plan.sh",
               needs=(needed, Trainer("toy", record_worker, command="train-first")))
    text = (tmp_path / "plan.sh").read_text()
    lines = [shlex.split(line) for line in text.splitlines() if not line.startswith("#")]
    assert [(line[4], line[line.index("--out") + 1]) for line in lines] == [
        ("train-first", str(tmp_path / "out" / "vae")), ("train", str(tmp_path / "out" / "a")),
        ("train", str(tmp_path / "out" / "b"))]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments[0].startswith("# 3 runs of the toy study") and "First these" in comments[2]
    assert text.index("First these") < text.index("train-first") < text.index("once every line above") < text.index(" train ")
    assert yaml.safe_load((tmp_path / "out" / "plan" / "vae.yaml").read_text()) == {"name": "vae", "fail": False}
