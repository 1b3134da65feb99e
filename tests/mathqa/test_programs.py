"""MathQA programs against the course's rules: the spec's table by hand, the gold data, hostile predictions."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from col775.mathqa.programs import (
    CONSTANTS,
    OPERATIONS,
    ProgramError,
    Step,
    const_value,
    execute,
    extract_numbers,
    normalise,
    parse_program,
    program_tokens,
    tokens_to_program,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
DATA = SHARED / "data" / "mathqa"
SPEC = SHARED / "specs" / "mathqa-programs.md"
PI = math.pi


def _gold_records() -> list[dict]:
    if not (DATA / "train.json").exists():
        pytest.skip(f"MathQA data not found at {DATA}")
    return [r for split in ("train", "dev") for r in json.loads((DATA / f"{split}.json").read_text())]


@pytest.fixture(scope="module")
def gold() -> list[dict]:
    return _gold_records()


# ---------------------------------------------------------------- the spec's table, by hand

# (formula, numbers, value worked out by hand from the spec's table)
HAND_CASES = [
    ("add(n0,n1)", [2, 3], 5),
    ("subtract(n0,n1)", [2, 3], -1),
    ("multiply(n0,n1)", [2, 3], 6),
    ("divide(n0,n1)", [3, 2], 1.5),
    ("power(n0,n1)", [2, 10], 1024),
    ("negate(n0)", [3], -3),
    ("inverse(n0)", [4], 0.25),
    ("sqrt(n0)", [9], 3),
    ("floor(n0)", [-2.7], -2),  # truncation, not math.floor
    ("log(n0)", [math.e ** 2], 2),
    ("factorial(n0)", [5.9], 120),  # 1*2*3*4*5, int(5.9) = 5
    ("choose(n0,n1)", [5, 2], 10),
    ("permutation(n0,n1)", [5, 2], 60),  # 5!/2!, not 5!/3!
    ("gcd(n0,n1)", [12.5, 18], 6),
    ("lcm(n0,n1)", [4, 6], 12),
    ("reminder(n0,n1)", [17.9, 5.5], 2),  # 17 % 5
    ("max(n0,n1)", [2, 3], 3),
    ("min(n0,n1)", [2, 3], 2),
    ("speed(n0,n1)", [100, 4], 25),
    ("p_after_gain(n0,n1)", [10, 4], 2.5),
    ("negate_prob(n0)", [0.25], 0.75),
    ("stream_speed(n0,n1)", [10, 4], 7),
    ("circle_area(n0)", [2], 4 * PI),
    ("circumface(n0)", [2], 4 * PI),
    ("square_area(n0)", [3], 9),
    ("square_perimeter(n0)", [3], 12),
    ("square_edge_by_area(n0)", [16], 4),
    ("square_edge_by_perimeter(n0)", [12], 3),
    ("rectangle_area(n0,n1)", [3, 4], 12),
    ("rectangle_perimeter(n0,n1)", [3, 4], 14),
    ("rhombus_perimeter(n0)", [5], 20),
    ("rhombus_area(n0,n1)", [4, 6], 5),  # (a+b)/2
    ("triangle_area(n0,n1)", [3, 4], 6),
    ("triangle_perimeter(n0,n1,n2)", [3, 4, 5], 12),
    ("triangle_area_three_edges(n0,n1,n2)", [3, 4, 5], 6),
    ("quadrilateral_area(n0,n1,n2)", [2, 3, 5], 8),  # (3+5)/2*2
    ("surface_sphere(n0)", [1], 4 * PI),
    ("volume_sphere(n0)", [3], 36 * PI),
    ("surface_cube(n0)", [2], 24),
    ("volume_cube(n0)", [2], 24),  # 6a**2, as the checker has it
    ("cube_edge_by_volume(n0)", [27], 3),
    ("surface_rectangular_prism(n0,n1,n2)", [1, 2, 3], 22),  # 2(2+6+3)
    ("volume_rectangular_prism(n0,n1,n2)", [2, 3, 4], 24),
    ("volume_cylinder(n0,n1)", [3, 2], 4 * PI),  # pi*2**2*3/3
    ("volume_cone(n0,n1)", [3, 100], 9 * PI),  # pi*27/3, second argument unused
    ("surface_cylinder(n0,n1)", [1, 2], 6 * PI),  # 2pi*1*2 + 2pi*1
    ("original_price_before_gain(n0,n1)", [25, 80], 100),  # 80*125/100
    ("original_price_before_loss(n0,n1)", [20, 100], 80),
]


@pytest.mark.parametrize(("formula", "numbers", "expected"), HAND_CASES, ids=[c[0].split("(")[0] for c in HAND_CASES])
def test_operation_by_hand(formula: str, numbers: list[float], expected: float) -> None:
    assert execute(formula, [float(x) for x in numbers]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hand_cases_cover_every_operation() -> None:
    assert {case[0].split("(")[0] for case in HAND_CASES} == set(OPERATIONS)


def test_operations_are_the_spec_table() -> None:
    if not SPEC.exists():
        pytest.skip(f"spec not found at {SPEC}")
    rows = re.findall(r"^\| (\w+) \| [^|]+ \| (\w+) \| [^|]+ \|$", SPEC.read_text(), flags=re.M)
    names = {name for row in rows for name in row} - {"op"}
    assert names == set(OPERATIONS)


def test_arity_is_what_the_gold_data_uses(gold: list[dict]) -> None:
    used = {}
    for record in gold:
        for step in parse_program(record["linear_formula"]):
            used.setdefault(step.op, set()).add(len(step.args))
    assert all(arities == {OPERATIONS[op]} for op, arities in used.items())


def test_step_values_stay_exact_integers() -> None:
    # Wilson: (p-2)! = 1 mod p for a prime p; float 39! would give 3.
    assert execute("factorial(n0)|reminder(#0,n1)", [39.0, 41.0]) == 1
    assert execute("choose(n0,n1)", [200.0, 2.0]) == 200 * 199 / 2


@pytest.mark.parametrize("formula", [
    "divide(n0,const_0)", "inverse(const_0)", "log(const_0)", "reminder(n0,const_0)",
    "negate(n0)|sqrt(#0)", "sqrt(n1)", "power(n0,n0)|power(#0,const_1000)", "power(n1,const_0_5)", "power(const_0,n1)",
    "triangle_area_three_edges(const_1,const_1,n0)", "cube_edge_by_volume(n1)",
])
def test_arithmetic_failures_are_errors(formula: str) -> None:
    with pytest.raises(ProgramError):
        execute(formula, [5.0, -1.0])


def test_constants() -> None:
    assert const_value("const_pi") == math.pi
    assert const_value("const_0_25") == 0.25
    assert const_value("const_3_6") == 3.6
    assert const_value("const_100") == 100
    assert const_value("const_2.0") == 2
    for bad in ("const_abc", "const_", "const_inf", "n0"):
        with pytest.raises(ProgramError):
            const_value(bad)


def test_constants_are_those_of_the_gold_data(gold: list[dict]) -> None:
    used = {arg for r in gold for step in parse_program(r["linear_formula"])
            for arg in step.args if arg.startswith("const_")}
    assert used == set(CONSTANTS)


# ---------------------------------------------------------------- numbers in the problem

@pytest.mark.parametrize(("problem", "numbers"), [
    ("what is 1 / 2 of 8", [1, 2, 8]),
    ("the 3rd term", [3]),
    ("x - 3 = 0", [3, 0]),
    ("a drop of -2.5 degrees", [-2.5]),
    ("a drop of -2 degrees", [2]),
    ("1,234,567 people", [1234567]),
    ("12,345.75 and 1,2345", [12345.75, 1, 2345]),
    ("costs .5 or +3.25 or +3", [0.5, 3.25, 3]),
    ("no numbers here", []),
])
def test_extract_numbers(problem: str, numbers: list[float]) -> None:
    found = extract_numbers(problem)
    assert found == numbers
    assert all(isinstance(x, float) for x in found)


# ---------------------------------------------------------------- gold programs

def test_every_gold_program_executes_within_two_percent(gold: list[dict]) -> None:
    wrong = []
    for index, record in enumerate(gold):
        value = execute(record["linear_formula"], extract_numbers(record["Problem"]))
        if abs(value - record["answer"]) / abs(record["answer"]) > 0.02:
            wrong.append((index, record["linear_formula"], value, record["answer"]))
    assert not wrong, wrong[:5]


def test_tokens_round_trip_on_gold(gold: list[dict]) -> None:
    for record in gold:
        formula = record["linear_formula"]
        tokens = program_tokens(formula)
        assert tokens_to_program(tokens) == normalise(formula)
        steps = parse_program(formula)
        assert len(tokens) == sum(2 + len(step.args) for step in steps)


# ---------------------------------------------------------------- parsing, tokens, normal form

def test_parse_program() -> None:
    assert parse_program(" add(n0, n1) | divide(#0,const_100)|") == [
        Step("add", ["n0", "n1"]), Step("divide", ["#0", "const_100"])]


def test_program_tokens() -> None:
    expected = ["add", "n0", "n1", "|", "divide", "#0", "const_100", "|"]
    assert program_tokens("add(n0,n1)|divide(#0,const_100)|") == expected
    assert program_tokens("add(n0,n1)|divide(#0,const_100)") == expected
    assert program_tokens(" add( n0 , n1 ) | divide(#0,const_100) ") == expected
    assert program_tokens("") == []
    assert program_tokens("add(n0") == ["add", "n0", "|"]


def test_tokens_to_program() -> None:
    tokens = ["add", "n0", "n1", "|", "divide", "#0", "const_100", "|"]
    assert tokens_to_program(tokens) == "add(n0,n1)|divide(#0,const_100)"
    assert tokens_to_program(tokens[:-1]) == "add(n0,n1)|divide(#0,const_100)"
    assert tokens_to_program(["|", "|"]) == ""
    assert tokens_to_program(["n0", "add", "|", "negate"]) == "n0(add)|negate()"


def test_normalise() -> None:
    assert normalise("add(n0,n1)|") == "add(n0,n1)"
    assert normalise(" add(n0, n1) ") == "add(n0,n1)"
    assert normalise("add(n0,n1)||") == "add(n0,n1)|"


# ---------------------------------------------------------------- hostile predictions

NUMBERS = [100.0, 1e6, 3.0]
MALFORMED = {
    "empty": "",
    "only bars": " | |",
    "unbalanced": "add(n0,n1",
    "no parentheses": "add n0 n1",
    "nested": "add(add(n0,n1),n2)",
    "trailing text": "add(n0,n1)x",
    "n99": "add(n0,n99)",
    "#5 at step 2": "add(n0,n1)|add(#0,n1)|add(#5,n0)",
    "#0 at step 0": "add(#0,n0)",
    "factorial chain": "factorial(n0)|factorial(#0)|factorial(#1)",
    "10,000 steps": "add(n0,n1)|" * 10_000,
    "power overflow": "power(n0,n1)",
    "huge integer power": "floor(n0)|floor(n1)|power(#0,#1)",
    "integer squaring": "factorial(n0)|" + "".join(f"multiply(#{i},#{i})|" for i in range(20)),
    "unknown op": "diagonal(n0)",
    "too few arguments": "add(n0)",
    "too many arguments": "negate(n0,n1)",
    "empty argument": "add(n0,)",
    "bad argument": "add(x,n1)",
    "bad constant": "add(const_two,n1)",
    "negative index": "add(n-1,n0)",
    "5,000-digit index": "add(n0,n" + "1" * 5000 + ")",
}


@pytest.mark.parametrize("formula", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_predictions_are_errors_and_fast(formula: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ProgramError):
        execute(formula, NUMBERS)
    assert time.perf_counter() - start < 1.0


def test_time_limit_is_checked() -> None:
    with pytest.raises(ProgramError, match="time limit"):
        execute("add(n0,n1)|add(#0,n1)", NUMBERS, time_limit=-1.0)
