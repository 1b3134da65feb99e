"""The study runner: worker processes side by side with their threads and GPUs, failures, plans, options."""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
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


def waiting_worker(config: Config, run_dir: Path, force: bool) -> None:
    """A stand-in training that notes its process and then trains for two minutes."""
    run_dir.mkdir(parents=True)
    (run_dir / "pid").write_text(str(os.getpid()))
    time.sleep(120)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (an ended one no process has reaped is a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc (Linux)")
def test_workers_end_when_the_study_process_is_killed(tmp_path):
    # a study of two runs side by side, in a process of its own, killed while both train
    study = subprocess.Popen([sys.executable, "-c",
                              "import sys; from pathlib import Path; from col775.core.study import StudyOptions, "
                              "Trainer, train_runs; from tests.core.test_study import Config, waiting_worker; "
                              "train_runs({'a': Config('a'), 'b': Config('b')}, Path(sys.argv[1]), "
                              "Trainer('toy', waiting_worker), StudyOptions(jobs=2))", str(tmp_path)],
                             cwd=Path(__file__).parents[2])
    pid_files = [tmp_path / name / "pid" for name in ("a", "b")]
    deadline = time.monotonic() + 300  # two fresh interpreters import torch: slow on a loaded machine
    while not all(path.is_file() and path.read_text() for path in pid_files):
        assert study.poll() is None, f"the study ended (exit code {study.returncode}) before both workers started"
        assert time.monotonic() < deadline, "the study's two workers did not start within 300 s"
        time.sleep(0.2)
    workers = [int(path.read_text()) for path in pid_files]
    assert all(running(pid) for pid in workers)
    study.kill()
    study.wait()
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if running(pid)]
    for pid in left:  # leave no stray process behind when this fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "a worker went on training after its study was killed"


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
