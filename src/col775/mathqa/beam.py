"""Batched beam search and greedy decoding for the MathQA seq2seq decoders, from scratch.

Decoder interface (``models.py``)
    ``model.start(batch) -> state`` runs the encoder once; ``model.step(prev_tokens [N],
    state) -> (logits [N, V], state)`` advances N hypotheses by one token;
    ``state.index_select(idx)`` gathers every tensor of the state along dim 0;
    ``model.tgt_vocab`` has ``bos_id``, ``eos_id``, ``pad_id``, ``unk_id``, ``itos``; ``len(batch)`` is the
    number of examples. Optional: ``state.select_beams(idx)``, the same gather when ``idx``
    only moves rows between the beams of one example (back-pointers); a state may then keep
    the fields every beam of an example shares (encoder memory, attention keys) as they
    are instead of copying them each step, which dominates a step's cost otherwise.

Search space and scores
    A hypothesis is the tokens after ``<bos>`` up to and including ``<eos>``, at most
    ``max_len`` of them (at the last step only ``<eos>`` may be chosen). Its score is the sum
    of the model's log-probabilities, divided by ``length ** alpha`` with length counting
    ``<eos>`` (``length_normalised``, the one place this is defined; alpha = 0 ranks by
    log-probability, alpha = 1 by the mean per token). ``<bos>``, ``<pad>`` and ``<unk>`` are
    never candidates (an ``<unk>`` in a program could never be right: it stands for a token the
    training programs lack); they are dropped after ``log_softmax``, so without a grammar
    scores are the model's own log-probabilities. A grammar's mask is applied before ``log_softmax``
    (renormalised over well-formed programs; see ``grammar.py``).

Beam search, as in fairseq
    All B examples x k beams are one flat batch of N = B*k rows, row ``b*k + j`` being beam j
    of example b. The first step runs on the B un-expanded rows (all beams of an example
    would be identical, so there is one live beam per example and no duplicates); its
    state is then expanded to B*k by the first set of back-pointers. At each step the 2k
    best extensions of an example are taken: an ``<eos>`` among the best k finishes that
    hypothesis, and the k best that are not ``<eos>`` stay live (there are at most k
    ``<eos>`` extensions, so 2k always leaves k). Each example keeps its k best finished
    hypotheses by normalised score.

Early stop (a sound bound)
    For a live hypothesis with log-probability s <= 0 after t tokens, every completion has
    log-probability <= s and length L with t < L <= max_len, so for alpha >= 0 its final
    score is <= s / L**alpha <= s / max_len**alpha (a non-positive number divided by a larger
    positive one can only grow). An example stops once it holds k finished hypotheses and
    the worst of them beats that bound for its best live hypothesis strictly; nothing live
    could still enter its list, so the result equals running to ``max_len``. Stopped
    examples leave the batch, so the rest decode on fewer rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from col775.mathqa.grammar import GrammarState, ProgramGrammar


class DecoderState(Protocol):
    def index_select(self, idx: torch.Tensor) -> DecoderState: ...


class Decoder(Protocol):
    """What the searches need from a model (see the module docstring)."""

    tgt_vocab: Any

    def start(self, batch: Any) -> DecoderState: ...

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]: ...


@dataclass
class Hypothesis:
    """One finished output: program token ids (no ``<bos>``/``<eos>``) and its scores."""

    tokens: list[int]
    score: float  # length-normalised log-probability, what hypotheses are ranked by
    log_prob: float  # sum of log-probabilities, <eos> included


def length_normalised(log_prob: torch.Tensor | float, length: int, alpha: float) -> torch.Tensor | float:
    """Ranking score of a hypothesis of ``length`` tokens (``<eos>`` counted): log_prob / length**alpha."""
    return log_prob / float(length) ** alpha


def _device(model: Any) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def _blocked_tokens(vocab: Any, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks [V] of tokens never chosen: at every step (<bos>, <pad>, <unk>), and at the last (all but <eos>)."""
    always = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    always[[vocab.bos_id, vocab.pad_id, vocab.unk_id]] = True
    last = torch.ones(vocab_size, dtype=torch.bool, device=device)
    last[vocab.eos_id] = False
    return always, last


