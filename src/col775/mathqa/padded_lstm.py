"""One direction of one LSTM layer over a padded batch, with the padding holding the cell state.

Why: ``nn.LSTM`` over a packed batch gives exact final states for every length, but on the CPU
its kernels took 2.5x as long as over the padded batch (its backward pass was a quarter of a
MathQA training step). Over the padded batch the outputs at real positions are already exact
when the padding comes after the real tokens; the final cell state is not, because the LSTM
keeps updating it through the padding. So the gates see one extra input, 1 at padding and 0
elsewhere, through a fixed weight column that pushes the input gate's pre-activation down by
``HOLD`` and the forget gate's up by ``HOLD``. At padding the input gate is then 0 and the
forget gate 1 to within ``sigmoid(-HOLD + |other terms|)`` (about 1e-20 with HOLD = 60 and
inputs zeroed at padding), so the cell state after a row's last real token is carried unchanged
to the end of the batch, where the LSTM returns it. ``h`` is not held (the output gate keeps
acting), so the final ``h`` of a row is read from the outputs at its last real position.

The weights are an ordinary ``nn.LSTM``'s (``self.lstm``); the extra column is a constant
concatenated on each call, never trained. The tests compare outputs and final states with
``nn.LSTM`` run on each sequence alone.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

HOLD = 60.0


class PaddedLSTM(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        hold = torch.zeros(4 * hidden_size, 1)
        hold[:hidden_size] = -HOLD  # input gate (PyTorch's order: input, forget, cell, output)
        hold[hidden_size : 2 * hidden_size] = HOLD  # forget gate
        self.register_buffer("hold", hold, persistent=False)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, I] with each row's padding after its real tokens, padding [B, S] (True there) ->
        outputs [B, S, H] (exact at real positions) and each row's cell state after its last real token [B, H]."""
        lstm = self.lstm
        flag = padding.unsqueeze(-1).to(x.dtype)
        inputs = torch.cat([x.masked_fill(padding.unsqueeze(-1), 0.0), flag], dim=-1)
        weights = [torch.cat([lstm.weight_ih_l0, self.hold.to(x.dtype)], dim=1), lstm.weight_hh_l0,
                   lstm.bias_ih_l0, lstm.bias_hh_l0]
        zeros = x.new_zeros(1, x.shape[0], lstm.hidden_size)
        with warnings.catch_warnings():
            # cuDNN wants its weights in one flat buffer and copies these (a few hundred KB) per call
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            outputs, _, c = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)
        return outputs, c[0]
