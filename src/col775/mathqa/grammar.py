"""Grammar-constrained decoding: which next tokens keep a MathQA program well formed.

A program is ``op arg ... arg |`` per step, then ``<eos>`` (see ``programs.py``). For N
hypotheses at once, ``ProgramGrammar`` tracks a small parse state in tensors and gives the
mask of allowed next tokens:

- at a step boundary: any operation, or ``<eos>`` once at least one step is finished;
- inside a step, until the operation's arity is reached: an argument, that is any
  ``const_*``, ``nK`` only for K < the number of numbers in the problem, ``#k`` only for
  steps k that are already finished;
- inside a step once the arity is reached: ``|``;
- after ``<eos>``: only padding.

Anything else in the vocabulary (``<unk>``, ``<bos>``, ``<pad>`` before the end, names
that are not operations) is never allowed.

With a length budget (``initial(..., max_len=L)``), the mask also refuses tokens after
which the program could no longer be finished, ``<eos>`` included, within L tokens: an
operation of arity a is allowed only if ``a + 3`` tokens remain (op, arguments, ``|``,
``<eos>``). Every other choice consumes exactly one token of what is still owed, so every
reachable state keeps at least one allowed token and every constrained decode ends in a
complete program.

The searches apply the mask to the logits *before* ``log_softmax``: the scores are then
log-probabilities of the model renormalised over well-formed programs, so a hypothesis is
not penalised for probability mass the model put on tokens that could never be chosen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from col775.mathqa.programs import OPERATIONS, STEP_END

_NUMBER_TOKEN = re.compile(r"n(\d+)")
_STEP_REF_TOKEN = re.compile(r"#(\d+)")
_NO_BUDGET = 1 << 30
_NEVER = 1 << 40  # a key no count reaches


@dataclass
class GrammarState:
    """Parse state of N hypotheses, every field a tensor of shape [N]."""

    num_numbers: torch.Tensor  # long: numbers in the problem (nK needs K < this)
    steps_done: torch.Tensor  # long: steps closed by "|" (#k needs k < this)
    args_left: torch.Tensor  # long: arguments the current step still needs
    in_step: torch.Tensor  # bool: an operation was emitted and its "|" not yet
    ended: torch.Tensor  # bool: <eos> was emitted
    budget: torch.Tensor  # long: tokens that may still be emitted, <eos> included

    def index_select(self, idx: torch.Tensor) -> GrammarState:
        """The states of hypotheses ``idx`` (to expand to a beam or follow back-pointers)."""
        return GrammarState(**{f.name: getattr(self, f.name).index_select(0, idx) for f in fields(self)})


class ProgramGrammar:
    """Allowed-token masks for MathQA programs over a target vocabulary ``itos``.

    ``operations`` maps op name -> arity (default: ``programs.OPERATIONS``). The vocabulary
    must hold ``|``, at least one operation and at least one ``const_*`` token (a constant
    is the one argument that is always available, so no state is ever left without an
    allowed token).
    """

    def __init__(
        self,
        itos: Sequence[str],
        eos_id: int,
        pad_id: int,
        bos_id: int,
        operations: Mapping[str, int] | None = None,
    ) -> None:
        operations = OPERATIONS if operations is None else operations
        vocab_size = len(itos)
        for name, token_id in (("eos_id", eos_id), ("pad_id", pad_id), ("bos_id", bos_id)):
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"{name}={token_id} is outside the vocabulary of {vocab_size} tokens")
        self.eos_id, self.pad_id, self.bos_id = eos_id, pad_id, bos_id
        specials = {eos_id, pad_id, bos_id}

        self.arity = torch.full((vocab_size,), -1, dtype=torch.long)  # -1: not an operation
        # An argument token is allowed when number_key < num_numbers or step_key < steps_done:
        # "nK" has number_key K, a constant -1 (always below), other tokens a key never below.
        self.number_key = torch.full((vocab_size,), _NEVER, dtype=torch.long)
        self.step_key = torch.full((vocab_size,), _NEVER, dtype=torch.long)  # k of "#k"
        self.is_step_end = torch.zeros(vocab_size, dtype=torch.bool)
        for token_id, token in enumerate(itos):
            if token_id in specials:
                continue
            if token in operations:
                self.arity[token_id] = operations[token]
            elif token == STEP_END:
                self.is_step_end[token_id] = True
            elif token.startswith("const_"):
                self.number_key[token_id] = -1
            elif (match := _NUMBER_TOKEN.fullmatch(token)) is not None:
                self.number_key[token_id] = int(match.group(1))
            elif (match := _STEP_REF_TOKEN.fullmatch(token)) is not None:
                self.step_key[token_id] = int(match.group(1))
        self.is_op = self.arity >= 0
        self.is_arg = (self.number_key < _NEVER) | (self.step_key < _NEVER)
        # Budget an operation needs: itself, its arguments, "|" and <eos>; never met by other tokens.
        self.op_budget = torch.where(self.is_op, self.arity + 3, _NEVER)

        missing = [
            what
            for what, present in (
                (f"the step end {STEP_END!r}", self.is_step_end.any()),
                ("an operation (e.g. 'add')", self.is_op.any()),
                ("a constant (e.g. 'const_1')", (self.number_key == -1).any()),
            )
            if not present
        ]
        if missing:
            raise ValueError(
                f"the target vocabulary lacks {', '.join(missing)}; build it from MathQA programs "
                "(programs.program_tokens) so that every program can be written"
            )
        # Shortest program: op of the smallest arity, its arguments, "|", <eos>.
        self.min_program_len = int(self.arity[self.is_op].min()) + 3

    def initial(self, num_numbers: torch.Tensor, max_len: int | None = None) -> GrammarState:
        """State before the first token, for problems with ``num_numbers`` [N] numbers.

        ``max_len`` bounds the tokens emitted, ``<eos>`` included (None: no bound).
        """
        num_numbers = torch.as_tensor(num_numbers, dtype=torch.long)
        if num_numbers.dim() != 1:
            raise ValueError(f"num_numbers must be a 1-d tensor [N], got shape {tuple(num_numbers.shape)}")
        if max_len is not None and max_len < self.min_program_len:
            raise ValueError(
                f"max_len={max_len} is too short for any program: the shortest takes "
                f"{self.min_program_len} tokens with <eos>; raise max_len"
            )
        n = num_numbers.shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=num_numbers.device)
        false = torch.zeros(n, dtype=torch.bool, device=num_numbers.device)
        return GrammarState(
            num_numbers=num_numbers,
            steps_done=zeros,
            args_left=zeros,
            in_step=false,
            ended=false,
            budget=torch.full_like(zeros, _NO_BUDGET if max_len is None else max_len),
        )

    def allowed(self, state: GrammarState) -> torch.Tensor:
        """Bool mask [N, V]: True where the next token keeps the program well formed."""
        self._to(state.num_numbers.device)
        at_boundary = (~state.in_step & ~state.ended)[:, None]  # [N, 1]
        wants_arg = (state.in_step & (state.args_left > 0))[:, None]
        wants_end = (state.in_step & (state.args_left == 0))[:, None]

        op_ok = self.op_budget[None, :] <= state.budget[:, None]  # [N, V]
        arg_ok = (self.number_key[None, :] < state.num_numbers[:, None]) | (
            self.step_key[None, :] < state.steps_done[:, None]
        )
        mask = torch.where(at_boundary, op_ok, torch.where(wants_arg, arg_ok, wants_end & self.is_step_end))
        mask[:, self.eos_id] = at_boundary[:, 0] & (state.steps_done > 0)
        mask[:, self.pad_id] = state.ended
        return mask

    def advance(self, state: GrammarState, tokens: torch.Tensor) -> GrammarState:
        """State after each hypothesis emits ``tokens`` [N].

        Tokens the mask did not allow leave the counters in range (the searches never
        pick them for a live hypothesis, but dead beam slots may carry any token).
        """
        self._to(tokens.device)
        arity = self.arity[tokens]
        is_op = arity >= 0
        is_arg = self.is_arg[tokens]
        is_end = self.is_step_end[tokens]
        closes = is_end & state.in_step
        return GrammarState(
            num_numbers=state.num_numbers,
            steps_done=state.steps_done + closes.long(),
            args_left=torch.where(is_op, arity, (state.args_left - is_arg.long()).clamp(min=0)),
            in_step=(state.in_step | is_op) & ~is_end,
            ended=state.ended | (tokens == self.eos_id),
            budget=(state.budget - 1).clamp(min=0),
        )

    def _to(self, device: torch.device) -> None:
        """Keep the token tables on the device of the state."""
        if self.arity.device != device:
            for name in ("arity", "number_key", "step_key", "is_step_end", "is_op", "is_arg", "op_budget"):
                setattr(self, name, getattr(self, name).to(device))
