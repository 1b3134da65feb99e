"""Train and evaluate one MathQA seq2seq run (assignment 1, part 2.3).

One epoch = a pass over train with teacher forcing ``p`` (Adam, warm-up then cosine
decay, gradient clipping), then dev: its loss with full teacher forcing, and its scores
under greedy decoding (cheap) for early stopping on execution accuracy. Both go to
metrics.jsonl, a checkpoint follows every epoch, and a killed run resumes from it. At the
end the best checkpoint decodes dev (and test, when the data has one) with beam search
(``beam_size``, 10 in the course) and the predictions are written in the course's
submission format (``predictions/<split>.json``: the records plus ``"predicted"``).
Scores are percentages from ``score.score_records``.

Data: training records longer than ``max_source_len``/``max_target_len`` tokens, or whose gold program
the scorer cannot run, are left out; dev and test records are never left out (they are scored), only
cut to the caps for the model. metrics.json counts both. config.yaml holds the SHA-256 of train.json
and dev.json, and a resumed run refuses to go on if either changed; ``force`` starts the folder clean.

Under ``torchrun --nproc_per_node=N -m col775 mathqa train ...`` the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA) and ``batch_size`` is per rank: each global batch of
``batch_size`` x N examples is the one a single process with that batch would take, shared out by rank
(data.BucketBatchSampler), and its loss is the mean over the whole global batch. Every rank builds the
same vocabularies (data.Vocab.build orders its words). Dev and test are decoded and scored in unpadded
shards gathered back in order (core/distributed.py), so every example counts once; only rank 0 writes.

A ``bert_frozen`` run encodes every problem once before training (encoder_cache.py) and trains and
evaluates on those cached encoder outputs; decoding a finished run later runs the encoder itself.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader

from col775.core.config import from_dict, to_dict
from col775.core.distributed import (barrier, broadcast_from_rank0, from_rank0, gather_in_order, gather_shards,
                                     init_distributed, is_distributed, rank, shard_indices, sum_over_ranks,
                                     world_size)
from col775.core.runs import ConfigMismatchError, RunDir
from col775.core.training import EarlyStopping, bf16_autocast, optimise, pick_device, progress, seed_everything
from col775.mathqa import data, synthetic
from col775.mathqa.data import MAX_NUMBERS
from col775.mathqa.beam import beam_search, greedy_search
from col775.mathqa.encoder_cache import cache_hidden
from col775.mathqa.grammar import ProgramGrammar
from col775.mathqa.models import ModelConfig, Seq2Seq, build_model, load_tokenizer, model_name
from col775.mathqa.programs import extract_numbers, tokens_to_program
from col775.mathqa.score import score_records

log = logging.getLogger(__name__)
SCORES = ("exact_match", "execution_accuracy", "token_accuracy")


def split_role(split: str) -> str:
    """How to read a split's scores: early stopping picks the checkpoint on dev, so dev's are not held out."""
    return "dev, also used for model selection" if split == "dev" else split


@dataclass
class MathqaConfig:
    # data
    data: str | None = None  # folder with train.json, dev.json (test.json optional); None = generated problems
    synthetic_train: int = 4000
    synthetic_dev: int = 500
    synthetic_test: int = 500
    cache_dir: str | None = None  # where generated data goes; default ~/.cache/col775
    src_min_freq: int = 1
    max_numbers: int = MAX_NUMBERS
    # length caps, in tokens (data.lengths): longer training records are dropped, longer dev/test ones cut.
    # The course's longest problem has 356 source tokens and its longest program 196 tokens (train).
    max_source_len: int = 1000
    max_target_len: int = 500
    # model (see models.ModelConfig)
    model: str = "lstm_attn"  # lstm | lstm_attn | bert_frozen | bert_finetune
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.3
    target_embedding_dim: int = 128
    glove: str = "package"  # "package" (GloVe 6B 50d), a glove.*.txt path, or "random"
    embedding_dim: int = 50  # only with glove: random
    freeze_embeddings: bool = False
    encoder_path: str = ""  # a local transformers model folder; "" = the packaged MiniLM
    encoder_name: str = ""  # what reports call the encoder_path encoder; "" = the folder's name
    max_wordpieces: int = 512  # BERT models: problems are cut to this many wordpieces
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-3
    encoder_lr: float = 2e-5  # the fine-tuned transformer's own learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | none (after the linear warm-up)
    grad_clip: float = 1.0  # 0 turns clipping off
    # the training objective spreads this much of each target's probability over the whole vocabulary
    # (Szegedy et al. 2016); train/loss in metrics.jsonl stays the plain cross-entropy, comparable with dev
    label_smoothing: float = 0.0
    # bf16 autocast for the training forward pass (weights, gradients and the optimiser stay float32;
    # evaluation and decoding run in float32). Worth it where bf16 matrix products are fast: CUDA, or a
    # CPU with AVX512-BF16/AMX (1.4x the examples/s here); elsewhere bf16 is emulated and slower.
    amp: bool = False
    teacher_forcing: float = 0.6
    patience: int = 5  # early stopping on dev execution accuracy; 0 turns it off
    max_steps_per_epoch: int = 0  # 0 uses every batch
    max_minutes: float = 0.0  # training-time budget: no epoch starts that would end past it; 0 = none
    # decoding
    max_decode_len: int = 80  # tokens, <eos> included
    beam_size: int = 10
    length_penalty: float = 1.0
    grammar: bool = False  # restrict decoding to well-formed programs (grammar.py)
    # a finished run folder whose best weights this run starts from instead of the pretrained encoder and a
    # fresh decoder (same architecture and training data; its vocabularies are reused); "" = none. The study
    # starts bert_finetune from bert_frozen this way: the decoder is trained before the encoder is unfrozen
    # (LP-FT, Kumar et al. 2022), which on this CPU is the only way the fine-tuned model trains long enough.
    init_from: str = ""
    # machinery
    seed: int = 0
    device: str = "auto"


def model_config(config: MathqaConfig) -> ModelConfig:
    """The architecture part of a run's settings."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})