def _step_log_probs(
    model: Decoder,
    prev: torch.Tensor,
    state: DecoderState,
    grammar: ProgramGrammar | None,
    grammar_state: GrammarState | None,
    last_step: bool,
) -> tuple[torch.Tensor, DecoderState]:
    """Log-probabilities [N, V] of the next token, with never-chosen tokens at -inf."""
    logits, state = model.step(prev, state)
    if grammar is not None:
        logits = logits.masked_fill(~grammar.allowed(grammar_state), float("-inf"))
    log_probs = torch.log_softmax(logits, dim=-1)
    always, last = _blocked_tokens(model.tgt_vocab, log_probs.shape[1], log_probs.device)
    return log_probs.masked_fill(last if last_step else always, float("-inf")), state


def _select_beams(state: DecoderState, rows: torch.Tensor) -> DecoderState:
    """Follow back-pointers ``rows`` (which never leave an example's block of beams)."""
    select_beams = getattr(state, "select_beams", None)
    return select_beams(rows) if callable(select_beams) else state.index_select(rows)


def _check(max_len: int, grammar: ProgramGrammar | None, num_numbers: torch.Tensor | None, batch_size: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1 (it counts <eos>), got {max_len}")
    if grammar is not None:
        if num_numbers is None:
            raise ValueError("a grammar needs num_numbers [B] (how many numbers each problem has)")
        if num_numbers.shape != (batch_size,):
            raise ValueError(f"num_numbers must have shape ({batch_size},), got {tuple(num_numbers.shape)}")


@torch.no_grad()
def greedy_search(
    model: Decoder,
    batch: Any,
    max_len: int,
    grammar: ProgramGrammar | None = None,
    num_numbers: torch.Tensor | None = None,
) -> list[list[int]]:
    """Most likely next token at each step; per example the token ids without ``<bos>``/``<eos>``."""
    batch_size = len(batch)
    _check(max_len, grammar, num_numbers, batch_size)
    vocab = model.tgt_vocab
    device = _device(model)
    state = model.start(batch)
    prev = torch.full((batch_size,), vocab.bos_id, dtype=torch.long, device=device)
    grammar_state = None if grammar is None else grammar.initial(num_numbers.to(device), max_len)
    ended = torch.zeros(batch_size, dtype=torch.bool, device=device)
    outputs = []
    for t in range(1, max_len + 1):
        log_probs, state = _step_log_probs(model, prev, state, grammar, grammar_state, last_step=t == max_len)
        prev = log_probs.argmax(dim=-1).masked_fill(ended, vocab.pad_id)
        outputs.append(prev)
        ended |= prev == vocab.eos_id
        if grammar is not None:
            grammar_state = grammar.advance(grammar_state, prev)
        if bool(ended.all()):
            break
    tokens = torch.stack(outputs, dim=1).tolist()  # [B, T]
    return [row[: row.index(vocab.eos_id)] for row in tokens]


class _Finished:
    """The k best finished hypotheses of every example, ranked by normalised score."""

    def __init__(self, batch_size: int, beam_size: int, max_len: int, pad_id: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.score = torch.full((batch_size, beam_size), float("-inf"), dtype=dtype, device=device)
        self.log_prob = torch.full_like(self.score, float("-inf"))
        self.tokens = torch.full((batch_size, beam_size, max_len), pad_id, dtype=torch.long, device=device)
        self.length = torch.zeros(batch_size, beam_size, dtype=torch.long, device=device)
        self.pad_id = pad_id

    def worst(self, examples: torch.Tensor) -> torch.Tensor:
        """Normalised score [A] of the k-th best finished hypothesis (-inf while fewer than k)."""
        return self.score[examples, -1]

    def add(self, examples: torch.Tensor, log_prob: torch.Tensor, tokens: torch.Tensor, alpha: float) -> None:
        """Offer hypotheses ending now: ``log_prob`` [A, c] (-inf: none), ``tokens`` [A, c, t-1] without <eos>."""
        count, length = log_prob.shape[1], tokens.shape[2]
        new_tokens = self.tokens.new_full((*log_prob.shape, self.tokens.shape[2]), self.pad_id)
        new_tokens[:, :, :length] = tokens
        score = torch.cat([self.score[examples], length_normalised(log_prob, length + 1, alpha)], dim=1)
        log_prob = torch.cat([self.log_prob[examples], log_prob], dim=1)
        all_tokens = torch.cat([self.tokens[examples], new_tokens], dim=1)
        lengths = torch.cat([self.length[examples], self.length.new_full((len(examples), count), length)], dim=1)
        score, keep = score.topk(self.score.shape[1], dim=1)  # sorted best first
        self.score[examples] = score
        self.log_prob[examples] = log_prob.gather(1, keep)
        self.tokens[examples] = all_tokens.gather(1, keep[:, :, None].expand(-1, -1, all_tokens.shape[2]))
        self.length[examples] = lengths.gather(1, keep)

    def hypotheses(self) -> list[list[Hypothesis]]:
        out = []
        for score, log_prob, tokens, length in zip(self.score.tolist(), self.log_prob.tolist(),
                                                   self.tokens.tolist(), self.length.tolist()):
            out.append([Hypothesis(row[:n], s, lp) for s, lp, row, n in zip(score, log_prob, tokens, length)
                        if s != float("-inf")])
        return out


@torch.no_grad()
def beam_search(
    model: Decoder,
    batch: Any,
    beam_size: int,
    max_len: int,
    length_penalty: float = 1.0,
    grammar: ProgramGrammar | None = None,
    num_numbers: torch.Tensor | None = None,
    early_stop: bool = True,
) -> list[list[Hypothesis]]:
    """Per example, up to ``beam_size`` finished hypotheses, best first (see the module docstring).

    ``length_penalty`` is alpha of ``length_normalised`` (>= 0). ``grammar`` with
    ``num_numbers`` [B] restricts the search to well-formed programs. ``early_stop=False``
    runs every example to ``max_len`` (same result, slower; kept for testing the bound).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0 for the early-stop bound to hold, got {length_penalty}")
    batch_size = len(batch)
    _check(max_len, grammar, num_numbers, batch_size)
    k, alpha, vocab = beam_size, length_penalty, model.tgt_vocab
    device = _device(model)

    state = model.start(batch)
    grammar_state = None if grammar is None else grammar.initial(num_numbers.to(device), max_len)
    active = torch.arange(batch_size, device=device)  # examples still decoding
    prev = torch.full((batch_size,), vocab.bos_id, dtype=torch.long, device=device)  # [A*w]
    scores = torch.zeros(batch_size, 1, device=device)  # [A, w] log-probs of live beams; w = 1 at first
    history = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # [A*w, t-1] tokens so far
    finished: _Finished | None = None

    for t in range(1, max_len + 1):
        log_probs, state = _step_log_probs(model, prev, state, grammar, grammar_state, last_step=t == max_len)
        num_active, width = scores.shape
        vocab_size = log_probs.shape[1]
        if finished is None:
            scores = scores.to(log_probs.dtype)
            finished = _Finished(batch_size, k, max_len, vocab.pad_id, device, log_probs.dtype)
        # Dead slots (-inf) stay dead; this also clears any NaN rows their garbage states give.
        log_probs = log_probs.masked_fill(~torch.isfinite(scores).view(-1, 1), float("-inf"))
        candidates = (scores.view(-1, 1) + log_probs).view(num_active, width * vocab_size)
        top, index = candidates.topk(min(2 * k, width * vocab_size), dim=1)  # [A, <=2k], best first
        if top.shape[1] < 2 * k:
            pad = 2 * k - top.shape[1]
            top = torch.cat([top, top.new_full((num_active, pad), float("-inf"))], dim=1)
            index = torch.cat([index, index.new_zeros(num_active, pad)], dim=1)
        beam, token = index // vocab_size, index % vocab_size  # [A, 2k]
        row_base = (torch.arange(num_active, device=device) * width)[:, None]  # [A, 1] first row of example

        is_eos = token == vocab.eos_id
        ending = is_eos[:, :k] & torch.isfinite(top[:, :k])
        if bool(ending.any()):
            rows = (row_base + beam[:, :k]).view(-1)
            prefix = history.index_select(0, rows).view(num_active, k, t - 1)
            finished.add(active, top[:, :k].masked_fill(~ending, float("-inf")), prefix, alpha)

        scores, pick = top.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # [A, k] live, best first
        token = token.gather(1, pick)
        rows = (row_base + beam.gather(1, pick)).view(-1)  # back-pointers as flat rows, [A*k]
        prev = token.view(-1)
        state = state.index_select(rows) if t == 1 else _select_beams(state, rows)
        history = torch.cat([history.index_select(0, rows), prev[:, None]], dim=1)
        if grammar is not None:
            grammar_state = grammar.advance(grammar_state.index_select(rows), prev)

        done = ~torch.isfinite(scores[:, 0])
        if early_stop:
            done |= finished.worst(active) > length_normalised(scores[:, 0], max_len, alpha)
        if t == max_len or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
            active, scores, prev = active[keep], scores[keep], prev.index_select(0, rows)
            state, history = state.index_select(rows), history.index_select(0, rows)
            if grammar is not None:
                grammar_state = grammar_state.index_select(rows)
    return finished.hypotheses()
