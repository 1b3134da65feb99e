"""Beam search against brute-force enumeration, greedy decoding and itself under batching."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from col775.mathqa import data, programs
from col775.mathqa.beam import Hypothesis, beam_search, greedy_search
from col775.mathqa.grammar import ProgramGrammar

PAD, BOS, EOS, UNK = 0, 1, 2, 6
WORDS = (3, 4, 5)  # the real tokens "a", "b", "c"


@dataclass
class Vocab:
    itos: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "a", "b", "c", "<unk>")
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS
    unk_id: int = UNK


@dataclass
class State:
    hidden: torch.Tensor  # [N, H]
    memory: torch.Tensor  # [N, S, H] encoder outputs, gathered with the beams

    def index_select(self, idx: torch.Tensor) -> State:
        return type(self)(self.hidden.index_select(0, idx), self.memory.index_select(0, idx))


class SharedMemoryState(State):
    """Implements the optional ``select_beams``: the memory, equal for all beams of an example, stays put."""

    def select_beams(self, idx: torch.Tensor) -> SharedMemoryState:
        return SharedMemoryState(self.hidden.index_select(0, idx), self.memory)


class TinyDecoder(nn.Module):
    """Random-weight GRU decoder with dot attention: logits depend on the source and the whole prefix."""

    def __init__(self, seed: int, hidden: int = 8, src_vocab: int = 11, eos_bias: float = 0.0,
                 state_type: type[State] = State, unk_bias: float = 0.0, tgt_vocab: Any = None) -> None:
        super().__init__()
        self.tgt_vocab = tgt_vocab or Vocab()
        vocab_size = len(self.tgt_vocab.itos)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.src_embed = nn.Embedding(src_vocab, hidden)
            self.embed = nn.Embedding(vocab_size, hidden)
            self.cell = nn.GRUCell(2 * hidden, hidden)
            self.out = nn.Linear(2 * hidden, vocab_size)
        self.double()
        self.eos_bias, self.unk_bias = eos_bias, unk_bias
        self.state_type = state_type
        self.rows_stepped = 0

    def start(self, batch: torch.Tensor) -> State:
        memory = self.src_embed(batch)  # [B, S, H]
        return self.state_type(memory.mean(dim=1).tanh(), memory)

    def step(self, prev: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.rows_stepped += prev.shape[0]
        attention = torch.softmax(torch.bmm(state.memory, state.hidden[:, :, None]).squeeze(2), dim=1)
        context = (attention[:, :, None] * state.memory).sum(dim=1)
        hidden = self.cell(torch.cat([self.embed(prev), context], dim=1), state.hidden)
        logits = 3 * self.out(torch.cat([hidden, context], dim=1))
        logits[:, self.tgt_vocab.eos_id] += self.eos_bias
        logits[:, self.tgt_vocab.unk_id] += self.unk_bias
        return logits, type(state)(hidden, state.memory)


def sources(batch_size: int, seed: int, length: int = 5) -> torch.Tensor:
    return torch.randint(0, 11, (batch_size, length), generator=torch.Generator().manual_seed(seed))


def sequence_log_prob(model: TinyDecoder, source: torch.Tensor, tokens: list[int]) -> float:
    """Log-probability of ``tokens + [<eos>]`` for one source, stepping the model token by token."""
    with torch.no_grad():
        state = model.start(source[None])
        prev, total = BOS, 0.0
        for token in [*tokens, EOS]:
            logits, state = model.step(torch.tensor([prev]), state)
            total += torch.log_softmax(logits[0], dim=0)[token].item()
            prev = token
    return total


def brute_force(model: TinyDecoder, source: torch.Tensor, max_len: int, alpha: float) -> list[tuple[list[int], float]]:
    """Every sequence of at most max_len tokens ending in <eos>, with its normalised score, best first."""
    ranked = []
    for length in range(max_len):
        for tokens in itertools.product(WORDS, repeat=length):
            log_prob = sequence_log_prob(model, source, list(tokens))
            ranked.append((list(tokens), log_prob / (length + 1) ** alpha))
    return sorted(ranked, key=lambda item: -item[1])


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0])
def test_large_beam_finds_every_sequence_in_brute_force_order(alpha: float) -> None:
    model, src, max_len = TinyDecoder(seed=1), sources(3, seed=2), 4
    results = beam_search(model, src, beam_size=64, max_len=max_len, length_penalty=alpha)
    for b, hypotheses in enumerate(results):
        expected = brute_force(model, src[b], max_len, alpha)  # 1 + 3 + 9 + 27 = 40 sequences
        assert [h.tokens for h in hypotheses] == [tokens for tokens, _ in expected]
        assert [h.score for h in hypotheses] == pytest.approx([score for _, score in expected], abs=1e-9)


def test_small_beam_scores_are_the_models_log_probs() -> None:
    model, src, max_len = TinyDecoder(seed=3), sources(4, seed=4), 7
    for b, hypotheses in enumerate(beam_search(model, src, beam_size=3, max_len=max_len, length_penalty=0.6)):
        assert len(hypotheses) == 3
        for h in hypotheses:
            log_prob = sequence_log_prob(model, src[b], h.tokens)
            assert h.log_prob == pytest.approx(log_prob, abs=1e-9)
            assert h.score == pytest.approx(log_prob / (len(h.tokens) + 1) ** 0.6, abs=1e-9)


@pytest.mark.parametrize("seed,eos_bias", [(5, 0.0), (5, 0.5), (7, 0.0), (8, 0.0)])
def test_beam_size_one_is_greedy(seed: int, eos_bias: float) -> None:
    model, src = TinyDecoder(seed=seed, eos_bias=eos_bias), sources(8, seed=seed)
    greedy = greedy_search(model, src, max_len=12)
    beam = beam_search(model, src, beam_size=1, max_len=12, length_penalty=0.0)
    assert [hypotheses[0].tokens for hypotheses in beam] == greedy
    assert len({len(tokens) for tokens in greedy}) > 1  # the examples stop at different steps


UNK_BIAS = 30.0  # far above the other logits: <unk> is the model's first choice at every step (asserted)


@pytest.mark.parametrize("unk_bias", [0.0, UNK_BIAS])
def test_greedy_follows_the_argmax_of_the_model_but_never_takes_unk(unk_bias: float) -> None:
    model, src, max_len = TinyDecoder(seed=13, eos_bias=1.0, unk_bias=unk_bias), sources(4, seed=13), 10
    for b, tokens in enumerate(greedy_search(model, src, max_len=max_len)):
        assert len(tokens) < max_len - 1  # ended by the model's choice, not by the length limit
        with torch.no_grad():
            state, prev = model.start(src[b : b + 1]), BOS
            for expected in [*tokens, EOS]:
                logits, state = model.step(torch.tensor([prev]), state)
                assert int(logits[0].argmax()) == UNK or not unk_bias  # what the biased model prefers
                logits[0, [BOS, PAD, UNK]] = -math.inf
                assert int(logits[0].argmax()) == expected  # what greedy takes
                prev = expected


def assert_same(a: list[list[Hypothesis]], b: list[list[Hypothesis]]) -> None:
    assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
    assert [h.score for hs in a for h in hs] == pytest.approx([h.score for hs in b for h in hs], abs=1e-9)


def test_results_do_not_depend_on_batch_size_or_order() -> None:
    model, src = TinyDecoder(seed=9, eos_bias=1.0), sources(6, seed=9)
    options = dict(beam_size=4, max_len=9, length_penalty=1.0)
    batched = beam_search(model, src, **options)
    one_by_one = [beam_search(model, src[b : b + 1], **options)[0] for b in range(len(src))]
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = beam_search(model, src[order], **options)
    assert_same(batched, one_by_one)
    assert_same([batched[i] for i in order.tolist()], permuted)


def test_hypotheses_are_sorted_and_well_formed() -> None:
    model, max_len = TinyDecoder(seed=10, eos_bias=0.5), 8
    for hypotheses in beam_search(model, sources(5, seed=10), beam_size=5, max_len=max_len, length_penalty=0.8):
        scores = [h.score for h in hypotheses]
        assert len(hypotheses) == 5
        assert scores == sorted(scores, reverse=True)
        assert all(h.log_prob <= 0 for h in hypotheses)
        assert len({tuple(h.tokens) for h in hypotheses}) == 5  # no duplicates
        assert all(len(h.tokens) < max_len and set(h.tokens) <= set(WORDS) for h in hypotheses)


@pytest.mark.parametrize("seed,alpha", [(7, 0.0), (7, 1.0), (12, 0.5), (12, 1.0)])
def test_early_stop_gives_the_same_result_as_running_to_max_len(seed: int, alpha: float) -> None:
    # (12, 1.0) catches the tempting but unsound bound s / t**alpha (t = current length).
    src = sources(6, seed=seed)
    early, full = TinyDecoder(seed=seed), TinyDecoder(seed=seed)
    options = dict(beam_size=3, max_len=20, length_penalty=alpha)
    assert_same(beam_search(early, src, **options), beam_search(full, src, early_stop=False, **options))
    assert early.rows_stepped < full.rows_stepped  # the bound did stop some examples early


def test_bad_arguments_are_refused() -> None:
    model, src = TinyDecoder(seed=0), sources(2, seed=0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, beam_size=0, max_len=5)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, src, beam_size=2, max_len=5, length_penalty=-0.5)
    with pytest.raises(ValueError, match="max_len"):
        greedy_search(model, src, max_len=0)


def test_select_beams_is_used_only_within_examples() -> None:
    """A state with ``select_beams`` gives the same result; were it used to expand the batch to
    batch x beam or to drop finished examples, its un-gathered memory would not match."""
    src = sources(6, seed=7)
    options = dict(beam_size=3, max_len=20, length_penalty=0.0)
    plain = beam_search(TinyDecoder(seed=7), src, **options)
    assert_same(plain, beam_search(TinyDecoder(seed=7, state_type=SharedMemoryState), src, **options))


# ---------------------------------------------------------------- <unk> is never emitted


def test_beam_search_never_emits_unk_and_ranks_the_rest_as_brute_force() -> None:
    model, src, max_len = TinyDecoder(seed=12, unk_bias=UNK_BIAS), sources(3, seed=12), 4
    for b, hypotheses in enumerate(beam_search(model, src, beam_size=64, max_len=max_len, length_penalty=0.5)):
        expected = brute_force(model, src[b], max_len, 0.5)  # sequences of a, b, c only, scored with <unk>'s mass
        assert [h.tokens for h in hypotheses] == [tokens for tokens, _ in expected]
        assert [h.score for h in hypotheses] == pytest.approx([score for _, score in expected], abs=1e-9)


def test_grammar_constrained_beam_search_never_emits_unk() -> None:
    vocab = data.Vocab([*data.Vocab.specials, "add", "subtract", "|", "const_1", "n0", "n1", "#0"])
    grammar = ProgramGrammar(vocab.itos, vocab.eos_id, vocab.pad_id, vocab.bos_id)
    model, src = TinyDecoder(seed=13, unk_bias=UNK_BIAS, tgt_vocab=vocab), sources(4, seed=13)
    results = beam_search(model, src, beam_size=5, max_len=12, grammar=grammar, num_numbers=torch.full((4,), 2))
    for hypotheses in results:
        assert len(hypotheses) == 5
        for h in hypotheses:
            assert vocab.unk_id not in h.tokens
            assert programs.parse_program(programs.tokens_to_program(vocab.decode(h.tokens)))
