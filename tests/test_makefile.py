"""`make bench` on a fresh clone installs what the benchmarks import before running them."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_bench_installs_the_bench_extras_first(tmp_path):
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    assert {"slot-attention", "diffusers"} <= set(extras)  # the reference implementations the benchmarks time
    plan = subprocess.run(
        ["make", "-n", "bench", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()  # a fresh clone: nothing installed yet
    installs = [i for i, line in enumerate(plan) if "pip install" in line and ".[bench]" in line]
    first_benchmark = next(i for i, line in enumerate(plan) if "benchmarks/bench_" in line)
    assert installs and installs[0] < first_benchmark, plan