def data_dir(config: MathqaConfig) -> Path:
    """The user's data folder, or the generated problems (written once, then reused)."""
    if config.data:
        return Path(config.data).expanduser()
    root = Path(config.cache_dir or "~/.cache/col775").expanduser() / "mathqa-synthetic"
    folder = root / f"{config.synthetic_train}-{config.synthetic_dev}-{config.synthetic_test}-seed{config.seed}"
    if not (folder / "test.json").is_file():
        synthetic.write_synthetic(folder, config.synthetic_train, config.synthetic_dev, config.synthetic_test,
                                  config.seed)
    return folder


@dataclass
class Prepared:
    """Everything a run needs besides the model weights: vocabularies, examples, tokenizer."""

    src_vocab: data.Vocab
    tgt_vocab: data.Vocab
    splits: dict[str, list[data.Example]]
    wordpiece_pad_id: int
    encode: Callable[[list[dict]], list[data.Example]]  # more records, encoded as the splits were
    dropped: dict[str, int]  # training records left out, by reason (data.training_records)
    truncated: dict[str, int]  # per evaluated split, records whose source or gold program was cut


VOCAB_FILES = ("src_vocab.json", "tgt_vocab.json")


def prepare(config: MathqaConfig, vocabs: tuple[data.Vocab, data.Vocab] | None = None) -> Prepared:
    """Load the data, keep the training records fit to train on, encode every split.

    The vocabularies are built from those training records, or are ``vocabs`` (a trained run's own).
    """
    folder = data_dir(config)
    records = data.load_mathqa(folder)
    records["train"], dropped = data.training_records(records["train"], config.max_source_len,
                                                      config.max_target_len, folder / "train.json")
    src_vocab, tgt_vocab = vocabs or data.build_vocabs(records["train"], config.src_min_freq, config.max_numbers)
    tokenizer = load_tokenizer(config.encoder_path or None) if config.model.startswith("bert") else None
    encode = functools.partial(data.encode_records, src_vocab=src_vocab, tgt_vocab=tgt_vocab, tokenizer=tokenizer,
                               max_numbers=config.max_numbers, max_wordpieces=config.max_wordpieces,
                               max_source_len=config.max_source_len, max_target_len=config.max_target_len)
    truncated = {name: data.count_over(rows, config.max_source_len, config.max_target_len)
                 for name, rows in records.items() if name != "train"}
    for name, count in truncated.items():
        if count:
            log.warning("%s: %d record(s) cut to max_source_len %d / max_target_len %d tokens (scored all the same)",
                        folder / f"{name}.json", count, config.max_source_len, config.max_target_len)
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    return Prepared(src_vocab, tgt_vocab, {name: encode(rows) for name, rows in records.items()}, pad, encode,
                    dropped, truncated)


