"""Slot Attention (Locatello et al. 2020, Algorithm 1), written with plain tensor ops.

K slots compete for N input vectors: attention logits are normalised over the *slots*
(so each input is shared out among slots), each slot then takes the weighted mean of the
values it won, and a GRU plus a residual MLP update the slot. This repeats T times.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SLOT_INITS = ("gaussian", "learned")
# Which iterations the loss's gradient flows back through: all of them (the paper); only the last, which starts
# from the detached slots of the others (Chang et al. 2022's implicit differentiation, "fixed-point"); or that
# plus a straight-through path from the last iteration's input to the initial slots, so that learned initial
# slots still get a gradient (Jia et al. 2023's BO-QSA, "bi-level").
SLOT_GRADIENTS = ("full", "fixed-point", "bi-level")


class SlotAttention(nn.Module):
    """Maps inputs [B, N, input_dim] to slots [B, K, dim] by iterative competitive attention.

    init="gaussian" samples the initial slots from N(mu, diag(sigma)^2) with learnable mu and
    log sigma shared by all slots (the paper); init="learned" starts from K learned vectors
    (Singh et al.'s option for complex scenes), which makes the output deterministic.
    `gradient` is one of `SLOT_GRADIENTS`.
    """

    def __init__(
        self,
        num_slots: int,
        dim: int,
        input_dim: int,
        iters: int = 3,
        hidden_dim: int = 128,
        eps: float = 1e-8,
        init: str = "gaussian",
        gradient: str = "full",
    ) -> None:
        super().__init__()
        if init not in SLOT_INITS:
            raise ValueError(f"SlotAttention init={init!r} is unknown; use one of {SLOT_INITS}")
        if gradient not in SLOT_GRADIENTS:
            raise ValueError(f"SlotAttention gradient={gradient!r} is unknown; use one of {SLOT_GRADIENTS}")
        if num_slots < 1 or dim < 1 or input_dim < 1 or iters < 1:
            raise ValueError(
                f"SlotAttention needs num_slots, dim, input_dim, iters >= 1, got "
                f"{num_slots}, {dim}, {input_dim}, {iters}"
            )
        self.num_slots = num_slots
        self.dim = dim
        self.input_dim = input_dim
        self.iters = iters
        self.eps = eps
        self.init = init
        self.gradient = gradient

        if init == "gaussian":
            self.slots_mu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, dim)))
            self.slots_log_sigma = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, dim)))
        else:
            self.slots_init = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_slots, dim)))

        self.norm_inputs = nn.LayerNorm(input_dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        # The paper's projections have no bias.
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(input_dim, dim, bias=False)
        self.to_v = nn.Linear(input_dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def initial_slots(self, batch_size: int, num_slots: int | None = None) -> Tensor:
        """Starting slots [B, K, dim]: mu + sigma * noise (reparameterised), or the learned set."""
        if self.init == "learned":
            if num_slots not in (None, self.num_slots):
                raise ValueError(
                    f"learned slot init has exactly {self.num_slots} slots, asked for {num_slots}"
                )
            return self.slots_init.unsqueeze(0).expand(batch_size, -1, -1)
        k = self.num_slots if num_slots is None else num_slots
        noise = torch.randn(
            batch_size, k, self.dim, device=self.slots_mu.device, dtype=self.slots_mu.dtype
        )
        return self.slots_mu + self.slots_log_sigma.exp() * noise

    def forward(self, inputs: Tensor, slots_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return (slots [B, K, dim], attn [B, K, N]).

        attn is the last iteration's softmax over slots (each column sums to 1), i.e. before
        the weighted-mean renormalisation; it is what the masks/ARI are read from.
        """
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(
                f"SlotAttention expects inputs [B, N, {self.input_dim}], got {tuple(inputs.shape)}"
            )
        batch = inputs.shape[0]
        if slots_init is None:
            slots = self.initial_slots(batch)
        elif slots_init.dim() != 3 or slots_init.shape[::2] != (batch, self.dim):
            raise ValueError(
                f"slots_init must be [{batch}, K, {self.dim}], got {tuple(slots_init.shape)}"
            )
        else:
            slots = slots_init
        num_slots, first = slots.shape[1], slots

        inputs = self.norm_inputs(inputs)
        keys_t = self.to_k(inputs).transpose(1, 2)  # [B, D, N]
        v = self.to_v(inputs)  # [B, N, D]
        scale = 1.0 / math.sqrt(self.dim)

        for step in range(self.iters):
            if step == self.iters - 1 and self.gradient != "full":
                slots = slots.detach()
                if self.gradient == "bi-level":  # forward value unchanged; d(loss)/d(first) = d(loss)/d(slots)
                    slots = slots + first - first.detach()
            slots_prev = slots
            # 1/sqrt(D) scales q [B, K, D] rather than the logits [B, K, N]: same result, less work.
            q = self.to_q(self.norm_slots(slots)) * scale
            attn = torch.bmm(q, keys_t).softmax(dim=1)  # [B, K, N], sums to 1 over K
            weights = attn + self.eps
            # Weighted mean over inputs: dividing the [B, K, D] sums is cheaper than the weights.
            updates = torch.bmm(weights, v) / weights.sum(dim=-1, keepdim=True)  # [B, K, D]
            slots = self.gru(
                updates.reshape(-1, self.dim), slots_prev.reshape(-1, self.dim)
            ).view(batch, num_slots, self.dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn

