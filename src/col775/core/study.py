"""Running a study's independent runs: one after another in this process, side by side in worker
processes, or written out as a plan of shell commands for any scheduler; then reading back which have
finished.

A study hands the runner its runs (run folder name -> config dataclass) and a `Trainer`: the function
that trains one run in this process, and the name of its `col775 <study> train` command. Every run
folder is independent and resumes, so a killed study, worker or plan line is continued by running the
same command again.

`--jobs N` starts N worker processes (fresh interpreters) that take the runs in turn and call the same
function as the in-process path, with the same config objects; a worker pays the ~10 s of imports once,
not once per run. On a CPU each worker gets cores // N threads; with `--gpus 0,1` each sees one GPU
(CUDA_VISIBLE_DEVICES), in turn. A run that fails is reported with its log
(`<study out>/logs/<run>.log`) and the others go on.

`--plan FILE` writes each run's settings as a YAML preset (`<study out>/plan/<run>.yaml`) and one line
per run, `col775 <study> train --preset <that file> --out <study out>/<run>`, which trains the very
config the study would. Runs that others read (the slots study's VQ-VAE) come first, with their own
command, and the plan says to run the rest once they have finished.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shlex
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import yaml

from col775.core.config import to_dict
from col775.core.publish import publish, regenerating_command
from col775.core.runs import read_run
from col775.core.seeds import parse_seeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyOptions:
    """How a study command runs its runs (`add_study_args` makes the flags)."""

    seeds: list[int] | None = None  # None: each run's configured seed, one folder per variant
    jobs: int = 1
    gpus: list[str] | None = None
    plan: Path | None = None  # write the commands here instead of training
    report_only: bool = False
    force: bool = False

    @property
    def in_process(self) -> bool:
        return self.jobs == 1 and not self.gpus


@dataclass(frozen=True)
class Trainer:
    """How a study trains one of its runs: `train(config, run_dir, force)` in this process, or the
    `col775 <study> <command>` command (with `flags` added, e.g. for what a study run does differently)."""

    study: str
    train: Callable[[Any, Path, bool], Any]
    flags: tuple[str, ...] = ()
    command: str = "train"


def add_study_args(parser: argparse.ArgumentParser) -> None:
    """The flags every `col775 <study> study` shares."""
    parser.add_argument("--force", action="store_true", help="train every run again")
    parser.add_argument("--seeds", default=None, metavar="0,1,2",
                        help="train every variant once per seed, in <variant>/seed-<k>, and report mean ± std "
                             "and 95%% intervals (default: the configured seed, one folder per variant)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N runs side by side, each a separate process with cores/N threads")
    parser.add_argument("--gpus", type=lambda text: [g for g in text.split(",") if g.strip()], default=None,
                        metavar="0,1,..", help="give each process one of these GPUs (implies processes; "
                                               "--jobs defaults to their number)")
    parser.add_argument("--plan", type=Path, metavar="FILE",
                        help="train nothing: write one shell command per run to FILE (each run folder is "
                             "independent and resumable); then build the report with --report-only")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: build the report from the runs that have finished, naming the missing")
    parser.add_argument("--publish", type=Path, metavar="DIR",
                        help="after the report: copy report.md (headed by this command), summary.json and the "
                             "report's figures, under 2 MB and without photographs of the data, to DIR "
                             "(e.g. results/<study>)")


def publish_results(args: argparse.Namespace, out: Path, leave_out: Sequence[str] = ()) -> None:
    """`--publish DIR`: the finished report of the study in ``out`` as a small results folder."""
    if args.publish is None or args.plan is not None:
        return
    command = regenerating_command(getattr(args, "argv", None) or sys.argv[1:])
    left_out = publish(out, args.publish, command, leave_out)
    log.info("results published to %s%s", args.publish, f" (left out: {', '.join(left_out)})" if left_out else "")


def study_options(args: argparse.Namespace) -> StudyOptions:
    """The options a study command line asks for; bad combinations are one clear error."""
    jobs = args.jobs if args.jobs != 1 or not args.gpus else len(args.gpus)
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if args.plan is not None and args.report_only:
        raise ValueError("--plan writes the commands and --report-only reads their results: give one of them")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    return StudyOptions(seeds=seeds, jobs=jobs, gpus=args.gpus, plan=args.plan,
                        report_only=args.report_only, force=args.force)


def preset_file(out: Path, name: str) -> Path:
    return out / "plan" / f"{name}.yaml"


def run_command(trainer: Trainer, out: Path, name: str, force: bool) -> list[str]:
    """The command that trains run `name` of the study in `out` from its preset file."""
    return [sys.executable, "-m", "col775", trainer.study, trainer.command, "--preset", str(preset_file(out, name)),
            "--out", str(out / name), *trainer.flags, *(["--force"] if force else [])]


def write_presets(runs: Mapping[str, Any], out: Path) -> None:
    """Each run's settings as the YAML preset its command trains with."""
    for name, config in runs.items():
        path = preset_file(out, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def write_plan(runs: Mapping[str, Any], out: Path, trainer: Trainer, plan: Path, force: bool = False,
               needs: tuple[Mapping[str, Any], Trainer] | None = None) -> Path:
    """One shell line per run in `plan` (absolute paths, so a line runs from any folder).

    `needs` are runs (with their trainer) of which `runs` read some, such as a model they build on: their
    lines come first, and the plan says to run the others only once those have finished.
    """
    out = out.resolve()
    blocks = ([needs] if needs else []) + [(runs, trainer)]
    total = sum(len(block) for block, _ in blocks)
    lines = [
        f"# {total} runs of the {trainer.study} study in {out}: one resumable run per line.",
        "# When they have finished: the same study command with --report-only instead of --plan.",
    ]
    for index, (block, block_trainer) in enumerate(blocks):
        write_presets(block, out)
        if needs:
            lines.append("# First these (the runs below build on some of them):" if index == 0 else
                         "# Then, once every line above has finished, these (in any order or all at once):")
        lines += [shlex.join(run_command(block_trainer, out, name, force)) for name in block]
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text("\n".join(lines) + "\n")
    return plan


def train_runs(runs: Mapping[str, Any], out: Path, trainer: Trainer, options: StudyOptions) -> dict[str, str]:
    """Train (resume, or skip when finished) every run; returns {run: why it failed} for runs that failed
    in a worker process.

    In this process a failure stops the study as an error does; in worker processes it is reported, with
    its log, and the other runs go on.
    """
    if options.in_process:
        for name, config in runs.items():
            log.info("study run %s", name)
            trainer.train(config, out / name, options.force)
        return {}
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or CUDA state
    gpus = context.Queue()
    for index in range(options.jobs):
        gpus.put(options.gpus[index % len(options.gpus)] if options.gpus else None)
    failures: dict[str, str] = {}
    with ProcessPoolExecutor(options.jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads, gpus)) as pool:
        logs = {name: out / "logs" / f"{name}.log" for name in runs}
        futures = {pool.submit(_train_logged, trainer.train, config, out / name, options.force, logs[name]): name
                   for name, config in runs.items()}
        for future in as_completed(futures):
            name = futures[future]
            try:
                error = future.result()
            except Exception as crash:  # the worker process itself died (killed, out of memory)
                error = f"its worker process ended: {crash!r}"
            if error is not None:
                failures[name] = f"{error} (log {logs[name]})"
                log.warning("study run %s failed: %s", name, failures[name])
            else:
                log.info("study run %s done", name)
    return failures


