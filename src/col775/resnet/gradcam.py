"""Grad-CAM maps of a trained ResNet with the `grad-cam` package (assignment 1, part 1, section 2.7).

For each chosen class: up to `per_kind` validation images the model classifies correctly and up to
`per_kind` it gets wrong, each with the map for the TRUE class computed at the 2n layers of the 64x64
stage. The package computes one map per target layer and takes their mean, which is the aggregation
the assignment asks for; the mean map is laid over the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from col775.core.plots import image_grid
from col775.resnet.data import denormalize, normalize
from col775.resnet.resnet import ResNet, gradcam_target_layers


@dataclass
class ClassMaps:
    """One class's grid and how many images of each kind it could show."""

    name: str
    correct: int
    wrong: int
    grid: Path
    focus: dict[str, float]  # per kind: mean share of the map's mass in its top 10% of pixels


def focus(heat: np.ndarray) -> float:
    """Share of a map's mass in its brightest 10% of pixels: 0.1 for a flat map, 1 for a point."""
    values = np.sort(heat.ravel())[::-1]
    total = values.sum()
    return float(values[: max(len(values) // 10, 1)].sum() / total) if total > 0 else 0.0


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
    """Write one grid per chosen class (first row correct, second row wrong) and return what each holds.

    `dataset[i]` must return the un-augmented, normalised image of validation row i, in the same order
    as `predictions` and `labels`.
    """
    missing = [name for name in chosen if name not in classes]
    if missing:
        raise ValueError(f"Grad-CAM classes {missing} are not in the data; its classes are {classes}")
    model.eval()
    results = []
    with GradCAM(model=model, target_layers=gradcam_target_layers(model)) as cam:
        for name in chosen:
            class_id = classes.index(name)
            correct, wrong = _pick(labels, predictions, class_id, per_kind)
            width = max(len(correct), len(wrong), 1)
            overlays, titles, focus_by_kind = [], [], {}
            for kind, rows in (("correct", correct), ("wrong", wrong)):
                shares = []
                # one row per kind, padded with blank cells so correct and wrong never share a row
                for row in rows:
                    image, _ = dataset[row]
                    image = image if image.is_floating_point() else normalize(image)  # uint8 loaders
                    batch = image.unsqueeze(0).to(device)
                    heat = cam(input_tensor=batch, targets=[ClassifierOutputTarget(class_id)])[0]
                    shares.append(focus(heat))
                    rgb = denormalize(image.unsqueeze(0))[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
                    overlays.append(show_cam_on_image(rgb.astype(np.float32), heat, use_rgb=True))
                    titles.append(f"{kind}: predicted\n{classes[predictions[row]]}")
                if shares:
                    focus_by_kind[kind] = float(np.mean(shares))
                overlays += [None] * (width - len(rows))
                titles += [""] * (width - len(rows))
            if not correct and not wrong:
                continue
            grid = image_grid(
                overlays, out_dir / f"gradcam_{name}.png", titles=titles, ncols=width,
                title=f"{name}: {len(correct)} correct, {len(wrong)} wrong (map for the true class)", cell_inches=2.0,
            )
            results.append(ClassMaps(name, len(correct), len(wrong), grid, focus_by_kind))
    return results
