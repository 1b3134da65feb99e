"""Slot Attention: symmetry, normalisation, gradients, and a line-by-line Algorithm 1 reference."""

import math

import pytest
import torch

from col775.slots.slot_attention import SlotAttention

B, N, K, D, D_IN = 2, 10, 4, 8, 6


def make_module(**kwargs) -> SlotAttention:
    torch.manual_seed(0)
    return SlotAttention(num_slots=K, dim=D, input_dim=D_IN, hidden_dim=16, **kwargs).double()


def _layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mean = sum(x) / len(x)
    var = sum((xi - mean) ** 2 for xi in x) / len(x)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias  # differentiable, for the gradient tests


def _gru_cell(x: torch.Tensor, h: torch.Tensor, cell: torch.nn.GRUCell) -> torch.Tensor:
    """The GRU equations as PyTorch documents them, written out for one vector."""
    w_ir, w_iz, w_in = cell.weight_ih.chunk(3)
    w_hr, w_hz, w_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    r = torch.sigmoid(w_ir @ x + b_ir + w_hr @ h + b_hr)
    z = torch.sigmoid(w_iz @ x + b_iz + w_hz @ h + b_hz)
    n = torch.tanh(w_in @ x + b_in + r * (w_hn @ h + b_hn))
    return (1 - z) * n + z * h


