"""The `col775` command: `col775 <study> <verb>`, `col775 demo` and `col775 report`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from col775.core.report import Report, runs_report
from col775.core.runs import ConfigMismatchError, RunFolderError
from col775.core.training import NonFiniteLossError, position

# Each study registers its own sub-commands and offers a `demo(out_dir) -> Report` in its study module.
STUDIES = ("resnet", "mathqa", "slots")


def _study_module(study: str, part: str):
    return importlib.import_module(f"col775.{study}.{part}")


def _report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    report = runs_report(args.runs, out / "figures", title=args.title)
    path = report.write(out)
    print(f"report: {path} and {out / 'report.md'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Every study on data the package generates, at CPU size, and one report at the end."""
    out = Path(args.out)
    chosen = args.only or list(STUDIES)
    report = Report("col775 demo: every study on generated data")
    report.text(
        "Each study ran its demo preset on data col775 generated itself, sized to finish in minutes on a "
        "CPU. The numbers show the pipelines work end to end; they are not the course-scale results "
        "(use `--preset course` with the real data for those)."
    )
    for study in chosen:
        print(f"== demo: {study}", file=sys.stderr)
        study_report = _study_module(study, "study").demo(out / study, force=args.force)
        report.extend(study_report)
    path = report.write(out)
    print(f"report: {path} and {out / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="col775", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run every study on generated data and write one report")
    demo.add_argument("--out", default="demo-out", help="folder for the runs and the report")
    demo.add_argument("--only", nargs="+", choices=STUDIES, help="run only these studies")
    demo.add_argument("--force", action="store_true", help="retrain runs that already finished")
    demo.set_defaults(handler=_demo)

    report = commands.add_parser("report", help="report.md and report.html from run folders")
    report.add_argument("runs", nargs="+", help="run folders (each holding config.yaml)")
    report.add_argument("--out", required=True, help="folder for the report")
    report.add_argument("--title", default="col775 runs")
    report.set_defaults(handler=_report)

    for study in STUDIES:
        _study_module(study, "cli").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed, for --publish's command
    try:
        return int(args.handler(args) or 0)
    except (FileNotFoundError, ValueError, ConfigMismatchError, RunFolderError, NonFiniteLossError) as error:
        # Expected failures (bad input, NaN loss, a run folder that cannot be used) get one clear line.
        print(f"col775: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the run folder keeps its last checkpoint, and resuming is routine
        where = position()
        at = f" at epoch {where[0]}, step {where[1]}" if where else ""
        print(f"col775: interrupted{at}; run the same command to resume", file=sys.stderr)
        return 130
