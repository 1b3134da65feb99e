"""The program grammar against gold programs, exhaustive enumeration and constrained decoding."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from col775.mathqa import programs
from col775.mathqa.beam import beam_search, greedy_search
from col775.mathqa.grammar import ProgramGrammar

DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "mathqa" / "dev.json"
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)


def mathqa_itos(max_numbers: int = 8, max_steps: int = 8) -> list[str]:
    """A MathQA-like target vocabulary, plus an operation name the scorer does not know."""
    return [
        *SPECIALS, *programs.OPERATIONS, "|", *programs.CONSTANTS,
        *(f"n{k}" for k in range(max_numbers)), *(f"#{k}" for k in range(max_steps)), "diagonal",
    ]


def check_program(tokens: list[str], arity: dict[str, int], num_numbers: int) -> bool:
    """Reference parser: ``op arg.. |`` steps, right arity, nK < num_numbers, #k for earlier steps."""
    position, steps = 0, 0
    while position < len(tokens):
        op = tokens[position]
        if op not in arity:
            return False
        end = position + 1 + arity[op]
        if end >= len(tokens) or tokens[end] != "|":
            return False
        for arg in tokens[position + 1 : end]:
            kind, _, index = arg.partition("_") if arg.startswith("const_") else (arg[:1], "", arg[1:])
            if kind == "const":
                continue
            if kind not in ("n", "#") or not index.isdigit():
                return False
            if int(index) >= (num_numbers if kind == "n" else steps):
                return False
        steps, position = steps + 1, end + 1
    return steps > 0


def test_every_gold_dev_program_is_accepted_token_by_token() -> None:
    if not DEV.is_file():
        pytest.skip(f"{DEV} is absent (the course data is not on this machine)")
    records = json.loads(DEV.read_text(encoding="utf-8"))
    targets = [programs.program_tokens(r["linear_formula"]) for r in records]
    itos = [*SPECIALS, *sorted({token for tokens in targets for token in tokens})]
    stoi = {token: i for i, token in enumerate(itos)}
    grammar = ProgramGrammar(itos, eos_id=EOS, pad_id=PAD, bos_id=BOS)
    assert all(check_program(tokens, programs.OPERATIONS, 10**9) for tokens in targets)  # our tokenisation

    width = max(len(tokens) for tokens in targets) + 1
    ids = torch.full((len(records), width), PAD)  # [N, T]: program, <eos>, padding
    for row, tokens in enumerate(targets):
        ids[row, : len(tokens) + 1] = torch.tensor([stoi[t] for t in tokens] + [EOS])
    num_numbers = torch.tensor([len(programs.extract_numbers(r["Problem"])) for r in records])
    lengths = torch.tensor([len(tokens) + 1 for tokens in targets])
    # Each program's own length as budget: the bound must let exactly-fitting programs through.
    state = grammar.initial(num_numbers, max_len=width)
    state.budget = lengths.clone()
    for position in range(width):
        allowed = grammar.allowed(state).gather(1, ids[:, position : position + 1]).squeeze(1)
        live = position < lengths
        refused = [records[i]["linear_formula"] for i in (live & ~allowed).nonzero().squeeze(1).tolist()]
        assert not refused, f"position {position}: gold token refused in {refused[:3]}"
        state = grammar.advance(state, ids[:, position])


TINY_ITOS = [*SPECIALS, "add", "negate", "const_1", "n0", "n1", "#0", "#1", "|", "diagonal"]
TINY_ARITY = {"add": 2, "negate": 1}


@pytest.mark.parametrize("num_numbers", [0, 1, 2])
def test_masks_equal_the_continuations_of_all_valid_programs(num_numbers: int) -> None:
    """Exhaustive over a tiny vocabulary: the mask after a prefix is exactly the set of next tokens
    with which some valid program of at most max_len tokens (<eos> included) goes on."""
    max_len = 10
    arguments = ["const_1", "n0", "n1", "#0", "#1"]
    shaped_steps = [(op, *args, "|") for op, arity in TINY_ARITY.items()
                    for args in itertools.product(arguments, repeat=arity)]
    prefixes: set[tuple[str, ...]] = set()
    for count in range(1, 4):
        for steps in itertools.product(shaped_steps, repeat=count):
            tokens = [token for step in steps for token in step]
            if len(tokens) < max_len and check_program(tokens, TINY_ARITY, num_numbers):
                complete = (*tokens, "<eos>")
                prefixes.update(complete[:end] for end in range(len(complete) + 1))
    assert len(prefixes) > 50

    grammar = ProgramGrammar(TINY_ITOS, eos_id=EOS, pad_id=PAD, bos_id=BOS, operations=TINY_ARITY)
    stoi = {token: i for i, token in enumerate(TINY_ITOS)}
    for length in range(max_len + 1):
        group = sorted(p for p in prefixes if len(p) == length)
        state = grammar.initial(torch.full((len(group),), num_numbers), max_len=max_len)
        for position in range(length):
            state = grammar.advance(state, torch.tensor([stoi[p[position]] for p in group]))
        allowed = grammar.allowed(state)
        for prefix, row in zip(group, allowed.tolist()):
            expected = {token for token in TINY_ITOS if (*prefix, token) in prefixes}
            if prefix[-1:] == ("<eos>",):
                expected = {"<pad>"}  # after the end, only padding
            assert {TINY_ITOS[i] for i, ok in enumerate(row) if ok} == expected, prefix


