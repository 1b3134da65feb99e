"""The ``col775 mathqa ...`` commands.

The top-level CLI calls ``register(subparsers)``. Each command is added by one
``_add_<command>(commands)`` function listed in ``_COMMANDS``; it sets ``handler`` on its
parser to a ``handler(args) -> int`` (the exit code). Bad input ends with
argparse's usual ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from col775.mathqa.score import SubmissionError, load_submission, score_records, write_verdicts


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mathqa`` command and its sub-commands to a top-level ``add_subparsers()`` object."""
    mathqa = subparsers.add_parser("mathqa", help="word problems to MathQA programs (assignment 1, part 2)")
    commands = mathqa.add_subparsers(dest="mathqa_command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)


def _add_score(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "score",
        help="score a submission file the course's way",
        description="Print {n, execution_accuracy, exact_match, token_accuracy} (percentages) as one "
                    "JSON object for a file of MathQA records with an added 'predicted' program. "
                    "The file itself is never written to.",
    )
    parser.add_argument("file", type=Path, help="JSON list of {Problem, linear_formula, answer, predicted}")
    parser.add_argument("--out", type=Path, help="also write the per-record verdicts here as JSON")
    parser.set_defaults(handler=partial(_run_score, parser=parser))


def _run_score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.out is not None and args.out.resolve() == args.file.resolve():
        parser.error(f"--out {args.out} is the submission file itself; choose another path")
    try:
        records = load_submission(args.file)
    except SubmissionError as error:
        parser.error(str(error))
    summary, verdicts = score_records(records)
    if args.out is not None:
        write_verdicts(verdicts, args.out)
    print(json.dumps(summary))
    return 0


_COMMANDS = (_add_score,)
