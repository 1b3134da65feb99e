"""MathQA ``linear_formula`` programs: number extraction, parsing, bounded execution, tokens.

Everything here follows ``specs/mathqa-programs.md`` (how the course checker reads a
program), so that a score computed with it means what the assignment's numbers mean.

Program text
    ``add(n0,n1)|divide(#0,const_100)|``: steps separated by ``|`` (empty pieces skipped,
    so a trailing ``|`` is optional). An argument is ``nK`` (K-th number of the problem),
    ``#k`` (value of step k, 0-based, counting non-empty steps) or ``const_X`` (``X`` with
    ``_`` read as ``.``; ``const_pi`` is pi). The program's value is its last step's.

Decoder tokens
    A program is the flat sequence ``op arg ... arg |`` per step, e.g.
    ``add(n0,n1)|divide(#0,const_100)`` -> ``add n0 n1 | divide #0 const_100 |``.
    Parentheses and commas carry no information (every op has a fixed arity, and an
    argument is one token), so they are left out; ``|`` ends a step, which keeps the
    sequence readable even when a decoder gets an arity wrong. ``tokens_to_program``
    turns any token list back into text; a malformed one simply scores as wrong.

Values
    As in the checker, problem numbers and constants are floats, while ``factorial``,
    ``floor``, ``gcd``, ``lcm`` and ``reminder`` give exact Python ints that later steps
    use exactly. Gold programs rely on it: ``factorial(n0)|reminder(#0,n1)`` on
    "39 ! is divided by 41" must give 39! mod 41 = 1, which float arithmetic gets wrong.

Where this differs from the checker, on purpose (only for programs that would hang it or
overflow; no gold program comes near these bounds)
    - Work is bounded: at most ``MAX_STEPS`` steps, factorial arguments at most
      ``MAX_FACTORIAL_ARG``, integers at most ``MAX_INT_BITS`` bits (checked before an
      integer power and after every step), and a wall-clock limit per program. The
      checker hangs on ``factorial(n0)|factorial(#0)`` with n0 = 100; here it is an error.
    - A step whose value is NaN or infinite is an error at once (the checker would carry
      inf on, so e.g. ``min(inf, 5)`` could still reach a finite value there).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_STEPS = 100
MAX_FACTORIAL_ARG = 1000
MAX_INT_BITS = 1 << 15
DEFAULT_TIME_LIMIT_S = 1.0


class ProgramError(ValueError):
    """A program that cannot be parsed or executed; it scores as wrong."""


# ---------------------------------------------------------------- numbers in the problem

THOUSANDS_PATTERN = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
NUMBER_PATTERN = re.compile(r"[-+]?\d*\.\d+|\d+")


def extract_numbers(problem: str) -> list[float]:
    """The numbers ``n0, n1, ...`` of a problem, exactly as the course checker finds them.

    Thousands separators go first (``1,234,567`` -> 1234567), then every match of
    ``[-+]?\\d*\\.\\d+|\\d+`` left to right. Quirks kept on purpose, since gold programs
    were written against them: ``1 / 2`` gives 1 and 2; ``3rd`` gives 3; ``- 3`` gives 3;
    a sign is read only on a decimal, so ``-2.5`` gives -2.5 but ``-2`` gives 2;
    ``.5`` gives 0.5.
    """
    text = THOUSANDS_PATTERN.sub(lambda m: m.group().replace(",", ""), problem)
    return [float(match) for match in NUMBER_PATTERN.findall(text)]


# ---------------------------------------------------------------- constants

# Every constant that occurs in the gold programs of train and dev (a decoder's vocabulary).
CONSTANTS: tuple[str, ...] = (
    "const_pi", "const_0_25", "const_0_2778", "const_0_33", "const_0_3937", "const_1",
    "const_1_6", "const_2", "const_2.0", "const_3", "const_3.0", "const_3_6", "const_4",
    "const_4.0", "const_5", "const_6", "const_10", "const_12", "const_26", "const_52",
    "const_60", "const_60.0", "const_100", "const_100.0", "const_180", "const_360",
    "const_1000", "const_3600",
)


def const_value(name: str) -> float:
    """Value of a ``const_X`` argument: pi for ``const_pi``, else ``X`` with ``_`` read as ``.``."""
    if not name.startswith("const_"):
        raise ProgramError(f"{name!r} is not a constant (constants look like const_100)")
    body = name[len("const_"):]
    if body == "pi":
        return math.pi
    try:
        value = float(body.replace("_", "."))
    except ValueError:
        raise ProgramError(f"constant {name!r} is not a number") from None
    if not math.isfinite(value):
        raise ProgramError(f"constant {name!r} is not finite")
    return value


# ---------------------------------------------------------------- operations


Number = int | float


def _factorial(a: Number) -> int:
    """Exact ``1 * 2 * ... * int(a)`` (1 when int(a) < 1), refusing arguments that would take long."""
    n = int(a)
    if n > MAX_FACTORIAL_ARG:
        raise ProgramError(f"factorial of {_show(n)} exceeds the limit {MAX_FACTORIAL_ARG}")
    return math.factorial(n) if n > 0 else 1


def _power(a: Number, b: Number) -> Number:
    """``a ** b``, refusing an exact integer power whose result would exceed MAX_INT_BITS."""
    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b * a.bit_length() > MAX_INT_BITS:
        raise ProgramError(f"{_show(a)} ** {_show(b)} exceeds {MAX_INT_BITS} bits")
    return a ** b


def _heron(a: Number, b: Number, c: Number) -> Number:
    s = (a + b + c) / 2
    return (s * (s - a) * (s - b) * (s - c)) ** 0.5


# name -> (arity, function), the table of the spec; bold (unusual) rows kept as written.
# volume_cone takes two arguments (the gold data calls it so) but only the first is used.
_OPS: dict[str, tuple[int, Callable[..., Number | complex]]] = {
    "add": (2, lambda a, b: a + b),
    "subtract": (2, lambda a, b: a - b),
    "multiply": (2, lambda a, b: a * b),
    "divide": (2, lambda a, b: a / b),
    "power": (2, _power),
    "negate": (1, lambda a: -a),
    "inverse": (1, lambda a: 1 / a),
    "sqrt": (1, lambda a: a ** 0.5),
    "floor": (1, lambda a: int(a)),
    "log": (1, lambda a: math.log(a)),
    "factorial": (1, _factorial),
    "choose": (2, lambda a, b: _factorial(a) / (_factorial(b) * _factorial(a - b))),
    "permutation": (2, lambda a, b: _factorial(a) / _factorial(b)),
    "gcd": (2, lambda a, b: math.gcd(int(a), int(b))),
    "lcm": (2, lambda a, b: math.lcm(int(a), int(b))),
    "reminder": (2, lambda a, b: int(a) % int(b)),
    "max": (2, max),
    "min": (2, min),
    "speed": (2, lambda a, b: a / b),
    "p_after_gain": (2, lambda a, b: a / b),
    "negate_prob": (1, lambda a: 1 - a),
    "stream_speed": (2, lambda a, b: (a + b) / 2),
    "circle_area": (1, lambda a: math.pi * a ** 2),
    "circumface": (1, lambda a: 2 * math.pi * a),
    "square_area": (1, lambda a: a ** 2),
    "square_perimeter": (1, lambda a: 4 * a),
    "square_edge_by_area": (1, lambda a: a ** 0.5),
    "square_edge_by_perimeter": (1, lambda a: a / 4),
    "rectangle_area": (2, lambda a, b: a * b),
    "rectangle_perimeter": (2, lambda a, b: 2 * (a + b)),
    "rhombus_perimeter": (1, lambda a: 4 * a),
    "rhombus_area": (2, lambda a, b: (a + b) / 2),
    "triangle_area": (2, lambda a, b: a * b / 2),
    "triangle_perimeter": (3, lambda a, b, c: a + b + c),
    "triangle_area_three_edges": (3, _heron),
    "quadrilateral_area": (3, lambda a, b, c: (b + c) / 2 * a),
    "surface_sphere": (1, lambda a: 4 * math.pi * a ** 2),
    "volume_sphere": (1, lambda a: 4 / 3 * math.pi * a ** 3),
    "surface_cube": (1, lambda a: 6 * a ** 2),
    "volume_cube": (1, lambda a: 6 * a ** 2),
    "cube_edge_by_volume": (1, lambda a: a ** (1 / 3)),
    "surface_rectangular_prism": (3, lambda a, b, c: 2 * (a * b + b * c + c * a)),
    "volume_rectangular_prism": (3, lambda a, b, c: a * b * c),
    "volume_cylinder": (2, lambda a, b: math.pi * b ** 2 * a / 3),
    "volume_cone": (2, lambda a, b: math.pi * a ** 3 / 3),
    "surface_cylinder": (2, lambda a, b: 2 * math.pi * a * b + 2 * math.pi * a ** 2),
    "original_price_before_gain": (2, lambda a, b: b * (100 + a) / 100),
    "original_price_before_loss": (2, lambda a, b: b * (100 - a) / 100),
}

OPERATIONS: dict[str, int] = {name: arity for name, (arity, _) in _OPS.items()}


def _show(value: Number | complex) -> str:
    """Short text of a value for messages (a huge int cannot even be printed in Python 3.11)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<{value.bit_length()}-bit int>"
    return repr(value)


