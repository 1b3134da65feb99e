"""Wall time of the ResNet demo study with `--jobs 2` against `--jobs 1` (issue 15.2).

Target: on a 2-core CPU, `--jobs 2` takes at most 0.75x the time of `--jobs 1`. Each timing is the
whole command in a fresh process (`python -m col775 resnet study --preset demo ...`: imports, every
run, Grad-CAM and the report), on synthetic data generated beforehand into a shared cache, so both
settings do the same work. The two settings alternate `--repeats` times and the medians are compared,
so load from other processes falls on both. Default: the demo preset (all 11 runs) at 1 epoch; `--quick`: 1 epoch,
8 training images per class and 3 of the 7 norms (a smoke run).
Run: .venv/bin/python benchmarks/bench_study_jobs.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "default": ["--epochs", "1"],
    "quick": ["--epochs", "1", "--synthetic-train-per-class", "8", "--study-norms", "torch_bn,bn,gn"],
}


def study(folder: Path, sizes: list[str], *flags: str) -> float:
    """Seconds one study command takes; a failing command stops the benchmark with its output."""
    command = [sys.executable, "-m", "col775", "resnet", "study", "--preset", "demo", "--device", "cpu",
               "--cache-dir", str(folder / "cache"), *sizes, *flags]
    began = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # jobs 1: every core
    done = subprocess.run(command, capture_output=True, text=True, env=env | {"COL775_NO_PROGRESS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller study (smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating timings of each setting")
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "default"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study(folder, sizes, "--out", str(folder / "warm-up"), "--plan", str(folder / "plan.sh"))  # generates the data
        times: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for jobs in (1, 2):
                times[jobs].append(study(folder, sizes, "--out", str(folder / f"jobs{jobs}-{repeat}"), "--jobs", str(jobs)))
                print(f"--jobs {jobs}: {times[jobs][-1]:.1f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"cores: {os.cpu_count()}, load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"median --jobs 1: {one:.1f} s, --jobs 2: {two:.1f} s, ratio jobs2/jobs1: {two / one:.2f} (target <= 0.75)")


if __name__ == "__main__":
    main()