# ---------------------------------------------------------------- the run folder's own files

DATA_HASHES = "data_sha256"  # the key of config.yaml holding the content hashes of train.json and dev.json
OUTPUTS = (*VOCAB_FILES, "decodings.json", "predictions")  # what --force removes besides RunDir's files


def data_hashes(config: MathqaConfig) -> dict[str, str]:
    """SHA-256 of the run's train.json and dev.json (a test.json may arrive later, so it is left out)."""
    folder = data_dir(config)
    return {name: data.file_sha256(folder / name) for name in ("train.json", "dev.json")}


def check_data_unchanged(out_dir: Path, config: MathqaConfig, hashes: dict[str, str]) -> None:
    """Refuse to resume (or return) a run whose train or dev file changed since it started:
    its vocabularies, weights and scores belong to the old file."""
    started = (out_dir / "checkpoints" / "last.pt").is_file() or (out_dir / "metrics.json").is_file()
    if not started or not (out_dir / "config.yaml").is_file():
        return
    old = (yaml.safe_load((out_dir / "config.yaml").read_text()) or {}).get(DATA_HASHES) or {}
    for name, digest in hashes.items():
        if old.get(name, digest) != digest:
            raise ConfigMismatchError(
                f"{data_dir(config) / name} changed since the run in {out_dir} started (sha256 {old[name][:12]} "
                f"then, {digest[:12]} now). Restore the file, pass --force to train again, or choose another --out.")


def clear_outputs(out_dir: Path) -> None:
    """Remove the vocabularies, predictions and cached decodings of an earlier run in ``out_dir``."""
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_config(out_dir: str | Path) -> tuple[MathqaConfig, dict[str, str]]:
    """The settings a run folder was trained with, and the data hashes its config.yaml holds."""
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a MathQA run folder (no config.yaml); train it first")
    settings = yaml.safe_load(path.read_text()) or {}
    hashes = settings.pop(DATA_HASHES, {})
    return from_dict(MathqaConfig, settings, str(path)), hashes


NOT_WEIGHTS = ("dropout", "freeze_embeddings", "encoder_name", "seed")  # model settings that shape no weight


def init_source(config: MathqaConfig, hashes: dict[str, str]) -> Path | None:
    """The finished run folder ``config.init_from`` names, checked to fit this run; None without one."""
    if not config.init_from:
        return None
    source = Path(config.init_from)
    fix = "train that run first, or set init_from to '' to start from the pretrained encoder"
    if not (source / "metrics.json").is_file():
        raise FileNotFoundError(f"init_from {source}: no finished run there (no metrics.json); {fix}")
    theirs, their_hashes = run_config(source)
    if their_hashes != hashes:
        raise ValueError(f"init_from {source} was trained on other data ({their_hashes} against {hashes}); "
                         "start from a run on the same train.json and dev.json")
    mine, other = dataclasses.asdict(model_config(config)), dataclasses.asdict(model_config(theirs))
    differ = [name for name in mine if name not in NOT_WEIGHTS and mine[name] != other[name]]
    if differ or theirs.model.startswith("bert") != config.model.startswith("bert"):
        raise ValueError(f"init_from {source} is a {theirs.model} run with other architecture settings "
                         f"({', '.join(differ) or 'encoder kind'}); its weights do not fit a {config.model} run")
    return source


