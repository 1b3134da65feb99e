"""MathQA data: the course's json files, source and target tokens, vocabularies, batches.

How the decoder refers to the problem's numbers
    The scorer names the numbers of a problem ``n0, n1, ...`` in the order its regular
    expression finds them (``programs.extract_numbers``), and gold programs use those
    names. The encoder must therefore see *which* number is ``nK``; the values
    themselves only matter to the executor. We find the character span of every number
    with the scorer's own two regular expressions (thousands separators first), then:

    - GloVe models: the number's characters in the source become a placeholder token
      ``nK`` (``"3rd"`` -> ``n0 rd``, ``"6,12"`` -> ``n0 , n1``). GloVe has no useful
      vector for ``"36"`` anyway, while a learned row per placeholder tells the decoder
      exactly which target token ``nK`` to emit, and dev/test numbers never fall out of
      the vocabulary.
    - Wordpiece (BERT) models: the text is kept as is, so the pretrained encoder still
      reads the magnitudes, and every wordpiece overlapping number K's span (found via
      the tokenizer's offset mapping) carries a number id ``K + 1`` (0 elsewhere); the
      model adds a learned embedding of that id to the encoder's output.

Targets are ``<bos>`` + ``programs.program_tokens(linear_formula)`` + ``<eos>``.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Sampler

from col775.core import disk_cache
from col775.core.runs import atomic_write_bytes
from col775.mathqa import programs

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
MAX_NUMBERS = 40  # placeholders n0..n39 are always in the source vocabulary (train has at most 21)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
_FIELDS = {"Problem": str, "linear_formula": str, "answer": (int, float)}
_WORD = re.compile(r"\S+")


# ---------------------------------------------------------------- files


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"MathQA file {path} does not exist")
    return path


def file_sha256(path: str | Path) -> str:
    """Content hash of a data file (a resumed run checks that its train and dev files are unchanged)."""
    return disk_cache.file_sha256(_existing(Path(path)))


def load_split(path: str | Path) -> list[dict[str, Any]]:
    """Records of one course json file, each checked to have Problem, linear_formula and answer."""
    path = Path(path)
    text = _existing(path).read_bytes()
    try:
        records = json.loads(text.decode("utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records, found {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}, record {index}: expected an object, found {type(record).__name__}")
        for name, kind in _FIELDS.items():
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"{path}, record {index}: field {name!r} is missing or not a {kind}; "
                    'each record must look like {"Problem": str, "linear_formula": str, "answer": number}'
                )
    return records


def load_mathqa(data_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "dev": [...], "test": [...]}`` from DIR/{train,dev,test}.json (test optional)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MathQA folder {data_dir} does not exist (it must hold train.json and dev.json)")
    splits = {name: load_split(data_dir / f"{name}.json") for name in ("train", "dev")}
    if (data_dir / "test.json").is_file():
        splits["test"] = load_split(data_dir / "test.json")
    return splits


def write_predictions(path: str | Path, records: Sequence[dict[str, Any]], predicted: Sequence[str]) -> Path:
    """The course's submission format: the records, each with an added ``"predicted"`` program."""
    if len(records) != len(predicted):
        raise ValueError(f"{len(records)} records but {len(predicted)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**record, "predicted": text} for record, text in zip(records, predicted)]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------- numbers and tokens


def number_spans(problem: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` in ``problem`` of the numbers n0, n1, ... the scorer reads.

    Same two steps as ``programs.extract_numbers`` (thousands commas removed, then the
    number pattern left to right), run on the comma-free text and mapped back to the
    original characters, so ``"1,500"`` is one span covering all five characters.
    """
    removed = {
        index
        for match in programs.THOUSANDS_PATTERN.finditer(problem)
        for index in range(match.start(), match.end())
        if problem[index] == ","
    }
    kept = [index for index in range(len(problem)) if index not in removed]  # text index -> problem index
    text = "".join(problem[index] for index in kept)
    return [(kept[m.start()], kept[m.end() - 1] + 1) for m in programs.NUMBER_PATTERN.finditer(text)]


def placeholder(k: int) -> str:
    """Source token standing for number K of the problem (the same string as the program's argument)."""
    return f"n{k}"


def source_tokens(problem: str) -> list[str]:
    """Whitespace tokens of the problem with each number's characters replaced by ``nK``."""
    spans = number_spans(problem)
    tokens: list[str] = []
    k = 0
    for word in _WORD.finditer(problem):
        cursor = word.start()
        while k < len(spans) and spans[k][0] < word.end():  # a number never contains whitespace
            start, end = spans[k]
            if start > cursor:
                tokens.append(problem[cursor:start])
            tokens.append(placeholder(k))
            cursor = end
            k += 1
        if cursor < word.end():
            tokens.append(problem[cursor:word.end()])
    return tokens


def target_tokens(formula: str) -> list[str]:
    """Decoder tokens of a gold program, without <bos>/<eos>."""
    return programs.program_tokens(formula)


def lengths(record: dict[str, Any]) -> tuple[int, int]:
    """Source and program token counts of a record (what ``max_source_len``/``max_target_len`` bound)."""
    return len(source_tokens(record["Problem"])), len(target_tokens(record["linear_formula"]))


def count_over(records: Sequence[dict[str, Any]], max_source_len: int, max_target_len: int) -> int:
    """How many records ``encode_records`` cuts: the source or the gold program longer than its cap."""
    return sum(source > max_source_len or target > max_target_len for source, target in map(lengths, records))


def training_records(records: Sequence[dict[str, Any]], max_source_len: int, max_target_len: int,
                     where: str | Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The records fit to train on, and how many were left out: ``{"too_long": n, "bad_program": m}``.

    Too long: more source tokens than ``max_source_len`` or program tokens than ``max_target_len``
    (one huge problem would otherwise take the trainer's memory). Bad program: a gold program the
    scorer cannot run whatever the numbers (an unknown operation, a wrong number of arguments, ...),
    so it would only teach the decoder programs that score as wrong. Each reason gets one warning
    that counts its records and names the first (``where`` names the file).
    """
    kept, dropped = [], {"too_long": [], "bad_program": []}
    for index, record in enumerate(records):
        source, target = lengths(record)
        if source > max_source_len or target > max_target_len:
            dropped["too_long"].append(f"record {index} has {source} source and {target} program tokens "
                                       f"(max_source_len {max_source_len}, max_target_len {max_target_len})")
            continue
        try:
            programs.parse_program(record["linear_formula"])
        except programs.ProgramError as error:
            dropped["bad_program"].append(f"record {index}: {error}")
            continue
        kept.append(record)
    for reason, found in dropped.items():
        if found:
            log.warning("%s: %d training record(s) dropped (%s); the first: %s", where, len(found),
                        reason.replace("_", " "), found[0])
    return kept, {reason: len(found) for reason, found in dropped.items()}


def wordpiece_numbers(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]],
                      max_numbers: int = MAX_NUMBERS) -> list[int]:
    """Per wordpiece: ``K + 1`` if it overlaps number K's span (K < max_numbers), else 0.

    ``offsets`` is a fast tokenizer's offset mapping; special tokens have (0, 0) and get 0.
    """
    ids = []
    for start, end in offsets:
        number = 0
        if end > start:
            for k, (s, e) in enumerate(spans[:max_numbers]):
                if start < e and s < end:
                    number = k + 1
                    break
        ids.append(number)
    return ids


# ---------------------------------------------------------------- vocabulary


class Vocab:
    """Token <-> id table with ``<pad>`` = 0, ``<unk>``, ``<bos>``, ``<eos>``; saved as JSON."""

    specials = (PAD, UNK, BOS, EOS)

    def __init__(self, itos: Sequence[str]):
        if tuple(itos[: len(self.specials)]) != self.specials:
            raise ValueError(f"a vocabulary must start with {self.specials}, got {list(itos[:4])}")
        if len(set(itos)) != len(itos):
            raise ValueError("a vocabulary must not repeat a token")
        self.itos = list(itos)
        self.stoi = {token: index for index, token in enumerate(self.itos)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(len(self.specials))

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, always: Iterable[str] = ()) -> Vocab:
        """Tokens seen at least ``min_freq`` times (most frequent first), plus ``always``."""
        counts = Counter(token for tokens in token_lists for token in tokens)
        itos = list(cls.specials)
        seen = set(itos)
        for token in always:
            if token not in seen:
                itos.append(token)
                seen.add(token)
        for token, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            if count >= min_freq and token not in seen:
                itos.append(token)
                seen.add(token)
        return cls(itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(token, self.unk_id) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | Path) -> None:
        """Written atomically: a run killed while saving keeps a readable vocabulary."""
        atomic_write_bytes(Path(path), json.dumps({"itos": self.itos}).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "itos" not in data:
            raise ValueError(f'{path} is not a saved Vocab (expected {{"itos": [...]}})')
        return cls(data["itos"])


def build_vocabs(train: Sequence[dict[str, Any]], src_min_freq: int = 1,
                 max_numbers: int = MAX_NUMBERS) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies from the training records only."""
    placeholders = [placeholder(k) for k in range(max_numbers)]
    src = Vocab.build((source_tokens(r["Problem"]) for r in train), src_min_freq, always=placeholders)
    tgt = Vocab.build(target_tokens(r["linear_formula"]) for r in train)
    return src, tgt


# ---------------------------------------------------------------- examples and batches


@dataclass
class Example:
    """One encoded record: word ids (with placeholders), target ids, optional wordpieces."""

    record: dict[str, Any]
    src: list[int]
    tgt: list[int]  # <bos> program <eos>
    wordpieces: list[int] | None = None
    wordpiece_numbers: list[int] | None = None
    hidden: torch.Tensor | None = None  # [W, D] a frozen encoder's output for the wordpieces (encoder_cache.py)


def encode_records(records: Sequence[dict[str, Any]], src_vocab: Vocab, tgt_vocab: Vocab,
                   tokenizer: Any = None, max_numbers: int = MAX_NUMBERS, max_wordpieces: int = 512,
                   max_source_len: int | None = None, max_target_len: int | None = None) -> list[Example]:
    """Encode records for a model; with a (fast, offset-giving) tokenizer also its wordpieces.

    Sources are cut to ``max_source_len`` tokens and gold programs to ``max_target_len`` (before
    ``<eos>``), so no record, however long, makes a batch unbounded; scores read the records' own text.
    """
    examples = []
    for record in records:
        src = src_vocab.encode(source_tokens(record["Problem"])[:max_source_len]) or [src_vocab.unk_id]
        program = target_tokens(record["linear_formula"])[:max_target_len]
        tgt = [tgt_vocab.bos_id, *tgt_vocab.encode(program), tgt_vocab.eos_id]
        examples.append(Example(record, src, tgt))
    if tokenizer is not None:
        encoded = tokenizer([r["Problem"] for r in records], return_offsets_mapping=True,
                            truncation=True, max_length=max_wordpieces)
        for example, ids, offsets in zip(examples, encoded["input_ids"], encoded["offset_mapping"]):
            example.wordpieces = list(ids)
            example.wordpiece_numbers = wordpiece_numbers(
                offsets, number_spans(example.record["Problem"]), max_numbers)
    return examples


@dataclass
class Batch:
    """Padded tensors of a batch plus its original records (for writing predictions)."""

    src: torch.Tensor  # [B, S] word ids, pad 0
    src_lengths: torch.Tensor  # [B]
    tgt: torch.Tensor  # [B, T] <bos> ... <eos>, pad 0
    tgt_lengths: torch.Tensor  # [B]
    records: list[dict[str, Any]] = field(default_factory=list)
    wordpieces: torch.Tensor | None = None  # [B, W]
    wordpiece_mask: torch.Tensor | None = None  # [B, W] bool, True on real wordpieces
    wordpiece_numbers: torch.Tensor | None = None  # [B, W] 0 or K + 1
    wordpiece_hidden: torch.Tensor | None = None  # [B, W, D] float32 cached encoder output, zero at padding

    def __len__(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for name, value in vars(self).items()}
        return Batch(**moved)


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(examples: Sequence[Example], pad_id: int = 0, wordpiece_pad_id: int = 0) -> Batch:
    """Pad a list of examples into a Batch (wordpiece tensors, and cached encoder outputs, only when every
    example has them)."""
    batch = Batch(
        src=_pad([e.src for e in examples], pad_id),
        src_lengths=torch.tensor([len(e.src) for e in examples]),
        tgt=_pad([e.tgt for e in examples], pad_id),
        tgt_lengths=torch.tensor([len(e.tgt) for e in examples]),
        records=[e.record for e in examples],
    )
    if all(e.wordpieces is not None for e in examples):
        batch.wordpieces = _pad([e.wordpieces for e in examples], wordpiece_pad_id)
        batch.wordpiece_mask = _pad([[1] * len(e.wordpieces) for e in examples], 0).bool()
        batch.wordpiece_numbers = _pad([e.wordpiece_numbers for e in examples], 0)
    if all(e.hidden is not None for e in examples):
        batch.wordpiece_hidden = pad_sequence([e.hidden for e in examples], batch_first=True).float()
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar source length, so little compute goes to padding.

    Indices are shuffled, cut into pools of ``pool_batches`` batches, each pool sorted by
    length and cut into batches, and the batches shuffled. Without shuffling the order
    is simply by length (for fast evaluation). Deterministic given seed and ``set_epoch``.

    Under torch.distributed, ``batch_size`` is the global batch and each of ``ranks`` processes takes
    every ``ranks``-th index of each batch from ``rank`` on: the batches do not depend on the number of
    ranks, so N ranks step through the same global batches as one process. A batch with fewer indices
    than ranks (only ever an epoch's last, shorter one) is skipped, as a rank cannot step on nothing.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, pool_batches: int = 50, ranks: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.ranks = ranks
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + int(rest >= self.ranks)

    def __iter__(self) -> Iterator[list[int]]:
        yield from (batch[self.rank::self.ranks] for batch in self._batches() if len(batch) >= self.ranks)

    def _batches(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        if not self.shuffle:
            order.sort(key=lambda i: self.lengths[i])
            yield from (order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size))
            return
        rng = random.Random(self.seed * 100_003 + self.epoch)
        rng.shuffle(order)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start: start + pool], key=lambda i: self.lengths[i])
            batches.extend(chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        yield from batches


def make_loader(examples: Sequence[Example], batch_size: int, shuffle: bool, seed: int = 0,
                wordpiece_pad_id: int = 0) -> DataLoader:
    """A DataLoader of Batches, bucketed by source length (wordpiece length when present)."""
    lengths = [len(e.wordpieces) if e.wordpieces is not None else len(e.src) for e in examples]
    sampler = BucketBatchSampler(lengths, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(list(examples), batch_sampler=sampler,
                      collate_fn=functools.partial(collate, pad_id=0, wordpiece_pad_id=wordpiece_pad_id))
