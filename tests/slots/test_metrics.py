"""ARI, FG-ARI and Hungarian mIoU against scikit-learn and brute force."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from col775.slots.metrics import ari, contingency, fg_ari, fg_ari_interior, interior, mean_valid, miou_hungarian


def _sklearn_ari(pred: np.ndarray, true: np.ndarray, foreground_only: bool = False) -> float:
    keep = true != 0 if foreground_only else np.ones(true.shape, dtype=bool)
    if not keep.any():
        return float("nan")
    return adjusted_rand_score(true[keep], pred[keep])


@pytest.mark.parametrize("seed", range(12))
def test_ari_matches_sklearn_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    batch, h, w = 5, int(rng.integers(1, 9)), int(rng.integers(1, 9))
    true = rng.integers(0, rng.integers(1, 6), size=(batch, h, w))
    pred = rng.integers(-2, rng.integers(-1, 12), size=(batch, h, w))
    pred[1] = true[1] * 7 + 3  # same partition, different names
    for foreground_only in (False, True):
        ours = ari(torch.from_numpy(pred), torch.from_numpy(true), foreground_only=foreground_only)
        assert ours.shape == (batch,) and ours.dtype == torch.float64
        for b in range(batch):
            expected = _sklearn_ari(pred[b].ravel(), true[b].ravel(), foreground_only)
            np.testing.assert_allclose(ours[b].item(), expected, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_ari_on_segmentation_like_masks_matches_sklearn():
    rng = np.random.default_rng(7)
    true = np.zeros((3, 32, 32), dtype=np.int64)
    true[:, 4:14, 4:14], true[:, 18:30, 10:20], true[:, 2:9, 20:31] = 1, 2, 5
    pred = true.copy()
    noise = rng.random(pred.shape) < 0.2
    pred[noise] = rng.integers(0, 11, size=noise.sum())
    pred[2] = rng.integers(0, 11, size=(32, 32))
    pred_t, true_t = torch.from_numpy(pred), torch.from_numpy(true)
    ours_all, ours_fg = ari(pred_t, true_t), fg_ari(pred_t, true_t)
    for b in range(3):
        assert ours_all[b].item() == pytest.approx(_sklearn_ari(pred[b].ravel(), true[b].ravel()), abs=1e-12)
        assert ours_fg[b].item() == pytest.approx(_sklearn_ari(pred[b].ravel(), true[b].ravel(), True), abs=1e-12)
    assert ours_fg[0] > 0.5 > ours_fg[2]


@pytest.mark.parametrize(
    "pred, true",
    [
        ([3, 3, 3, 3], [1, 1, 1, 1]),  # one cluster in both
        ([0, 1, 2, 3], [5, 6, 7, 8]),  # every pixel its own cluster in both
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one cluster against all singletons
        ([0, 1, 0, 1], [0, 0, 1, 1]),  # negative ARI
        ([9, 9, 4, 4], [2, 2, 7, 7]),  # same partition, unused and gapped ids
        ([1], [1]),  # a single pixel
        ([0, 0, 1, 1, 1, 2], [0, 0, 0, 3, 3, 3]),
    ],
)
def test_ari_edge_cases_match_sklearn(pred, true):
    p, t = torch.tensor([pred]), torch.tensor([true])
    assert ari(p, t).item() == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)
    t_np, p_np = np.array(true), np.array(pred)
    expected = _sklearn_ari(p_np, t_np, foreground_only=True)
    np.testing.assert_allclose(fg_ari(p, t).item(), expected, atol=1e-12, equal_nan=True)


def test_all_background_image_is_nan_for_fg_ari_and_skipped_by_mean():
    true = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 2]])
    pred = torch.tensor([[1, 2, 3, 4], [5, 6, 6, 7]])
    scores = fg_ari(pred, true)
    assert torch.isnan(scores[0]) and scores[1].item() == pytest.approx(1.0)
    assert mean_valid(scores) == pytest.approx(1.0)
    assert np.isnan(mean_valid(torch.tensor([float("nan")])))
    assert ari(pred, true)[0].item() == pytest.approx(adjusted_rand_score([0, 0, 0, 0], [1, 2, 3, 4]))


def test_batched_equals_per_image_and_flat_equals_spatial():
    rng = np.random.default_rng(3)
    true = torch.from_numpy(rng.integers(0, 4, size=(6, 10, 12)))
    pred = torch.from_numpy(rng.integers(0, 8, size=(6, 10, 12)))
    for fn in (ari, fg_ari, miou_hungarian):
        batched = fn(pred, true)
        single = torch.cat([fn(pred[b : b + 1], true[b : b + 1]) for b in range(6)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(fn(pred.flatten(1), true.flatten(1)), batched, rtol=0, atol=0, equal_nan=True)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        ari(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        ari(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        ari(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_contingency_counts_pixels():
    pred = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    true = torch.tensor([[2, 2, 2, 5], [5, 5, 2, 2]])
    table, values = contingency(pred, true)
    assert values.tolist() == [2, 5]
    assert table.tolist() == [[[2, 1], [0, 1]], [[1, 1], [0, 2]]]


def _brute_force_miou(pred: np.ndarray, true: np.ndarray, include_background: bool) -> float:
    objects = [k for k in np.unique(true) if include_background or k != 0]
    if not objects:
        return float("nan")
    segments = list(np.unique(pred))
    best = 0.0
    # Each true object takes a distinct segment or none (None); try every such assignment.
    for choice in itertools.permutations(segments + [None] * len(objects), len(objects)):
        total = 0.0
        for obj, seg in zip(objects, choice):
            if seg is not None:
                a, b = true == obj, pred == seg
                total += (a & b).sum() / (a | b).sum()
        best = max(best, total / len(objects))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_miou_hungarian_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    true = rng.integers(0, rng.integers(2, 5), size=(4, 3, 4))
    pred = rng.integers(0, rng.integers(1, 5), size=(4, 3, 4))
    pred[0] = true[0] + 10  # perfect segmentation under other names
    true[3] = 0  # no objects at all
    for include_background in (False, True):
        ours = miou_hungarian(torch.from_numpy(pred), torch.from_numpy(true), include_background)
        for b in range(4):
            expected = _brute_force_miou(pred[b], true[b], include_background)
            np.testing.assert_allclose(ours[b].item(), expected, atol=1e-12, equal_nan=True)
    assert miou_hungarian(torch.from_numpy(pred), torch.from_numpy(true))[0].item() == pytest.approx(1.0)


def _interior_by_loops(true: np.ndarray) -> np.ndarray:
    """A pixel is interior when no neighbour inside the image (8 directions) has another label."""
    b, h, w = true.shape
    out = np.ones_like(true, dtype=bool)
    for n, y, x in itertools.product(range(b), range(h), range(w)):
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            if 0 <= y + dy < h and 0 <= x + dx < w and true[n, y + dy, x + dx] != true[n, y, x]:
                out[n, y, x] = False
    return out


@pytest.mark.parametrize("seed", range(4))
def test_fg_ari_interior_is_sklearn_on_object_pixels_away_from_boundaries(seed):
    rng = np.random.default_rng(seed)
    true = np.zeros((3, 12, 10), dtype=np.int64)
    for n in range(3):  # a few rectangles, so there are interiors to score
        for label in range(1, 4):
            y, x = rng.integers(0, 8), rng.integers(0, 6)
            true[n, y : y + int(rng.integers(3, 6)), x : x + int(rng.integers(3, 6))] = label
    pred = np.where(rng.random(true.shape) < 0.8, true, rng.integers(0, 4, true.shape))
    expected_inside = _interior_by_loops(true)
    assert torch.equal(interior(torch.from_numpy(true)), torch.from_numpy(expected_inside))
    ours = fg_ari_interior(torch.from_numpy(pred), torch.from_numpy(true))
    for n in range(3):
        keep = expected_inside[n] & (true[n] != 0)
        expected = adjusted_rand_score(true[n][keep], pred[n][keep]) if keep.any() else float("nan")
        assert ours[n].item() == pytest.approx(expected, nan_ok=True)


def test_a_mask_wrong_only_on_boundaries_scores_one_inside():
    true = torch.zeros(1, 8, 8, dtype=torch.long)
    true[0, 1:5, 1:5], true[0, 4:8, 4:8] = 1, 2
    pred = true.clone()
    pred[~interior(true)] = 0  # every boundary pixel given to the background
    assert fg_ari(pred, true).item() < 0.5
    assert fg_ari_interior(pred, true).item() == 1.0