def reference_slot_attention(
    m: SlotAttention, inputs: torch.Tensor, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for one example (inputs [N, Din], slots [K, D]), with loops, no batching."""
    n_inputs, n_slots = inputs.shape[0], slots.shape[0]
    lin1, lin2 = m.mlp[0], m.mlp[2]
    inputs = [_layer_norm(inputs[n], m.norm_inputs) for n in range(n_inputs)]  # line 3
    keys = [m.to_k.weight @ x for x in inputs]
    values = [m.to_v.weight @ x for x in inputs]
    slots = [slots[i] for i in range(n_slots)]
    for _ in range(m.iters):  # line 4
        slots_prev = slots  # line 5
        queries = [m.to_q.weight @ _layer_norm(s, m.norm_slots) for s in slots]  # line 6
        attn = torch.zeros(n_slots, n_inputs, dtype=inputs[0].dtype)
        for n in range(n_inputs):  # line 7: softmax over the slots, per input
            logits = [torch.dot(keys[n], queries[i]) / math.sqrt(m.dim) for i in range(n_slots)]
            denom = sum(torch.exp(lg) for lg in logits)
            for i in range(n_slots):
                attn[i, n] = torch.exp(logits[i]) / denom
        new_slots = []
        for i in range(n_slots):
            weights = [attn[i, n] + m.eps for n in range(n_inputs)]  # line 8
            update = sum(w * v for w, v in zip(weights, values)) / sum(weights)
            s = _gru_cell(update, slots_prev[i], m.gru)  # line 9
            hidden = torch.relu(lin1.weight @ _layer_norm(s, m.norm_mlp) + lin1.bias)
            new_slots.append(s + lin2.weight @ hidden + lin2.bias)  # line 10
        slots = new_slots
    return torch.stack(slots), attn


def test_matches_line_by_line_algorithm_1():
    m = make_module()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for ln in (m.norm_inputs, m.norm_slots, m.norm_mlp):
            ln.weight.normal_(1.0, 0.2)
            ln.bias.normal_(0.0, 0.2)
    inputs = torch.randn(B, N, D_IN, dtype=torch.float64)
    init = torch.randn(B, K, D, dtype=torch.float64)
    with torch.no_grad():
        slots, attn = m(inputs, init)
        for b in range(B):
            ref_slots, ref_attn = reference_slot_attention(m, inputs[b], init[b])
            torch.testing.assert_close(slots[b], ref_slots, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(attn[b], ref_attn, rtol=1e-9, atol=1e-9)


def test_permuting_initial_slots_permutes_outputs():
    m = make_module()
    inputs = torch.randn(B, N, D_IN, dtype=torch.float64)
    init = torch.randn(B, K, D, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    slots, attn = m(inputs, init)
    slots_p, attn_p = m(inputs, init[:, perm])
    torch.testing.assert_close(slots_p, slots[:, perm])
    torch.testing.assert_close(attn_p, attn[:, perm])
    assert not torch.allclose(slots_p, slots)


def test_attention_sums_to_one_over_slots():
    m = make_module()
    _, attn = m(torch.randn(B, N, D_IN, dtype=torch.float64))
    assert attn.shape == (B, K, N)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(dim=1), torch.ones(B, N, dtype=torch.float64))


def test_gradients_reach_mu_and_log_sigma():
    m = make_module()
    slots, _ = m(torch.randn(B, N, D_IN, dtype=torch.float64))
    slots.pow(2).sum().backward()
    for p in (m.slots_mu, m.slots_log_sigma):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_gaussian_init_samples_and_accepts_other_slot_counts():
    m = make_module()
    with torch.no_grad():
        m.slots_mu.fill_(3.0)
        m.slots_log_sigma.fill_(math.log(0.5))
    torch.manual_seed(1)
    sample = m.initial_slots(4000)
    assert sample.shape == (4000, K, D)
    assert abs(sample.mean().item() - 3.0) < 0.02
    assert abs(sample.std().item() - 0.5) < 0.02
    slots, attn = m(torch.randn(B, N, D_IN, dtype=torch.float64), m.initial_slots(B, num_slots=6))
    assert slots.shape == (B, 6, D) and attn.shape == (B, 6, N)


def test_learned_init_is_deterministic_and_trained():
    m = make_module(init="learned")
    inputs = torch.randn(B, N, D_IN, dtype=torch.float64)
    slots_a, _ = m(inputs)
    slots_b, _ = m(inputs)
    torch.testing.assert_close(slots_a, slots_b)
    slots_a.sum().backward()
    assert m.slots_init.grad is not None and m.slots_init.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="learned slot init"):
        m.initial_slots(B, num_slots=K + 1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="init="):
        SlotAttention(K, D, D_IN, init="uniform")
    m = make_module()
    with pytest.raises(ValueError, match="inputs"):
        m(torch.randn(B, N, D_IN + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="slots_init"):
        m(torch.randn(B, N, D_IN).double(), torch.randn(B, K, D + 1).double())


def _truncated_reference(m: SlotAttention, inputs: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 run T - 1 times, its slots cut off from the graph as a new leaf, then once more:
    (the final slots, that leaf), both for one example."""
    iters = m.iters
    try:
        m.iters = iters - 1
        before, _ = reference_slot_attention(m, inputs, slots)
        leaf = before.detach().requires_grad_()
        m.iters = 1
        after, _ = reference_slot_attention(m, inputs, leaf)
    finally:
        m.iters = iters
    return after, leaf


@pytest.mark.parametrize("gradient", ["fixed-point", "bi-level"])
def test_truncated_gradient_flows_through_the_last_iteration_only(gradient):
    m = make_module(init="learned", gradient=gradient)
    inputs = torch.randn(1, N, D_IN, dtype=torch.float64, requires_grad=True)
    slots, _ = m(inputs)
    full = make_module(init="learned")
    torch.testing.assert_close(slots, full(inputs)[0])  # the forward value is Algorithm 1's
    weights = torch.randn_like(slots)
    grad_inputs, grad_init = torch.autograd.grad((slots * weights).sum(), (inputs, m.slots_init), allow_unused=True)

    ref_inputs = inputs.detach()[0].requires_grad_()
    after, leaf = _truncated_reference(m, ref_inputs, m.slots_init.detach())
    ref_grad_inputs, ref_grad_leaf = torch.autograd.grad((after * weights[0]).sum(), (ref_inputs, leaf))
    torch.testing.assert_close(grad_inputs[0], ref_grad_inputs)
    full_grad_inputs = torch.autograd.grad((full(inputs)[0] * weights).sum(), inputs)[0]
    assert not torch.allclose(full_grad_inputs, grad_inputs)  # the earlier iterations do carry gradient
    if gradient == "fixed-point":  # the initial slots are cut off
        assert grad_init is None or grad_init.abs().max() == 0
    else:  # straight through: the initial slots get the last iteration's input gradient
        torch.testing.assert_close(grad_init, ref_grad_leaf)


def test_unknown_gradient_mode_is_refused():
    with pytest.raises(ValueError, match="gradient="):
        SlotAttention(K, D, D_IN, gradient="none")
