"""provenance.json: each start or resume of training records what trained the run; reports print it."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import col775
from col775.core.report import runs_report
from col775.core.runs import RunDir


def train_once(path: Path, force: bool = False) -> RunDir:
    run = RunDir(path, {"lr": 0.1}, force=force)
    run.resume({})
    return run


def test_each_start_records_code_libraries_machine_and_command(tmp_path):
    train_once(tmp_path / "run")
    records = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert len(records) == 1
    record = records[0]
    source = Path(col775.__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                            capture_output=True, text=True).stdout.strip()
    assert record["git"] == {"commit": head, "uncommitted_changes": bool(status)}
    assert record["package_version"] == col775.__version__ and record["torch"] == torch.__version__
    assert record["cuda"] == torch.version.cuda and record["torch_threads"] == torch.get_num_threads()
    assert record["world_size"] == 1 and record["command"] == [sys.executable, *sys.argv]
    assert record["cpu"] and isinstance(record["cuda_devices"], list)

    train_once(tmp_path / "run")  # resumed: a second record
    assert len(json.loads((tmp_path / "run" / "provenance.json").read_text())) == 2
    train_once(tmp_path / "run", force=True)  # started over: the list too
    assert len(json.loads((tmp_path / "run" / "provenance.json").read_text())) == 1
    RunDir(tmp_path / "run", {"lr": 0.1})  # opening a run to read it records nothing
    assert len(json.loads((tmp_path / "run" / "provenance.json").read_text())) == 1


def test_without_git_the_record_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    train_once(tmp_path / "run")
    git = json.loads((tmp_path / "run" / "provenance.json").read_text())[0]["git"]
    assert git["commit"] is None and "git" in git["note"]


def test_a_report_prints_it_with_the_settings(tmp_path):
    train_once(tmp_path / "run")
    report = runs_report([tmp_path / "run"], tmp_path / "plots")
    report.write(tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "lr: 0.1\n# what trained it (provenance.json)\n- time:" in md
    assert f"torch_threads: {torch.get_num_threads()}" in md
