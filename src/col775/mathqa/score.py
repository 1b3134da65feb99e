"""Scores of MathQA predictions, computed the way the course checker computes them.

A submission is the data file's records, each with an added ``"predicted"`` program.
Over all records (as percentages):

- execution accuracy: the prediction executes (``programs.execute``) and
  ``|value - answer| / |answer| <= 0.02``; an error, a complex or non-finite value, an
  empty prediction or a gold answer of 0 counts as wrong, as in the checker;
- exact match: ``normalise(predicted) == normalise(gold)`` (one trailing ``|`` removed;
  whitespace is removed too, which the checker does not do, and which only matters for
  predictions containing spaces);
- token accuracy (not computed by the checker; our definition): the fraction of
  positions ``i < len(gold)`` where ``program_tokens(predicted)[i] ==
  program_tokens(gold)[i]``, a missing predicted token counting as a mismatch and extra
  predicted tokens beyond the gold length not counting at all, averaged over records.

Unlike the checker, nothing here writes to the file it scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from col775.mathqa.programs import ProgramError, execute, extract_numbers, normalise, program_tokens

RELATIVE_TOLERANCE = 0.02
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "Problem": (str,),
    "linear_formula": (str,),
    "answer": (int, float),
    "predicted": (str,),
}


class SubmissionError(ValueError):
    """A submission file or record list that cannot be scored; the message names the fix."""


@dataclass
class Verdict:
    """How one prediction scored; ``value``/``error`` say what its execution gave."""

    index: int
    predicted: str
    gold: str
    answer: float
    value: float | None
    error: str | None
    correct: bool
    exact_match: bool
    token_accuracy: float


def validate_records(records: object, source: str) -> list[dict]:
    """``records`` if it is a non-empty list of complete submission records, else SubmissionError."""
    if not isinstance(records, list):
        raise SubmissionError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise SubmissionError(f"{source}: the list of records is empty")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise SubmissionError(f"{source}: record {index} is a {type(record).__name__}, not an object")
        for field, types in REQUIRED_FIELDS.items():
            if field not in record:
                raise SubmissionError(f"{source}: record {index} has no {field!r} field; "
                                      f"every record needs {', '.join(REQUIRED_FIELDS)}")
            value = record[field]
            if isinstance(value, bool) or not isinstance(value, types):
                expected = " or ".join(t.__name__ for t in types)
                raise SubmissionError(f"{source}: record {index} field {field!r} is "
                                      f"{type(value).__name__}, expected {expected}")
    return records


def load_submission(path: str | Path) -> list[dict]:
    """Records of a submission file, validated; SubmissionError naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmissionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SubmissionError(f"{path}: cannot be read as UTF-8 text ({error})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise SubmissionError(f"{path}: not valid JSON ({error})") from None
    return validate_records(records, str(path))


def is_correct_value(value: float, answer: float) -> bool:
    """The checker's test: relative error at most 2%; an answer of 0 is never matched."""
    if answer == 0 or not math.isfinite(answer):
        return False
    return abs(value - answer) / abs(answer) <= RELATIVE_TOLERANCE


def token_accuracy(predicted: str, gold: str) -> float:
    """Fraction of gold token positions the prediction gets right (see the module docstring)."""
    gold_tokens = program_tokens(gold)
    predicted_tokens = program_tokens(predicted)
    if not gold_tokens:
        return float(not predicted_tokens)
    agree = sum(p == g for p, g in zip(predicted_tokens, gold_tokens))
    return agree / len(gold_tokens)


def score_record(record: dict, index: int) -> Verdict:
    """Verdict of one validated submission record."""
    predicted, gold, answer = record["predicted"], record["linear_formula"], float(record["answer"])
    value, error = None, None
    try:
        value = execute(predicted, extract_numbers(record["Problem"]))
    except ProgramError as failure:
        error = str(failure)
    return Verdict(
        index=index,
        predicted=predicted,
        gold=gold,
        answer=answer,
        value=value,
        error=error,
        correct=value is not None and is_correct_value(value, answer),
        exact_match=normalise(predicted) == normalise(gold),
        token_accuracy=token_accuracy(predicted, gold),
    )


def score_records(records: list[dict]) -> tuple[dict, list[Verdict]]:
    """Summary ``{"n", "execution_accuracy", "exact_match", "token_accuracy"}`` (percentages) and verdicts."""
    verdicts = [score_record(record, index)
                for index, record in enumerate(validate_records(records, "records"))]
    n = len(verdicts)
    summary = {
        "n": n,
        "execution_accuracy": 100 * sum(v.correct for v in verdicts) / n,
        "exact_match": 100 * sum(v.exact_match for v in verdicts) / n,
        "token_accuracy": 100 * sum(v.token_accuracy for v in verdicts) / n,
    }
    return summary, verdicts


def write_verdicts(verdicts: list[Verdict], path: str | Path) -> None:
    """Per-record verdicts as a JSON list of objects (missing parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(v) for v in verdicts], indent=1) + "\n", encoding="utf-8")