def test_spec_rules_on_a_hand_written_prefix() -> None:
    itos = mathqa_itos()
    stoi = {token: i for i, token in enumerate(itos)}
    grammar = ProgramGrammar(itos, eos_id=EOS, pad_id=PAD, bos_id=BOS)
    state = grammar.initial(torch.tensor([2]))
    allowed = lambda: {itos[i] for i, ok in enumerate(grammar.allowed(state)[0].tolist()) if ok}  # noqa: E731
    assert allowed() == set(programs.OPERATIONS)  # no <eos> before the first step, no unknown op
    for token in ("divide", "n1"):
        state = grammar.advance(state, torch.tensor([stoi[token]]))
    assert allowed() == {"n0", "n1", *programs.CONSTANTS}  # no n2 (two numbers), no #0 yet
    state = grammar.advance(state, torch.tensor([stoi["const_100"]]))
    assert allowed() == {"|"}
    state = grammar.advance(state, torch.tensor([stoi["|"]]))
    assert allowed() == {*programs.OPERATIONS, "<eos>"}
    state = grammar.advance(state, torch.tensor([stoi["triangle_perimeter"]]))
    assert allowed() == {"n0", "n1", "#0", *programs.CONSTANTS}
    state = grammar.advance(state, torch.tensor([EOS]))
    assert not {"<unk>", "<bos>", "diagonal"} & allowed()


def test_constrained_sampling_always_gives_valid_programs() -> None:
    itos = mathqa_itos()
    grammar = ProgramGrammar(itos, eos_id=EOS, pad_id=PAD, bos_id=BOS)
    generator = torch.Generator().manual_seed(0)
    never = torch.tensor([UNK, BOS, itos.index("diagonal")])
    for max_len in (5, 6, 9, 16, 40):
        num_numbers = torch.randint(0, 6, (300,), generator=generator)
        state, outputs = grammar.initial(num_numbers, max_len=max_len), []
        for _ in range(max_len):
            allowed = grammar.allowed(state)
            assert allowed.any(dim=1).all() and not allowed[:, never].any()
            assert (allowed[:, PAD] == state.ended).all()
            logits = 3 * torch.randn(len(num_numbers), len(itos), generator=generator)
            probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            outputs.append(tokens)
            state = grammar.advance(state, tokens)
        assert state.ended.all()
        for row, n in zip(torch.stack(outputs, dim=1).tolist(), num_numbers.tolist()):
            program = [itos[i] for i in row[: row.index(EOS)]]
            assert check_program(program, programs.OPERATIONS, n), program
            programs.parse_program(programs.tokens_to_program(program))


@dataclass
class Vocab:
    itos: list[str]
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS
    unk_id: int = UNK


@dataclass
class State:
    hidden: torch.Tensor  # [N, H]

    def index_select(self, idx: torch.Tensor) -> State:
        return State(self.hidden.index_select(0, idx))


class RandomProgramDecoder(nn.Module):
    """Random-weight GRU decoder over the MathQA vocabulary; ``batch`` is a LongTensor of example ids."""

    def __init__(self, itos: list[str], seed: int, hidden: int = 16) -> None:
        super().__init__()
        self.tgt_vocab = Vocab(itos)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.source = nn.Embedding(64, hidden)
            self.embed = nn.Embedding(len(itos), hidden)
            self.cell = nn.GRUCell(hidden, hidden)
            self.out = nn.Linear(hidden, len(itos))

    def start(self, batch: torch.Tensor) -> State:
        return State(self.source(batch))

    def step(self, prev: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hidden = self.cell(self.embed(prev), state.hidden)
        return 4 * self.out(hidden), State(hidden)


def test_constrained_beam_and_greedy_give_valid_programs() -> None:
    itos = mathqa_itos()
    grammar = ProgramGrammar(itos, eos_id=EOS, pad_id=PAD, bos_id=BOS)
    model, examples = RandomProgramDecoder(itos, seed=1), torch.arange(12)
    num_numbers = torch.tensor([0, 1, 2, 3, 4, 5] * 2)
    max_len = 14
    greedy = greedy_search(model, examples, max_len, grammar=grammar, num_numbers=num_numbers)
    beams = beam_search(model, examples, 4, max_len, length_penalty=0.7, grammar=grammar, num_numbers=num_numbers)
    unconstrained = greedy_search(model, examples, max_len)
    for n, tokens, hypotheses, free in zip(num_numbers.tolist(), greedy, beams, unconstrained):
        assert len(hypotheses) == 4
        for ids in [tokens, *(h.tokens for h in hypotheses)]:
            assert len(ids) < max_len and check_program([itos[i] for i in ids], programs.OPERATIONS, n)
    assert not all(check_program([itos[i] for i in ids], programs.OPERATIONS, n)
                   for ids, n in zip(unconstrained, num_numbers.tolist()))  # the grammar did the work
    beam_one = beam_search(model, examples, 1, max_len, length_penalty=0.0, grammar=grammar, num_numbers=num_numbers)
    assert [h[0].tokens for h in beam_one] == greedy


def test_bad_vocabularies_and_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="constant"):
        ProgramGrammar([*SPECIALS, "add", "n0", "|"], eos_id=EOS, pad_id=PAD, bos_id=BOS)
    grammar = ProgramGrammar(TINY_ITOS, eos_id=EOS, pad_id=PAD, bos_id=BOS, operations=TINY_ARITY)
    with pytest.raises(ValueError, match="max_len"):
        grammar.initial(torch.tensor([1]), max_len=3)  # "negate const_1 | <eos>" needs 4
    with pytest.raises(ValueError, match="num_numbers"):
        greedy_search(RandomProgramDecoder(TINY_ITOS, seed=0), torch.arange(2), 6, grammar=grammar)
