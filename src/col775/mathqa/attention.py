"""Luong "general" attention of decoder queries over a fixed encoder memory.

``attend`` is the plain formula. ``SharedMemory`` computes the same thing for training,
where the decoder runs step by step (input feeding and teacher forcing make each step
depend on the one before) over one memory for the whole sequence.

Why ``SharedMemory`` exists: with plain autograd every step's backward hands the memory a
gradient of the memory's full size, ``[B, S, H]`` for the keys and ``[B, S, Dm]`` for the
values, and autograd adds them up one step at a time: T steps of a MathQA program mean T
large additions and copies (without them a training step of the attention model on the CPU
took 0.91x the time, measured on real MathQA batches). The
memory's gradient is a sum over steps of outer products,

    dK = sum_t dS_t^T q_t        dV = sum_t a_t^T dC_t

(dS the gradient of the step's scores, q its queries, a its attention weights, dC the
gradient of its context), so each step's backward here only stores its small factors
(``[B, g, S]`` and ``[B, g, H]``) and hands autograd a zero scalar in place of the memory's
gradient; the memory's gradient is then formed in two batched products once every step's
backward has run. Autograd guarantees that order: ``_MemoryGradient`` produced the scalar
every step takes as an input, so its backward runs after all of theirs. The tests compare
every parameter's gradient with the plain formula's.

Under bf16 autocast the memory may arrive in bf16 (a pretrained encoder's output) while the
gradients come back in float32, so the deferred products run in float32 with autocast off, and
each gradient is handed back in the dtype of the tensor it belongs to (float64 stays float64).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Contexts [M, g, Dm] for queries [M, g, H] over keys [M, S, H], values [M, S, Dm], mask [M, S]
    (True on real positions): softmax over s of q . k_s, then the weighted sum of the values."""
    scores = torch.bmm(queries, keys.transpose(1, 2)).masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.bmm(scores.softmax(-1), values)


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """bf16 or float16 as float32; float32 and float64 as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class SharedMemory:
    """One sequence's keys, values and mask, attended by every decoder step with a deferred gradient.

    Build it once per forward pass (from keys and values that require grad) and call
    :meth:`attend` at each step; the result and all gradients equal :func:`attend`'s.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor):
        self.keys, self.values, self.mask = _wide(keys.detach()), _wide(values.detach()), mask
        self.dtypes = keys.dtype, values.dtype
        self.factors: list[tuple[torch.Tensor, ...]] = []  # filled by the steps' backward
        self.link = _MemoryGradient.apply(keys, values, self)  # a 0-dim zero tied to keys and values

    def attend(self, queries: torch.Tensor) -> torch.Tensor:
        return _Attend.apply(queries, self.link, self)

    def gradients(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """dK and dV summed over the steps whose backward has run (then forgotten)."""
        if not self.factors:
            return None, None
        d_scores, queries, weights, d_context = (torch.cat(parts, dim=1) for parts in zip(*self.factors))
        self.factors.clear()
        keys_dtype, values_dtype = self.dtypes
        return d_scores.transpose(1, 2).bmm(queries).to(keys_dtype), weights.transpose(1, 2).bmm(d_context).to(values_dtype)


class _MemoryGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys, values, memory):
        ctx.memory = memory
        return keys.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, _unused):
        d_keys, d_values = ctx.memory.gradients()
        return d_keys, d_values, None


class _Attend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, link, memory):
        ctx.queries_dtype = queries.dtype
        with torch.autocast(queries.device.type, enabled=False):
            queries = _wide(queries)
            scores = torch.bmm(queries, memory.keys.transpose(1, 2)).masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
            weights = scores.softmax(-1)
            ctx.save_for_backward(queries, weights)
            ctx.memory = memory
            return torch.bmm(weights, memory.values)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_context):
        queries, weights = ctx.saved_tensors
        memory = ctx.memory
        d_context = _wide(d_context)
        d_weights = torch.bmm(d_context, memory.values.transpose(1, 2))  # [M, g, S]
        d_scores = weights * (d_weights - (d_weights * weights).sum(-1, keepdim=True))  # softmax backward
        memory.factors.append((d_scores, queries, weights, d_context))
        return torch.bmm(d_scores, memory.keys).to(ctx.queries_dtype), d_context.new_zeros(()), None
