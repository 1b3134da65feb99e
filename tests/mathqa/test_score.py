"""Scoring of MathQA submissions and the `col775 mathqa score` command."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import pytest

from col775.mathqa import cli
from col775.mathqa.programs import CONSTANTS, OPERATIONS, tokens_to_program
from col775.mathqa.score import (
    SubmissionError,
    is_correct_value,
    score_records,
    token_accuracy,
    validate_records,
)

PROBLEM = "a shop sells 20 pens at 5 each"  # n0 = 20, n1 = 5
GOLD = "multiply(n0,n1)|"  # 100


def _record(predicted: str, gold: str = GOLD, answer: float = 100) -> dict:
    return {"Problem": PROBLEM, "linear_formula": gold, "answer": answer, "predicted": predicted}


def test_two_percent_tolerance() -> None:
    assert is_correct_value(102.0, 100)
    assert is_correct_value(98.0, 100)
    assert not is_correct_value(102.5, 100)
    assert is_correct_value(-101.0, -100)
    assert not is_correct_value(0.0, 0)  # an answer of 0 is never matched, as in the checker


def test_token_accuracy_by_hand() -> None:
    gold = "add(n0,n1)|divide(#0,const_100)|"  # 8 tokens
    assert token_accuracy(gold, gold) == 1
    assert token_accuracy("add(n0,n1)", gold) == 4 / 8
    assert token_accuracy("add(n0,n2)|divide(#0,const_100)|multiply(#1,n3)", gold) == 7 / 8
    assert token_accuracy("subtract(n0,n1)|divide(#0,const_100)", gold) == 7 / 8
    assert token_accuracy("", gold) == 0
    assert token_accuracy("divide(#0,const_100)", gold) == 1 / 8  # shifted: only the first | agrees


def test_score_records_by_hand() -> None:
    records = [
        _record("multiply(n0,n1)"),  # exact (trailing | ignored), correct, tokens 4/4
        _record("multiply(n1,n0)|"),  # not exact, correct, tokens 2/4
        _record("add(n0,n1)|multiply(#0,const_4)"),  # 100, correct; tokens 3/4 (n0, n1, |)
        _record("divide(n0,const_0)"),  # division by zero: wrong; tokens 2/4 (n0, |)
        _record("multiply(n0,n1)", answer=0),  # exact, but answer 0: wrong; tokens 4/4
    ]
    summary, verdicts = score_records(records)
    assert summary == {
        "n": 5,
        "execution_accuracy": pytest.approx(100 * 3 / 5),
        "exact_match": pytest.approx(100 * 2 / 5),
        "token_accuracy": pytest.approx(100 * (1 + 0.5 + 0.75 + 0.5 + 1) / 5),
    }
    assert [v.correct for v in verdicts] == [True, True, True, False, False]
    assert verdicts[3].value is None and "step 0" in verdicts[3].error
    assert verdicts[2].value == 100


@pytest.mark.parametrize("predicted", [
    "", "add(n0,n1", "add(n0,n99)", "add(n0,n1)|add(#0,n1)|add(#5,n0)",
    "factorial(const_100)|factorial(#0)|factorial(#1)", "add(n0,n1)|" * 10_000,
    "power(const_1000,n0)|power(#0,#0)", "sine(n0)",
])
def test_malformed_predictions_score_wrong_quickly(predicted: str) -> None:
    start = time.perf_counter()
    summary, verdicts = score_records([_record(predicted)])
    assert time.perf_counter() - start < 1.0
    assert summary["execution_accuracy"] == 0 and verdicts[0].error


@pytest.mark.parametrize(("records", "message"), [
    ({"Problem": "x"}, "expected a JSON list"),
    ([], "empty"),
    ([_record("add(n0,n1)"), "oops"], "record 1 is a str"),
    ([_record("add(n0,n1)"), {"Problem": "x", "linear_formula": "y", "answer": 1}], "record 1 has no 'predicted'"),
    ([{"Problem": "x", "predicted": "y", "answer": 1}], "record 0 has no 'linear_formula'"),
    ([_record(None)], "record 0 field 'predicted' is NoneType"),
    ([_record("add(n0,n1)", answer="7")], "record 0 field 'answer' is str"),
])
def test_invalid_records(records: object, message: str) -> None:
    with pytest.raises(SubmissionError, match=message):
        validate_records(records, "sub.json")


# ---------------------------------------------------------------- the command line

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="col775")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_score_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    submission = tmp_path / "dev_predictions.json"
    submission.write_text(json.dumps([_record("multiply(n0,n1)"), _record("add(n0,n1)")]))
    before = submission.read_bytes()
    out = tmp_path / "verdicts" / "dev.json"

    args = _parse(["mathqa", "score", str(submission), "--out", str(out)])
    assert args.handler(args) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"n": 2, "execution_accuracy": 50.0, "exact_match": 50.0, "token_accuracy": 87.5}
    assert submission.read_bytes() == before
    verdicts = json.loads(out.read_text())
    assert [v["correct"] for v in verdicts] == [True, False]
    assert verdicts[1]["value"] == 25


@pytest.mark.parametrize(("content", "message"), [
    ("[{", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
    (json.dumps([_record("add(n0,n1)"), {"Problem": "p", "answer": 1, "predicted": "q"}]), "record 1 has no 'linear_formula'"),
])
def test_score_command_rejects_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               content: str, message: str) -> None:
    submission = tmp_path / "bad.json"
    submission.write_text(content)
    args = _parse(["mathqa", "score", str(submission)])
    with pytest.raises(SystemExit) as exit_info:
        args.handler(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert str(submission) in error and message in error
    assert submission.read_text() == content


def test_score_command_missing_file_and_out_onto_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = _parse(["mathqa", "score", str(tmp_path / "nope.json")])
    with pytest.raises(SystemExit) as exit_info:
        missing.handler(missing)
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err

    submission = tmp_path / "sub.json"
    submission.write_text(json.dumps([_record("add(n0,n1)")]))
    before = submission.read_bytes()
    onto_input = _parse(["mathqa", "score", str(submission), "--out", str(submission)])
    with pytest.raises(SystemExit) as exit_info:
        onto_input.handler(onto_input)
    assert exit_info.value.code == 2 and "submission file itself" in capsys.readouterr().err
    assert submission.read_bytes() == before


def test_mathqa_needs_a_sub_command() -> None:
    with pytest.raises(SystemExit):
        _parse(["mathqa"])


def test_random_token_programs_never_raise() -> None:
    rng = random.Random(0)
    vocab = [*OPERATIONS, *CONSTANTS, "const_0", "n0", "n1", "n7", "#0", "#1", "#4", "|", "|", "|"]
    records = [_record(tokens_to_program(rng.choices(vocab, k=rng.randint(0, 30)))) for _ in range(500)]
    summary, verdicts = score_records(records)
    assert summary["n"] == 500
    assert all(v.correct == (v.value is not None and abs(v.value - 100) <= 2) for v in verdicts)
