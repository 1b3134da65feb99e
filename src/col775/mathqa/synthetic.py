"""Generated MathQA-style word problems, so every mathqa command runs without the course's data.

Each family (percentages, profit and loss, speed, interest, work, ...) has several
templates. A template is lower-cased, space-separated text like the course's data with
``{x}`` for a number, ``<A>``/``<item>``... for a word drawn from a synonym list and
``[find|calculate]`` for inline alternatives, plus a program over the same ``{x}``
names in the course's operation language. When a record is made, the ``{x}`` names are
numbered ``n0, n1, ...`` in the order they appear in the text (which is the order the
scorer extracts numbers in), and the answer is ``programs.execute`` of the program, so
every gold program executes to its answer by construction.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from col775.mathqa import programs

Values = dict[str, float]


@dataclass(frozen=True)
class Template:
    """One wording of a problem: text, program, number ranges and a validity check."""

    text: str
    formula: str
    numbers: dict[str, tuple[float, float, float]]  # name -> (low, high, step); step 1 gives integers
    valid: Callable[[Values], bool] = lambda values: True


def _t(text: str, formula: str, valid: Callable[[Values], bool] | None = None, **numbers: tuple) -> Template:
    ranges = {name: (r[0], r[1], r[2] if len(r) > 2 else 1) for name, r in numbers.items()}
    return Template(text, formula, ranges, valid or (lambda values: True))


WORDS: dict[str, list[str]] = {
    "A": ["ram", "sita", "john", "priya", "amit", "ravi", "anita", "mary", "karan", "meena"],
    "item": ["article", "watch", "bicycle", "chair", "table", "radio", "book", "fan", "phone"],
    "seller": ["shopkeeper", "trader", "dealer", "man", "vendor", "merchant"],
    "vehicle": ["car", "bus", "cyclist", "truck", "scooter", "motorbike"],
    "pair": ["boys:girls", "men:women", "apples:oranges", "red balls:blue balls", "cows:goats"],
    "students": ["students", "boys", "players", "workers"],
    "teacher": ["teacher", "coach", "manager", "principal"],
}

FAMILIES: dict[str, list[Template]] = {
    "percentage": [
        _t("what is {p} % of {x} ?", "multiply({p},{x})|divide(#0,const_100)|", p=(1, 99), x=(10, 2000)),
        _t("{a} is what percent of {b} ?", "divide({a},{b})|multiply(#0,const_100)|", a=(1, 500), b=(1, 500)),
        _t("if {p} % of a number is {x} , [what is|find] the number ?",
           "divide({x},{p})|multiply(#0,const_100)|", p=(1, 99), x=(5, 900)),
        _t("the price of a <item> is rs . {x} . it [rises|is increased] by {p} % . [what is|find] the new price ?",
           "multiply({x},{p})|divide(#0,const_100)|add({x},#1)|", x=(50, 5000), p=(1, 60)),
    ],
    "profit_loss": [
        _t("a <seller> buys a <item> for rs . {c} and sells it for rs . {s} . [find|what is] the gain percent ?",
           "subtract({s},{c})|divide(#0,{c})|multiply(#1,const_100)|", lambda v: v["c"] < v["s"] <= 2 * v["c"],
           c=(100, 2000), s=(100, 3000)),
        _t("by selling a <item> for rs . {s} a <seller> loses {p} % . [what is|find] the cost price ?",
           "subtract(const_100,{p})|divide({s},#0)|multiply(#1,const_100)|", s=(100, 5000), p=(1, 50)),
        _t("a <item> costing rs . {c} is sold at a profit of {p} % . [find|what is] the selling price ?",
           "multiply({c},{p})|divide(#0,const_100)|add({c},#1)|", c=(100, 5000), p=(1, 80)),
        _t("a <seller> marks a <item> at rs . {m} and allows a discount of {p} % . [find|what is] the selling price ?",
           "multiply({m},{p})|divide(#0,const_100)|subtract({m},#1)|", m=(100, 5000), p=(1, 60)),
    ],
    "speed_distance": [
        _t("a <vehicle> covers {d} km in {t} hours . [what is|find] its speed in km / hr ?",
           "divide({d},{t})|", d=(10, 900), t=(1, 20)),
        _t("a train {l} m long [passes|crosses] a pole in {t} seconds . [what is|find] its speed in km / hr ?",
           "divide({l},{t})|multiply(#0,const_3_6)|", l=(50, 600), t=(3, 60)),
        _t("how long will a <vehicle> moving at {v} km / hr take to [travel|cover] {d} km ?",
           "divide({d},{v})|", v=(5, 120), d=(10, 900)),
        _t("<A> goes to a place at {u} km / hr and returns at {w} km / hr . [what is|find] the average speed "
           "for the whole journey ?", "multiply(const_2,{u})|multiply(#0,{w})|add({u},{w})|divide(#1,#2)|",
           u=(5, 90), w=(5, 90)),
    ],
    "simple_interest": [
        _t("[find|what is] the simple interest on rs . {P} at {r} % per annum for {t} years ?",
           "multiply({P},{r})|multiply(#0,{t})|divide(#1,const_100)|", P=(500, 20000), r=(1, 20), t=(1, 10)),
        _t("a sum of rs . {P} amounts to rs . {A} in {t} years at simple interest . [find|what is] the rate percent ?",
           "subtract({A},{P})|multiply(#0,const_100)|multiply({P},{t})|divide(#1,#2)|",
           lambda v: v["P"] < v["A"] <= 3 * v["P"], P=(500, 10000), A=(600, 20000), t=(1, 10)),
        _t("what sum will give rs . {I} as simple interest in {t} years at {r} % per annum ?",
           "multiply({I},const_100)|multiply({t},{r})|divide(#0,#1)|", I=(50, 5000), t=(1, 10), r=(1, 20)),
    ],
    "compound_interest": [
        _t("[find|what is] the compound interest on rs . {P} for {t} years at {r} % per annum compounded annually ?",
           "divide({r},const_100)|add(#0,const_1)|power(#1,{t})|multiply({P},#2)|subtract(#3,{P})|",
           P=(500, 20000), t=(1, 5), r=(1, 20)),
        _t("what will rs . {P} amount to in {t} years at {r} % per annum compound interest ?",
           "divide({r},const_100)|add(#0,const_1)|power(#1,{t})|multiply({P},#2)|",
           P=(500, 20000), t=(1, 5), r=(1, 20)),
    ],
    "work": [
        _t("<A> can do a piece of work in {a} days and <B> can do it in {b} days . how long will they take "
           "working together ?", "multiply({a},{b})|add({a},{b})|divide(#0,#1)|", a=(2, 40), b=(2, 40)),
        _t("<A> can finish a job in {a} days . <A> and <B> together finish it in {c} days . in how many days "
           "can <B> alone finish it ?", "inverse({c})|inverse({a})|subtract(#0,#1)|inverse(#2)|",
           lambda v: v["a"] > v["c"], a=(3, 40), c=(2, 30)),
        _t("{m} men can build a wall in {d} days . how many days will {k} men take to build it ?",
           "multiply({m},{d})|divide(#0,{k})|", m=(2, 50), d=(2, 60), k=(2, 50)),
    ],
    "ratio": [
        _t("divide rs . {T} between <A> and <B> in the ratio {x} : {y} . [what is|find] <B> ' s share ?",
           "add({x},{y})|divide({T},#0)|multiply(#1,{y})|", T=(100, 10000), x=(1, 12), y=(1, 12)),
        _t("the ratio of <boys> to <girls> is {x} : {y} . if there are {b} <boys> , how many <girls> are there ?",
           "divide({b},{x})|multiply(#0,{y})|", x=(1, 12), y=(1, 12), b=(10, 500)),
        _t("two numbers are in the ratio {x} : {y} and their sum is {s} . [find|what is] the second number ?",
           "add({x},{y})|divide({s},#0)|multiply({y},#1)|", x=(1, 12), y=(1, 12), s=(10, 1000)),
    ],
    "area": [
        _t("[find|what is] the area of a rectangle of length {l} m and breadth {b} m ?",
           "rectangle_area({l},{b})|", l=(2, 200), b=(2, 200)),
        _t("[find|what is] the area of a circle of radius {r} cm ?", "circle_area({r})|", r=(1, 50, 0.5)),
        _t("the perimeter of a square is {p} cm . [find|what is] its area ?",
           "square_edge_by_perimeter({p})|square_area(#0)|", p=(4, 400)),
        _t("a rectangular field is {l} m long and {b} m wide . [find|what is] the cost of fencing it at rs . {c} "
           "per metre ?", "rectangle_perimeter({l},{b})|multiply(#0,{c})|", l=(5, 300), b=(5, 300), c=(1, 50)),
        _t("[find|what is] the area of a triangle with base {b} cm and height {h} cm ?",
           "triangle_area({b},{h})|", b=(2, 100), h=(2, 100)),
    ],
    "volume": [
        _t("[find|what is] the volume of a cube of edge {a} cm ?", "power({a},const_3)|", a=(1, 40)),
        _t("a box measures {l} cm by {b} cm by {h} cm . [find|what is] its volume ?",
           "volume_rectangular_prism({l},{b},{h})|", l=(1, 60), b=(1, 60), h=(1, 60)),
        _t("[find|what is] the volume of a sphere of radius {r} cm ?", "volume_sphere({r})|", r=(1, 30, 0.5)),
        _t("[find|what is] the total surface area of a cube of edge {a} cm ?", "surface_cube({a})|", a=(1, 40)),
    ],
    "average": [
        _t("[what is|find] the average of {a} , {b} and {c} ?", "add({a},{b})|add(#0,{c})|divide(#1,const_3)|",
           a=(1, 200), b=(1, 200), c=(1, 200)),
        _t("the average of {k} numbers is {m} . [what is|find] their sum ?", "multiply({k},{m})|",
           k=(2, 50), m=(1, 100, 0.5)),
        _t("the average age of {k} <students> is {m} years . if the <teacher> ' s age is included the average "
           "becomes {q} years . [what is|find] the <teacher> ' s age ?",
           "add({k},const_1)|multiply(#0,{q})|multiply({k},{m})|subtract(#1,#2)|",
           lambda v: v["q"] > v["m"], k=(5, 40), m=(8, 30), q=(9, 40)),
    ],
}

_NUMBER_SLOT = re.compile(r"\{(\w+)\}")
_WORD_SLOT = re.compile(r"<(\w+)>")
_CHOICE = re.compile(r"\[([^\]]+)\]")


def _draw(rng: random.Random, low: float, high: float, step: float) -> float:
    count = int(round((high - low) / step))
    return low + step * rng.randint(0, count)


def _render_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _round_answer(value: float) -> int | float:
    """Six significant digits (far inside the scorer's 2%), an int when whole."""
    rounded = float(f"{value:.6g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded


def make_record(template: Template, rng: random.Random) -> dict[str, Any] | None:
    """One record from a template, or None when the drawn numbers fail its check or give answer 0."""
    values = {name: _draw(rng, *spec) for name, spec in template.numbers.items()}
    if not template.valid(values):
        return None
    people = dict(zip(["A", "B"], rng.sample(WORDS["A"], 2)))
    words = {key: rng.choice(options) for key, options in WORDS.items() if key != "A"} | people
    words["boys"], words["girls"] = words.pop("pair").split(":")
    text = _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template.text)
    text = _WORD_SLOT.sub(lambda m: words[m.group(1)], text)
    order = [m.group(1) for m in _NUMBER_SLOT.finditer(text)]
    problem = _NUMBER_SLOT.sub(lambda m: _render_number(values[m.group(1)]), text)
    index = {name: f"n{k}" for k, name in enumerate(order)}
    formula = _NUMBER_SLOT.sub(lambda m: index[m.group(1)], template.formula)
    numbers = programs.extract_numbers(problem)
    if numbers != [values[name] for name in order]:
        raise RuntimeError(f"template {template.text!r} renders numbers the scorer reads differently: {problem!r}")
    try:
        answer = programs.execute(formula, numbers)
    except programs.ProgramError:
        return None
    if answer == 0 or abs(answer) > 1e12:
        return None
    return {"Problem": problem, "linear_formula": formula, "answer": _round_answer(answer)}


def generate_tagged(n: int, seed: int = 0) -> list[tuple[str, int, dict[str, Any]]]:
    """``n`` records as (family, template index, record); every template is used once per round."""
    rng = random.Random(seed)
    pairs = [(family, i) for family, templates in FAMILIES.items() for i in range(len(templates))]
    out: list[tuple[str, int, dict[str, Any]]] = []
    while len(out) < n:
        rng.shuffle(pairs)
        for family, i in pairs:
            if len(out) == n:
                break
            record = None
            while record is None:
                record = make_record(FAMILIES[family][i], rng)
            out.append((family, i, record))
    return out


def generate(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records ``{"Problem", "linear_formula", "answer"}``, deterministic from ``seed``."""
    return [record for _, _, record in generate_tagged(n, seed)]


def write_synthetic(out_dir: str | Path, n_train: int = 4000, n_dev: int = 500, n_test: int = 500,
                    seed: int = 0) -> Path:
    """Write train.json, dev.json and test.json of generated records into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = generate(n_train + n_dev + n_test, seed)
    splits = {"train": records[:n_train], "dev": records[n_train:n_train + n_dev],
              "test": records[n_train + n_dev:]}
    for name, rows in splits.items():
        (out_dir / f"{name}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return out_dir