def _start_worker(threads: int, gpus) -> None:
    """A worker process's share of the CPU threads and, with --gpus, its one GPU (before CUDA starts)."""
    _end_with_parent()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    gpu = gpus.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _end_with_parent(poll_seconds: float = 2.0) -> None:
    """End this worker soon after the study process that started it ends, however it ended.

    Killed, the study leaves its workers running (nothing tells them), each still training into its run
    folder: a second study started meanwhile finds those folders locked, and a folder moved aside gets
    written through its old path. A worker ends as if killed, which every run folder survives (the run
    resumes from its last checkpoint)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        log.warning("the study process %d has ended; this worker (%d) ends too", parent, os.getpid())
        os._exit(1)  # at once, skipping cleanup, as a killed process does

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _train_logged(train: Callable[[Any, Path, bool], Any], config: Any, run_dir: Path, force: bool,
                  log_path: Path) -> str | None:
    """Train one run in a worker process, its log lines written to `log_path`; the error, if it failed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="a")  # a resumed run adds to its earlier lines
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        train(config, run_dir, force)
        return None
    except Exception as error:
        log.exception("%s failed", run_dir)
        return f"{type(error).__name__}: {error}"
    finally:
        root.removeHandler(handler)
        handler.close()


def finished_runs(runs: Mapping[str, Any], out: Path) -> dict[str, dict]:
    """`read_run` of every run whose metrics.json exists, in the study's order."""
    return {name: read_run(out / name) for name in runs if (out / name / "metrics.json").is_file()}


def missing_notice(missing: list[str], failures: Mapping[str, str]) -> str:
    """The report's sentence about the runs it lacks ("" when none is missing)."""
    if not missing:
        return ""
    named = [f"{name} (failed, {failures[name]})" if name in failures else name for name in missing]
    return (f"**Incomplete: {len(missing)} run(s) have not finished and are left out of this report:** "
            + "; ".join(named) + ". Train them (the same study command, or the plan's lines) and build the "
            "report again (`--report-only`).")
