"""A frozen encoder's outputs, computed once per problem instead of once per epoch (model ``bert_frozen``).

A frozen transformer gives a problem the same hidden states in every epoch, and on a CPU running it
is most of a ``bert_frozen`` training step. So a ``bert_frozen`` run encodes every problem of every
split once, before training, and keeps each problem's last hidden states on its ``Example``
(``hidden``, [W, D], unpadded); batches carry them padded (``Batch.wordpiece_hidden``) and
``WordpieceEncoder`` reads them instead of running the transformer. The number-id embedding is
still added per batch, so it trains as before.

Storage: float16, in memory. MathQA's train and dev problems have 971k wordpieces, whose 384-d
states take 1.5 GB as float32 and 0.75 GB as float16; float16's relative rounding (2^-11) is
finer than the bfloat16 (2^-8) the uncached path computes in under ``--amp``, and MiniLM's
states are far inside its range. In memory rather than on disk: building it is one encoder
pass over train and dev (about 4 CPU minutes under ``amp``, 8 in float32, on one thread of this
project's CPU), small beside a run, so a file shared between runs would save little and would need
invalidating when the data or the encoder changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from col775.core.training import bf16_autocast
from col775.mathqa import data
from col775.mathqa.models import WordpieceEncoder


@torch.no_grad()
def cache_hidden(encoder: WordpieceEncoder, examples: Sequence[data.Example], batch_size: int,
                 wordpiece_pad_id: int, device: torch.device, amp: bool = False,
                 dtype: torch.dtype = torch.float16) -> list[data.Example]:
    """``examples`` with ``hidden`` set to the frozen ``encoder``'s output for their wordpieces, stored as
    ``dtype`` on the CPU. The transformer runs on batches of similar length, in float32, or under bf16
    autocast with ``amp``, as a training step with ``amp`` runs it (twice the problems/s on a CPU with
    bf16 arithmetic; bf16 values are exact in float16)."""
    if not encoder.freeze:
        raise ValueError("only a frozen encoder's outputs can be cached: a fine-tuned one changes every step")
    was_training = encoder.training
    encoder.eval()
    hidden: list[torch.Tensor | None] = [None] * len(examples)
    lengths = [len(e.wordpieces) for e in examples]
    for indices in data.BucketBatchSampler(lengths, batch_size, shuffle=False):
        batch = data.collate([examples[i] for i in indices], wordpiece_pad_id=wordpiece_pad_id).to(device)
        with bf16_autocast(device, amp):
            states = encoder.hidden(batch).to("cpu", dtype)  # [B, W, D]
        for row, index in enumerate(indices):
            hidden[index] = states[row, : lengths[index]].clone()
    encoder.train(was_training)
    return [dataclasses.replace(example, hidden=h) for example, h in zip(examples, hidden)]