def apply_op(op: str, args: list[Number]) -> Number:
    """Value of one operation on already-resolved arguments; ProgramError if it has none.

    Complex results (``power(-8, 1/3)``), NaN, inf, overflow, division by zero and
    integers beyond MAX_INT_BITS all raise, since the checker counts each as wrong (or hangs).
    """
    if op not in _OPS:
        raise ProgramError(f"unknown operation {op!r}")
    arity, function = _OPS[op]
    if len(args) != arity:
        raise ProgramError(f"{op} takes {arity} argument(s), got {len(args)}")
    call = f"{op}({', '.join(_show(arg) for arg in args)})"
    try:
        value = function(*args)
    except (ArithmeticError, ValueError, TypeError) as error:
        raise ProgramError(f"{call} failed: {error}") from None
    if isinstance(value, complex):
        raise ProgramError(f"{call} is complex")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ProgramError(f"{call} exceeds {MAX_INT_BITS} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProgramError(f"{call} is not finite")
    return value


# ---------------------------------------------------------------- parsing and execution

_STEP = re.compile(r"([A-Za-z_]\w*)\((.*)\)")
_STEP_REF = re.compile(r"#([0-9]{1,9})")  # bounded: int() of a 5,000-digit string raises
_NUMBER_REF = re.compile(r"n([0-9]{1,9})")


@dataclass
class Step:
    """One ``op(arg,...)`` piece of a program, arguments as written (``n0``, ``#1``, ``const_2``)."""

    op: str
    args: list[str]


def parse_program(formula: str) -> list[Step]:
    """Steps of a program, checked for everything that does not need the problem's numbers.

    Whitespace is ignored. Raises ProgramError for: no steps, more than MAX_STEPS steps,
    a piece that is not ``op(args)``, an unknown op, a wrong number of arguments, an
    argument that is not ``nK``/``#k``/``const_X``, or ``#k`` naming the current or a
    later step.
    """
    pieces = ["".join(piece.split()) for piece in formula.split("|")]
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        raise ProgramError("empty program")
    if len(pieces) > MAX_STEPS:
        raise ProgramError(f"{len(pieces)} steps exceed the limit {MAX_STEPS}")
    steps = []
    for index, piece in enumerate(pieces):
        match = _STEP.fullmatch(piece)
        if match is None:
            raise ProgramError(f"step {index} {piece!r} is not of the form op(arg,...)")
        op, arg_text = match.groups()
        args = arg_text.split(",") if arg_text else []
        if op not in OPERATIONS:
            raise ProgramError(f"step {index}: unknown operation {op!r}")
        if len(args) != OPERATIONS[op]:
            raise ProgramError(f"step {index}: {op} takes {OPERATIONS[op]} argument(s), got {len(args)}")
        for arg in args:
            _check_argument(arg, index)
        steps.append(Step(op, args))
    return steps


def _check_argument(arg: str, step_index: int) -> None:
    if arg.startswith("const_"):
        const_value(arg)
        return
    step_ref = _STEP_REF.fullmatch(arg)
    if step_ref is not None:
        if int(step_ref.group(1)) >= step_index:
            raise ProgramError(f"step {step_index} uses {arg} before it is computed")
        return
    if _NUMBER_REF.fullmatch(arg) is None:
        raise ProgramError(f"step {step_index}: bad argument {arg!r} (expected nK, #k or const_X)")


def _resolve(arg: str, numbers: list[float], results: list[Number]) -> Number:
    if arg.startswith("const_"):
        return const_value(arg)
    if arg.startswith("#"):
        return results[int(arg[1:])]
    k = int(arg[1:])
    if k >= len(numbers):
        raise ProgramError(f"{arg} is out of range: the problem has {len(numbers)} number(s)")
    return numbers[k]


def execute(formula: str, numbers: list[float], time_limit: float = DEFAULT_TIME_LIMIT_S) -> float:
    """Value of a program on a problem's numbers; ProgramError for anything wrong.

    Steps compute with ints and floats as the checker does; the last value is returned
    as a float. The work is bounded (see the module docstring), and ``time_limit``
    seconds of wall clock is checked after every step as a last guard.
    """
    deadline = time.perf_counter() + time_limit
    results: list[Number] = []
    for index, step in enumerate(parse_program(formula)):
        try:
            args = [_resolve(arg, numbers, results) for arg in step.args]
            results.append(apply_op(step.op, args))
        except ProgramError as error:
            raise ProgramError(f"step {index}: {error}") from None
        if time.perf_counter() > deadline:
            raise ProgramError(f"time limit of {time_limit} s exceeded at step {index}")
    try:
        return float(results[-1])
    except OverflowError:
        raise ProgramError(f"the value {_show(results[-1])} is beyond the float range") from None


# ---------------------------------------------------------------- tokens and normal form

_TOKEN = re.compile(r"[^(),|\s]+")
STEP_END = "|"


def program_tokens(formula: str) -> list[str]:
    """Decoder tokens of a program: per step ``op``, its arguments, then ``|``.

    Never raises: a malformed formula still gives the tokens it contains, which is what
    token accuracy needs for arbitrary predictions. Spaces and a trailing ``|`` do not matter.
    """
    tokens: list[str] = []
    for piece in formula.split(STEP_END):
        words = _TOKEN.findall(piece)
        if words:
            tokens.extend(words)
            tokens.append(STEP_END)
    return tokens


def tokens_to_program(tokens: list[str]) -> str:
    """Program text of a token list, the inverse of ``program_tokens`` (no trailing ``|``).

    Each ``|``-terminated group becomes ``op(arg,...)``; a last group without ``|`` is
    kept, empty groups are dropped. Any token list gives a string.
    """
    steps, group = [], []
    for token in [*tokens, STEP_END]:
        if token != STEP_END:
            group.append(token)
        elif group:
            steps.append(f"{group[0]}({','.join(group[1:])})")
            group = []
    return STEP_END.join(steps)


def normalise(formula: str) -> str:
    """Form compared by exact match: whitespace removed, then one trailing ``|`` removed."""
    compact = "".join(formula.split())
    return compact[:-1] if compact.endswith(STEP_END) else compact
