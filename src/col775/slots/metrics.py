"""Segmentation scores for object discovery: ARI, foreground ARI (also on object interiors alone) and
Hungarian-matched mean IoU.

All take a batch of predicted and true label maps of the same shape, [B, H, W] or [B, N],
integer dtype, any label values (gaps, negatives and unused ids are fine: only the
partition matters), and return one score per image as a float64 tensor [B] on the input's
device. Contingency tables for the whole batch come from one `torch.bincount`.

`ari` equals scikit-learn's `adjusted_rand_score` on every image, edge cases included
(one cluster in both labelings, or identical partitions, give 1.0). The one deliberate
difference: an image with no pixels to score (with `foreground_only`, an image that is all
background) gets NaN, where scikit-learn would say 1.0 for empty input; averages over a
dataset skip such images (`mean_valid`), so a scene with no objects cannot inflate FG-ARI.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def _flatten_pair(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {tuple(pred.shape)} and {tuple(true.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"expected a batch [B, H, W] or [B, N] of label maps, got shape {tuple(pred.shape)}")
    for name, labels in (("pred", pred), ("true", true)):
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"{name} must hold integer labels, got {labels.dtype}; take argmax over slots first"
            )
    return pred.reshape(pred.shape[0], -1), true.reshape(true.shape[0], -1)


def contingency(
    pred: torch.Tensor, true: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image contingency tables [B, Kt, Kp] (int64) over pixels where `keep` is True.

    Labels are made dense over the whole batch (row k is the k-th smallest true label that
    occurs anywhere in the batch); also returns those true label values [Kt].
    """
    pred, true = _flatten_pair(pred, true)
    batch = pred.shape[0]
    true_values, true_idx = torch.unique(true, return_inverse=True)
    _, pred_idx = torch.unique(pred, return_inverse=True)
    kt = len(true_values) if true.numel() else 1
    kp = int(pred_idx.max()) + 1 if pred.numel() else 1
    cells = batch * kt * kp
    image = torch.arange(batch, device=pred.device).unsqueeze(1)
    flat = image * (kt * kp) + true_idx * kp + pred_idx  # [B, N]
    if keep is not None:
        # Pixels left out go to a spare last bin, cut off below.
        flat = torch.where(keep.reshape(batch, -1), flat, torch.full_like(flat, cells))
    counts = torch.bincount(flat.reshape(-1), minlength=cells + 1)[:cells]
    return counts.reshape(batch, kt, kp), true_values


def _pairs(counts: torch.Tensor) -> torch.Tensor:
    """Number of unordered pairs, n * (n - 1) / 2, summed over all but the batch dimension."""
    return (counts * (counts - 1)).reshape(counts.shape[0], -1).sum(dim=1) // 2


def ari(pred: torch.Tensor, true: torch.Tensor, foreground_only: bool = False,
        keep: torch.Tensor | None = None) -> torch.Tensor:
    """Adjusted Rand Index per image [B] (float64); with `foreground_only`, pixels where true == 0 are ignored,
    and with `keep` (bool, the labels' shape), pixels where it is False.

    Uses the pair-counting form (same pair / different pair in each labeling), as scikit-learn does,
    so identical partitions give exactly 1.0 even when the usual formula would divide 0 by 0.
    Images with no pixels left to score give NaN (see the module docstring).
    """
    if foreground_only:
        keep = (true != 0) if keep is None else keep & (true != 0)
    table, _ = contingency(pred, true, keep)
    n = table.sum(dim=(1, 2))
    same_both = _pairs(table)
    same_true = _pairs(table.sum(dim=2))
    same_pred = _pairs(table.sum(dim=1))
    total = n * (n - 1) // 2
    tp = same_both.double()
    fn = (same_true - same_both).double()  # together in true, apart in pred
    fp = (same_pred - same_both).double()  # apart in true, together in pred
    tn = (total - same_true - same_pred + same_both).double()
    denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    perfect = (fn == 0) & (fp == 0)
    score = 2.0 * (tp * tn - fn * fp) / torch.where(perfect, torch.ones_like(denominator), denominator)
    score = torch.where(perfect, torch.ones_like(score), score)
    return torch.where(n == 0, torch.full_like(score, float("nan")), score)


def fg_ari(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Foreground ARI per image [B]: ARI over the pixels whose true label is not 0 (background)."""
    return ari(pred, true, foreground_only=True)


def interior(true: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: True where every pixel of the 3x3 neighbourhood inside the image has the same true label.

    The other pixels are segment boundaries. At 32x32 about half of all object pixels are, so a model whose
    masks are right but blurred by a pixel loses much of its FG-ARI there (`fg_ari_interior` shows how much).
    """
    if true.dim() != 3 or true.is_floating_point():
        raise ValueError(f"expected a batch [B, H, W] of integer label maps, got {true.dtype} {tuple(true.shape)}")
    labels = true.unsqueeze(1).double()  # exact for any label below 2**53
    # max_pool2d pads with -inf, so a pixel at the image's edge compares only with pixels inside it.
    highest = F.max_pool2d(labels, 3, stride=1, padding=1)
    lowest = -F.max_pool2d(-labels, 3, stride=1, padding=1)
    return (highest == lowest).squeeze(1)


def fg_ari_interior(pred: torch.Tensor, true: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
    """FG-ARI per image [B] over object pixels away from any boundary (`inside`: `interior(true)`, computed when
    not given); NaN where none is."""
    return ari(pred, true, foreground_only=True, keep=interior(true) if inside is None else inside)


def miou_hungarian(pred: torch.Tensor, true: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """Mean IoU per image [B] of the true objects, each matched to a distinct predicted segment.

    The matching maximises the total IoU (scipy's `linear_sum_assignment`); true objects left
    without a segment (more objects than segments) count as IoU 0. True label 0 is background
    and is left out unless `include_background`. Images with no true object give NaN.
    """
    table, true_values = contingency(pred, true)
    table = table.cpu().numpy().astype(np.float64)
    object_rows = np.ones(len(true_values), dtype=bool) if include_background else true_values.cpu().numpy() != 0
    scores = []
    for counts in table:
        true_area, pred_area = counts.sum(axis=1), counts.sum(axis=0)
        rows = np.flatnonzero(object_rows & (true_area > 0))
        cols = np.flatnonzero(pred_area > 0)
        if len(rows) == 0:
            scores.append(float("nan"))
            continue
        inter = counts[np.ix_(rows, cols)]
        iou = inter / (true_area[rows, None] + pred_area[None, cols] - inter)
        matched_rows, matched_cols = linear_sum_assignment(iou, maximize=True)
        scores.append(float(iou[matched_rows, matched_cols].sum() / len(rows)))
    return torch.tensor(scores, dtype=torch.float64, device=pred.device)


def mean_valid(scores: torch.Tensor) -> float:
    """Mean over the images that have a score (NaN ones skipped); NaN when none has."""
    valid = scores[~torch.isnan(scores)]
    return float(valid.mean()) if valid.numel() else float("nan")
