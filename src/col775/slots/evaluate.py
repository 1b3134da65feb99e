"""Object-discovery scores over a data loader, for any slot model (the one evaluation of both decoders).

A pixel belongs to the slot whose mask is largest there: the decoder's alpha masks for the spatial
broadcast decoder, the resized attention maps for the diffusion decoder (`SlotModel.masks`). The
reconstruction is `SlotModel.explain`'s (sampled, for the diffusion decoder, from `generator`'s noise).

Scores (over images that have them): ARI with the background as one more segment, FG-ARI
over object pixels only, Hungarian-matched mean IoU of the objects, and the reconstruction
MSE (mean over pixels and channels, images in [-1, 1]).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from col775.core.training import progress
from col775.slots.metrics import ari, fg_ari, mean_valid, miou_hungarian
from col775.slots.slot_model import SlotModel


@torch.no_grad()
def evaluate(
    model: SlotModel,
    loader: DataLoader,
    device: torch.device,
    desc: str = "evaluate",
    miou: bool = True,
    max_recon_images: int | None = 0,
    generator: torch.Generator | None = None,
) -> dict[str, float | int | None]:
    """Mean ARI, FG-ARI, mIoU and MSE over `loader` ({"image", "mask"?} batches); None where unavailable.

    The MSE is over the first `max_recon_images` images (0 = all, None = none: no reconstruction)."""
    squared_error, pixels = 0.0, 0
    scores: dict[str, list[Tensor]] = {"ari": [], "fg_ari": [], "miou": []}
    images_seen = 0
    for batch in progress(loader, desc):
        images = batch["image"].to(device)
        recon_count = 0 if max_recon_images is None else len(images)
        if max_recon_images:
            recon_count = max(0, min(len(images), max_recon_images - images_seen))
        if recon_count:
            out = model.explain(images[:recon_count], generator)
            squared_error += float(((out["recon"].float() - images[:recon_count]) ** 2).sum())
            pixels += images[:recon_count].numel()
            rest = images[recon_count:]
            masks = torch.cat([out["masks"], model.masks(rest)]) if len(rest) else out["masks"]
        else:
            masks = model.masks(images)
        images_seen += len(images)
        if "mask" in batch:
            labels = masks.argmax(dim=1)
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