def build_scheduler(config: MathqaConfig, optimizer: torch.optim.Optimizer, total_steps: int | list[int]):
    """Per-step factor: linear warm-up over ``warmup_steps``, then cosine to zero (or constant).

    ``total_steps`` may be a one-element list, read at every step, so the cosine's end can be
    moved while training (``epochs_within_budget``: a time budget ends the decay where training will stop).
    """
    if config.schedule not in ("cosine", "none"):
        raise ValueError(f"unknown schedule {config.schedule!r}; choose cosine or none")
    warmup = max(config.warmup_steps, 0)
    horizon = total_steps if isinstance(total_steps, list) else [total_steps]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "none":
            return 1.0
        done = (step - warmup) / max(horizon[0] - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epochs_within_budget(config: MathqaConfig, history: list[dict[str, Any]]) -> int:
    """How many epochs in all the run will train: ``epochs``, or fewer under ``max_minutes``.

    Each epoch is assumed to take as long as the mean of those already run (train and dev
    evaluation), and an epoch starts only if it is expected to end within the budget. The first
    epoch always runs (it is also what the estimate needs).
    """
    if config.max_minutes <= 0 or not history:
        return config.epochs
    spent = sum(r["seconds"] for r in history)
    per_epoch = spent / len(history)
    more = max(int((60 * config.max_minutes - spent) // per_epoch), 0)
    return min(config.epochs, len(history) + more)


def planned_epochs(config: MathqaConfig, run: RunDir) -> int:
    """:func:`epochs_within_budget` by rank 0's history and clock, the same on every rank (ranks that
    stopped at different epochs, or decayed the learning rate differently, would part ways)."""
    return from_rank0(epochs_within_budget(config, run.history()) if run.writes else 0)


def make_train_loader(examples: list[data.Example], batch_size: int, seed: int, wordpiece_pad_id: int) -> DataLoader:
    """Shuffled training batches bucketed by *target* length; ``batch_size`` examples a rank, each rank's
    share of one global batch of ``batch_size`` x world size (the same global batches at any world size).

    The decoder runs one step per target position, and it is most of a training step's cost;
    bucketing by target length cuts the padded decoder steps of a MathQA epoch by about 2.5x
    compared with bucketing by source length. Why not by source length too: MathQA has many
    problems written from one template, which share both lengths and the program, so batches
    sorted by (target, source) hold many copies of one problem (27% repeated programs per batch
    in pools of 200 batches, against 6% here). Measured on MathQA train: that sort cut the padded
    source positions from 2.19x the real ones to 1.28x and trained 1.26x the examples per second,
    but dev loss fell more slowly per epoch (0.717 against 0.650 after 8 epochs), which ate the gain.
    """
    sampler = data.BucketBatchSampler([len(e.tgt) for e in examples], batch_size * world_size(), shuffle=True,
                                      seed=seed, ranks=world_size(), rank=rank())
    return DataLoader(examples, batch_sampler=sampler,
                      collate_fn=functools.partial(data.collate, pad_id=0, wordpiece_pad_id=wordpiece_pad_id))


def sequence_loss(logits: torch.Tensor, batch: data.Batch, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits [B, T-1, V] against ``batch.tgt[:, 1:]``, padding ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.tgt[:, 1:].reshape(-1),
                           ignore_index=0, reduction=reduction, label_smoothing=label_smoothing)


def train_epoch(model: nn.Module, loader, optimizer, scheduler, config: MathqaConfig, device: torch.device,
                epoch: int) -> tuple[float, int]:
    """One pass over train; the mean loss per target token and the number of examples seen, over every rank.

    ``model`` may be wrapped in DistributedDataParallel, which averages the ranks' gradients: each rank's
    summed loss is scaled by world size / the step's target tokens on all ranks, so the update is the one
    of the mean loss over the whole global batch, whatever share of its tokens each rank holds.
    """
    model.train()
    total, tokens, examples = 0.0, 0, 0
    limit = config.max_steps_per_epoch or len(loader)
    for step, batch in enumerate(progress(loader, f"epoch {epoch + 1} train", total=min(limit, len(loader)), epoch=epoch)):
        if step >= limit:
            break
        batch = batch.to(device)
        count = (batch.tgt[:, 1:] != 0).sum()
        everywhere = sum_over_ranks(count.clone())
        with bf16_autocast(device, config.amp):
            logits = model(batch, config.teacher_forcing)
            summed = sequence_loss(logits, batch, reduction="sum", label_smoothing=config.label_smoothing)
            plain = sequence_loss(logits.detach(), batch, reduction="sum") if config.label_smoothing else summed
        # backward and the update outside autocast, as PyTorch advises: with them inside it, training
        # diverged here (dev loss 14.4 instead of 1.44 after 300 steps; forward-only bf16 tracks float32)
        optimise(summed * (world_size() / everywhere), optimizer, f"epoch {epoch + 1}, step {step + 1}",
                 config.grad_clip, model.parameters())
        scheduler.step()
        total += plain.item()  # what we report: the plain cross-entropy
        tokens += int(count)
        examples += len(batch)
    total, tokens, examples = np.sum(gather_shards(np.array([total, tokens, examples])), axis=0)
    return float(total / max(tokens, 1)), int(examples)


def in_dataset_order(loader: DataLoader, rows: list) -> list:
    """``rows``, one per example in the order ``loader`` batched them, put in the order of ``loader.dataset``.
    The loader's batch order must be fixed, as an evaluation loader's (by length) is."""
    order = [index for indices in loader.batch_sampler for index in indices]
    placed = [None] * len(order)
    for index, row in zip(order, rows, strict=True):
        placed[index] = row
    return placed


def shard_loader(examples: list[data.Example], batch_size: int, wordpiece_pad_id: int) -> DataLoader:
    """This rank's unpadded share (core.distributed.shard_indices) of an evaluated split, batched by length."""
    mine = [examples[index] for index in shard_indices(len(examples))]
    return data.make_loader(mine, batch_size, shuffle=False, wordpiece_pad_id=wordpiece_pad_id)


@torch.no_grad()
def example_losses(model: Seq2Seq, loader, device: torch.device) -> np.ndarray:
    """[N, 2] each example's summed loss over its target tokens (full teacher forcing) and their count,
    in the order of ``loader.dataset``."""
    model.eval()
    rows = []
    for batch in loader:
        batch = batch.to(device)
        losses = sequence_loss(model(batch, 1.0), batch, reduction="none").view(len(batch), -1)  # [B, T-1]
        rows.extend(zip(losses.sum(1).tolist(), (batch.tgt[:, 1:] != 0).sum(1).tolist()))
    return np.array(in_dataset_order(loader, rows), dtype=np.float64).reshape(-1, 2)


def split_loss(model: Seq2Seq, loader, device: torch.device) -> float:
    """Mean loss per target token with full teacher forcing (comparable with the train loss at p = 1) over
    the whole split; ``loader`` reads this rank's shard (:func:`shard_loader`), each example counts once."""
    rows = gather_in_order(example_losses(model, loader, device))
    return float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1))


def number_counts(records: list[dict]) -> torch.Tensor:
    """[N] how many numbers each problem has (the grammar allows ``nK`` only for K below it)."""
    return torch.tensor([len(extract_numbers(r["Problem"])) for r in records])


@torch.no_grad()
def predict(model: Seq2Seq, loader, device: torch.device, beam_size: int, max_len: int,
            length_penalty: float = 1.0, grammar: bool = False, desc: str = "decode") -> tuple[list[dict], list[str]]:
    """Records and predicted programs of every example in ``loader`` (greedy when beam_size is 1), in the
    order of ``loader.dataset`` (the order of the data file for a split)."""
    model.eval()
    vocab = model.tgt_vocab
    constraint = ProgramGrammar(vocab.itos, vocab.eos_id, vocab.pad_id, vocab.bos_id) if grammar else None
    records, predicted = [], []
    for batch in progress(loader, desc):
        batch = batch.to(device)
        num_numbers = number_counts(batch.records) if grammar else None
        if beam_size == 1:
            outputs = greedy_search(model, batch, max_len, constraint, num_numbers)
        else:
            hypotheses = beam_search(model, batch, beam_size, max_len, length_penalty, constraint, num_numbers)
            outputs = [found[0].tokens if found else [] for found in hypotheses]
        records.extend(batch.records)
        predicted.extend(tokens_to_program(vocab.decode(ids)) for ids in outputs)
    return in_dataset_order(loader, records), in_dataset_order(loader, predicted)


def decode(model: Seq2Seq, loader, device: torch.device, config: MathqaConfig, beam_size: int,
           desc: str) -> tuple[list[dict], list[str]]:
    """:func:`predict` over the whole split in its order; ``loader`` reads this rank's shard
    (:func:`shard_loader`), so each example is decoded by one rank and counted once."""
    records, predicted = predict(model, loader, device, beam_size, config.max_decode_len, config.length_penalty,
                                 config.grammar, desc)
    return (gather_in_order(np.array(records, dtype=object)).tolist(),
            gather_in_order(np.array(predicted, dtype=object)).tolist())


def scores(records: list[dict], predicted: list[str]) -> dict[str, float]:
    """Exact match, execution and token accuracy (percentages) of predictions."""
    summary, _ = score_records([{**r, "predicted": p} for r, p in zip(records, predicted)])
    return {name: summary[name] for name in SCORES}


def make_model(config: MathqaConfig, prepared: Prepared, device: torch.device) -> Seq2Seq:
    return build_model(config.model, prepared.src_vocab, prepared.tgt_vocab, model_config(config)).to(device)


def train_model(config: MathqaConfig, out_dir: str | Path, force: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one run in ``out_dir``; returns its metrics.json content.
    Under torchrun every rank calls it (see the module's docstring)."""
    device = init_distributed(config.device)
    seed_everything(config.seed)
    if rank() == 0:
        data_dir(config)  # generated data is written by rank 0 alone; the others read it after the barrier
    barrier()
    hashes = data_hashes(config)
    if not force:
        check_data_unchanged(Path(out_dir), config, hashes)
    run = RunDir(out_dir, to_dict(config) | {DATA_HASHES: hashes}, force=force, rank=rank())
    if force and run.writes:
        clear_outputs(run.path)
    barrier()  # no rank reads the folder before rank 0 has cleared (--force) or claimed it
    if run.finished:
        log.info("%s already finished; pass --force to train it again", out_dir)
        return run.final_metrics()
    source = init_source(config, hashes)
    prepared = prepare(config, tuple(data.Vocab.load(source / name) for name in VOCAB_FILES) if source else None)
    if run.writes:
        prepared.src_vocab.save(run.path / VOCAB_FILES[0])
        prepared.tgt_vocab.save(run.path / VOCAB_FILES[1])
    model = make_model(config, prepared, device)
    if source is not None:  # before the frozen encoder is cached; a resumed run's checkpoint replaces these
        chosen = RunDir(source, {}, rank=1).load_best({"model": model})  # rank 1: reads, writes nothing
        log.info("initial weights: %s's best checkpoint (epoch %d)", source, chosen["epoch"] + 1)
    if config.model == "bert_frozen":  # the frozen encoder runs once per problem, not once per epoch
        began = time.perf_counter()
        prepared.splits = {name: cache_hidden(model.encoder, examples, config.eval_batch_size,
                                              prepared.wordpiece_pad_id, device, config.amp)
                           for name, examples in prepared.splits.items()}
        log.info("frozen encoder outputs cached in %.0f s", time.perf_counter() - began)
    net = nn.parallel.DistributedDataParallel(model) if is_distributed() else model
    train_loader = make_train_loader(prepared.splits["train"], config.batch_size, config.seed,
                                     prepared.wordpiece_pad_id)
    loaders = {name: shard_loader(examples, config.eval_batch_size, prepared.wordpiece_pad_id)
               for name, examples in prepared.splits.items() if name != "train"}
    optimizer = torch.optim.Adam(model.param_groups(config.lr, config.encoder_lr), weight_decay=config.weight_decay)
    steps_per_epoch = min(len(train_loader), config.max_steps_per_epoch or len(train_loader))
    horizon = [config.epochs * steps_per_epoch]  # the cosine's last step; a time budget may bring it closer
    scheduler = build_scheduler(config, optimizer, horizon)
    stopper = EarlyStopping(config.patience, mode="max")
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "early_stopping": stopper}
    start, _ = run.resume(objects)  # every rank reads rank 0's last checkpoint
    planned = planned_epochs(config, run)
    horizon[0] = planned * steps_per_epoch

    for epoch in range(start, config.epochs):
        if stopper.should_stop or epoch >= planned:
            break
        began = time.perf_counter()
        train_loader.batch_sampler.set_epoch(epoch)
        train_loss, seen = train_epoch(net, train_loader, optimizer, scheduler, config, device, epoch)
        train_seconds = time.perf_counter() - began
        dev = scores(*decode(model, loaders["dev"], device, config, 1, f"epoch {epoch + 1} dev"))
        improved = stopper.step(dev["execution_accuracy"])
        record = {"epoch": epoch, "train/loss": train_loss, "dev/loss": split_loss(model, loaders["dev"], device)}
        record |= {f"dev/{name}": value for name, value in dev.items()}
        record |= {"lr": optimizer.param_groups[0]["lr"], "train/examples_per_second": seen / train_seconds,
                   "seconds": time.perf_counter() - began}
        run.log_epoch(record)
        planned = planned_epochs(config, run)
        horizon[0] = planned * steps_per_epoch
        run.save_checkpoint(epoch, objects, best=improved)
        log.info("epoch %d: train loss %.3f, dev execution accuracy %.1f", epoch + 1, train_loss,
                 dev["execution_accuracy"])

    best = run.load_best({"model": model}) if run.writes else {"epoch": None}
    broadcast_from_rank0(model.state_dict().values())  # every rank decodes with the best weights rank 0 loaded
    metrics: dict[str, Any] = {}
    for split, loader in loaders.items():
        records, predicted = decode(model, loader, device, config, config.beam_size, f"final {split}")
        if run.writes:
            data.write_predictions(run.path / "predictions" / f"{split}.json", records, predicted)
        metrics[split] = scores(records, predicted)
    history = run.history()
    cut_short = len(history) < config.epochs
    metrics |= {"best_epoch": best["epoch"], "epochs_run": len(history), "beam_size": config.beam_size,
                "stopped_early": cut_short and stopper.should_stop,
                "stopped_for_time": cut_short and not stopper.should_stop,
                "train_examples_per_second": sum(r["train/examples_per_second"] for r in history) / len(history),
                "train_minutes": sum(r["seconds"] for r in history) / 60,
                "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "model_name": model_name(config.model, model_config(config)),
                "split_roles": {split: split_role(split) for split in loaders},
                # gold programs with a token no training program has (encoded <unk>): never matched exactly
                "gold_programs_with_unseen_tokens": {
                    split: sum(prepared.tgt_vocab.unk_id in e.tgt for e in prepared.splits[split]) for split in loaders},
                "train_dropped_too_long": prepared.dropped["too_long"],
                "train_dropped_bad_program": prepared.dropped["bad_program"], "world_size": world_size()}
    metrics |= {f"{split}_truncated": count for split, count in prepared.truncated.items()}
    run.finish(metrics)
    return metrics


def load_trained(out_dir: str | Path, device: str = "auto") -> tuple[Seq2Seq, MathqaConfig, Prepared]:
    """The best model of a finished or partial run folder, with its config and data encoded with its vocabularies."""
    out_dir = Path(out_dir)
    config, _ = run_config(out_dir)
    prepared = prepare(config, tuple(data.Vocab.load(out_dir / name) for name in VOCAB_FILES))
    model = make_model(config, prepared, pick_device(device))
    RunDir(out_dir, {}, rank=1).load_best({"model": model})  # rank 1: reads, writes nothing
    return model, config, prepared
