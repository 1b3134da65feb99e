"""Object-discovery scores over a data loader, for any slot model (the one evaluation of both decoders).

A pixel belongs to the slot whose mask is largest there: the decoder's alpha masks for the spatial
broadcast decoder, the resized attention maps for the diffusion decoder (`SlotModel.masks`). The
reconstruction is `SlotModel.explain`'s (sampled, for the diffusion decoder, from each image's own
generator, seeded by the run's seed and the image's index).

Scores (over images that have them): ARI with the background as one more segment, FG-ARI
over object pixels only, Hungarian-matched mean IoU of the objects, and the reconstruction
MSE (mean over pixels and channels, images in [-1, 1]). Beside them, to show where FG-ARI is
lost: FG-ARI over object interiors alone and the share of object pixels on a boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from col775.core.distributed import gather_in_order
from col775.core.training import progress
from col775.slots.metrics import ari, fg_ari, fg_ari_interior, interior, mean_valid, miou_hungarian
from col775.slots.slot_model import SAMPLE_STREAM, SlotModel, example_generators

# The columns of one image's row: its scores (NaN where it has none), its reconstruction's mean squared
# error over pixels and channels, whether it was reconstructed / has a mask, its true number of objects
# (labels other than 0, the background), its FG-ARI over object interiors alone and the share of its object
# pixels that lie on a segment boundary (the last three NaN without a mask).
ARI, FG_ARI, MIOU, MSE, RECONSTRUCTED, MASKED, OBJECTS, FG_ARI_INTERIOR, BOUNDARY = range(9)
COLUMNS = BOUNDARY + 1
SCORE_COLUMNS = (("ari", ARI), ("fg_ari", FG_ARI), ("miou", MIOU))  # also reported per number of objects
BOUNDARY_COLUMNS = (("fg_ari_interior", FG_ARI_INTERIOR), ("boundary_share", BOUNDARY))


def batch_rows(model: SlotModel, batch: dict, device: torch.device, miou: bool, max_recon_images: int | None,
               seed: int | None) -> torch.Tensor:
    """[B, COLUMNS] float64: one row per image of `batch`, in its order (the columns above); the options are
    `evaluate`'s."""
    images = batch["image"].to(device)
    index = batch["index"]
    recon_count = 0 if max_recon_images is None else len(images)
    if max_recon_images:
        recon_count = int((index < max_recon_images).sum())  # a prefix: a loader reads its split in order
    row = torch.full((len(images), COLUMNS), float("nan"), dtype=torch.float64)
    row[:, RECONSTRUCTED] = torch.arange(len(images)) < recon_count
    row[:, MASKED] = "mask" in batch
    if recon_count:
        noise = None if seed is None else example_generators(index[:recon_count].tolist(), SAMPLE_STREAM, seed)
        out = model.explain(images[:recon_count], noise)
        error = (out["recon"].float() - images[:recon_count]) ** 2
        row[:recon_count, MSE] = error.flatten(1).double().mean(1).cpu()
        rest = images[recon_count:]
        masks = torch.cat([out["masks"], model.masks(rest)]) if len(rest) else out["masks"]
    else:
        masks = model.masks(images)
    if "mask" in batch:
        labels = masks.argmax(dim=1)
        true = batch["mask"].to(labels.device)
        if labels.shape != true.shape:
            raise ValueError(f"predicted labels {tuple(labels.shape)} do not match masks {tuple(true.shape)}")
        row[:, OBJECTS] = torch.tensor([float((t.unique() != 0).sum()) for t in true], dtype=torch.float64)
        row[:, ARI] = ari(labels, true).cpu()
        row[:, FG_ARI] = fg_ari(labels, true).cpu()
        objects, inside = true != 0, interior(true)
        row[:, FG_ARI_INTERIOR] = fg_ari_interior(labels, true, inside).cpu()
        row[:, BOUNDARY] = ((objects & ~inside).flatten(1).sum(1) / objects.flatten(1).sum(1)).double().cpu()
        if miou:
            row[:, MIOU] = miou_hungarian(labels, true).cpu()
    return row


@torch.no_grad()
def evaluate(
    model: SlotModel,
    loader: DataLoader,
    device: torch.device,
    desc: str = "evaluate",
    miou: bool = True,
    max_recon_images: int | None = 0,
    seed: int | None = None,
) -> dict[str, float | int | None]:
    """Mean ARI, FG-ARI, mIoU and MSE over `loader` ({"image", "mask"?, "index"} batches); None where
    unavailable; FG-ARI over object interiors and the share of object pixels on boundaries; and under
    "by_objects" ARI, FG-ARI and mIoU per number of objects (`_by_object_count`). Under torch.distributed
    `loader` reads this rank's shard (loaders.own_shard) and the images of every rank are gathered in order,
    so each counts once; every rank gets the same numbers.

    The MSE is over the images whose split index ("index") is below `max_recon_images` (0 = all, None =
    none: no reconstruction); with `seed`, each image's sample comes from its own generator
    (`example_generators`), so it is the same in any batch and on any rank."""
    local = [batch_rows(model, batch, device, miou, max_recon_images, seed) for batch in progress(loader, desc)]
    rows = gather_in_order(torch.cat(local).numpy() if local else np.empty((0, COLUMNS)))
    masked = rows[:, MASKED] == 1
    reconstructed = rows[:, RECONSTRUCTED] == 1
    result: dict[str, float | int | None] = {
        name: mean_valid(torch.from_numpy(rows[masked, column])) if masked.any() and (miou or column != MIOU) else None
        for name, column in SCORE_COLUMNS + BOUNDARY_COLUMNS
    }
    result["mse"] = float(rows[reconstructed, MSE].mean()) if reconstructed.any() else None  # images of one size
    result["images"] = len(rows)
    result["by_objects"] = _by_object_count(torch.from_numpy(rows[masked]), miou)
    return result


def _by_object_count(rows: torch.Tensor, miou: bool) -> list[dict[str, float | int | None]]:
    """The scores of the masked images' `rows` grouped by their number of objects, one entry per count in
    increasing order ([] without masks).

    Where one count scores far below the others, the number of objects is what the model gets wrong
    (e.g. spare slots sharing an object when there are fewer objects than slots)."""
    counts = rows[:, OBJECTS].long()
    return [{"objects": count, "images": int((counts == count).sum()),
             **{name: mean_valid(rows[counts == count, column]) if miou or column != MIOU else None
                for name, column in SCORE_COLUMNS}}
            for count in sorted(set(counts.tolist()))]  # fmt: skip
