"""Object-discovery scores over a data loader, for any slot model.

A model is seen through one function, `predict(images) -> (labels, recon)`: labels [B, H, W]
(int64) name the slot each pixel belongs to (argmax over slots of the decoder's masks, or of
resized attention maps for a decoder without masks), and recon [B, 3, H, W] in [-1, 1] is the
reconstruction, or None where the decoder has none cheap enough to compute. So the spatial
broadcast decoder and the diffusion decoder are scored by the same code.

Scores (over images that have them): ARI with the background as one more segment, FG-ARI
over object pixels only, Hungarian-matched mean IoU of the objects, and the reconstruction
MSE (mean over pixels and channels, images in [-1, 1]).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from col775.core.training import progress
from col775.slots.metrics import ari, fg_ari, mean_valid, miou_hungarian

Predict = Callable[[Tensor], tuple[Tensor, Tensor | None]]


@torch.no_grad()
def evaluate_segmentation(
    predict: Predict, loader: DataLoader, device: torch.device, desc: str = "evaluate", miou: bool = True
) -> dict[str, float | int | None]:
    """Mean ARI, FG-ARI, mIoU and MSE over `loader` ({"image", "mask"?} batches); None where unavailable."""
    squared_error, pixels = 0.0, 0
    scores: dict[str, list[Tensor]] = {"ari": [], "fg_ari": [], "miou": []}
    images_seen = 0
    for batch in progress(loader, desc):
        images = batch["image"].to(device)
        labels, recon = predict(images)
        images_seen += len(images)
        if recon is not None:
            squared_error += float(((recon.float() - images) ** 2).sum())
            pixels += images.numel()
        if "mask" in batch:
            true = batch["mask"].to(labels.device)
            if labels.shape != true.shape:
                raise ValueError(f"predicted labels {tuple(labels.shape)} do not match masks {tuple(true.shape)}")
            scores["ari"].append(ari(labels, true).cpu())
            scores["fg_ari"].append(fg_ari(labels, true).cpu())
            if miou:
                scores["miou"].append(miou_hungarian(labels, true).cpu())
    result: dict[str, float | int | None] = {
        name: mean_valid(torch.cat(values)) if values else None for name, values in scores.items()
    }
    result["mse"] = squared_error / pixels if pixels else None
    result["images"] = images_seen
    return result
