"""Grad-CAM maps of a trained ResNet with the `grad-cam` package (assignment 1, part 1, section 2.7).

For each chosen class: up to `per_kind` validation images the model classifies correctly and up to
`per_kind` it gets wrong, each with the map for the TRUE class computed at the 2n layers of the 64x64
stage. The package computes one map per target layer and takes their mean, which is the aggregation
the assignment asks for; the mean map is laid over the image.

The classes are named as the assignment writes them ("Copper-smith Barbet") and matched to the data's
class folders ("Coppersmith-Barbet") ignoring case, spaces and hyphens.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from col775.core.plots import image_grid
from col775.resnet.data import denormalize, normalize
from col775.resnet.resnet import ResNet, gradcam_target_layers

KINDS = ("correct", "wrong")


@dataclass
class ClassMaps:
    """One class's grid and what it shows: per kind, the validation rows and their true-class maps."""

    name: str
    grid: Path
    rows: dict[str, list[int]]
    maps: dict[str, list[np.ndarray]]  # HxW in [0, 1], one per row

    @property
    def correct(self) -> int:
        return len(self.rows["correct"])

    @property
    def wrong(self) -> int:
        return len(self.rows["wrong"])

    @property
    def focus(self) -> dict[str, float]:
        """Per kind that has images: the mean share of a map's mass in its top 10% of pixels."""
        return {kind: float(np.mean([map_focus(m) for m in maps])) for kind, maps in self.maps.items() if maps}


def map_focus(heat: np.ndarray) -> float:
    """Share of a map's mass in its brightest 10% of pixels: 0.1 for a flat map, 1 for a point."""
    values = np.sort(heat.ravel())[::-1]
    total = values.sum()
    return float(values[: max(len(values) // 10, 1)].sum() / total) if total > 0 else 0.0


def _key(name: str) -> str:
    return re.sub(r"[\s-]+", "", name).lower()


def match_classes(names: Sequence[str], classes: Sequence[str], where: Path) -> list[str]:
    """The class folder each name stands for: the folder of that exact name, else the one equal to it
    ignoring case, spaces and hyphens.

    Raises ValueError naming the closest folders for a name that matches none, so that a misspelt
    class stops the study before it trains rather than silently leaving out its maps.
    """
    folders = {_key(c): c for c in classes}
    matched = []
    for name in names:
        folder = name if name in classes else folders.get(_key(name))
        if folder is None:
            close = [folders[k] for k in difflib.get_close_matches(_key(name), folders, n=3, cutoff=0.0)]
            raise ValueError(
                f"Grad-CAM class {name!r} matches no class folder in {where} (closest: {', '.join(close)}); "
                "name existing folders with --gradcam-classes"
            )
        matched.append(folder)
    return matched


def _pick(labels: np.ndarray, predictions: np.ndarray, class_id: int, per_kind: int) -> tuple[list[int], list[int]]:
    rows = np.flatnonzero(labels == class_id)
    correct = [int(r) for r in rows if predictions[r] == class_id][:per_kind]
    wrong = [int(r) for r in rows if predictions[r] != class_id][:per_kind]
    return correct, wrong


def gradcam_grids(
    model: ResNet,
    dataset,
    predictions: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    chosen: list[str],
    per_kind: int,
    out_dir: Path,
    device: torch.device,
) -> list[ClassMaps]:
    """Write one grid per chosen class folder (first row correct, second row wrong); return what each shows.

    `dataset[i]` must return the un-augmented, normalised image of validation row i, in the same order
    as `predictions` and `labels`.
    """
    model.eval()
    results = []
    with GradCAM(model=model, target_layers=gradcam_target_layers(model)) as cam:
        for name in chosen:
            class_id = classes.index(name)
            rows = dict(zip(KINDS, _pick(labels, predictions, class_id, per_kind)))
            width = max(len(r) for r in rows.values())
            if width == 0:
                continue
            overlays, titles, maps = [], [], {}
            for kind in KINDS:
                maps[kind] = []
                # one row per kind, padded with blank cells so correct and wrong never share a row
                for row in rows[kind]:
                    image, _ = dataset[row]
                    image = image if image.is_floating_point() else normalize(image)  # uint8 loaders
                    batch = image.unsqueeze(0).to(device)
                    heat = cam(input_tensor=batch, targets=[ClassifierOutputTarget(class_id)])[0]
                    maps[kind].append(heat)
                    rgb = denormalize(image.unsqueeze(0))[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
                    overlays.append(show_cam_on_image(rgb.astype(np.float32), heat, use_rgb=True))
                    titles.append(f"{kind}: predicted\n{classes[predictions[row]]}")
                overlays += [None] * (width - len(rows[kind]))
                titles += [""] * (width - len(rows[kind]))
            correct, wrong = len(rows["correct"]), len(rows["wrong"])
            grid = image_grid(
                overlays, out_dir / f"gradcam_{name}.png", titles=titles, ncols=width,
                title=f"{name}: {correct} correct, {wrong} wrong (map for the true class)", cell_inches=2.0,
            )
            results.append(ClassMaps(name, grid, rows, maps))
    return results
