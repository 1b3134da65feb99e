"""The decoder's step folded for decoding without gradients (beam search, greedy).

Two products of a decoder step can be rearranged once the weights stop changing (eval mode,
no dropout, no gradients), which is when beam search runs batch x beam rows a step and every
step is compute-bound:

- LSTM layer 0: its gates are ``W_ih [embed(y); feed] + b_ih + W_hh h + b_hh``. The embedding's
  share depends only on the token, so it becomes a table ``[V, 4H]`` (a row gather instead of
  an ``[N, E] x [E, 4H]`` product), and the feed and ``h`` shares become one product with the
  two weights side by side: one matrix product instead of two and the copy that adds them.
- The attentional vector ``tanh(W_c [context; h] + b)`` with ``context = sum_s a_s m_s``: the
  context half ``W_c1 context = sum_s a_s (W_c1 m_s)``, so the memory is projected by ``W_c1``
  once per decoding call (``project_memory``, in ``Seq2Seq.start``) and the attention reads the
  projected rows; the per-step ``[N, Dm] x [Dm, H]`` product disappears.

Built per decoding call from the current weights (a few hundred kilobytes), so it can never go
stale while a model trains. The tests check each step against the unfolded decoder.
"""

from __future__ import annotations

import torch
from torch import nn


class FoldedDecoder:
    def __init__(self, embedding: nn.Embedding, lstm: nn.LSTM, combine: nn.Linear | None):
        """The decoder's pieces: its token embedding, its LSTM (layer 0's input is ``[embed(y); feed]``)
        and, with attention, its ``combine`` layer (``W_c`` over ``[context; h]``)."""
        width = embedding.embedding_dim
        weight_ih, weight_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
        self.token_gates = embedding.weight @ weight_ih[:, :width].T + (lstm.bias_ih_l0 + lstm.bias_hh_l0)  # [V, 4H]
        self.recurrent = torch.cat([weight_ih[:, width:], weight_hh], dim=1).T.contiguous()  # [F + H, 4H]
        if combine is not None:
            hidden = combine.out_features
            memory_dim = combine.in_features - hidden
            self.combine_memory = combine.weight[:, :memory_dim]  # W_c1 [H, Dm]
            self.combine_h = combine.weight[:, memory_dim:].T.contiguous()  # W_c2^T [H, H]
            self.combine_bias = combine.bias

    def lstm_cell(self, prev: torch.Tensor, feed: torch.Tensor | None, h: torch.Tensor,
                  c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 0's new (h, c) [N, H] after tokens ``prev`` [N], with the attentional ``feed`` [N, F] or None."""
        inputs = h if feed is None else torch.cat([feed, h], dim=1)
        gates = torch.addmm(self.token_gates.index_select(0, prev), inputs, self.recurrent)
        i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """Memory rows [M, S, Dm] -> ``W_c1 m_s`` [M, S, H]: what the folded attention reads as values."""
        return memory @ self.combine_memory.T

    def attentional(self, projected_context: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``tanh(W_c [context; h] + b)`` from ``W_c1 context`` [N, H] (attention over projected memory) and h [N, H]."""
        return torch.tanh(torch.addmm(self.combine_bias, h, self.combine_h) + projected_context)
