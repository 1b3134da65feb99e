"""The Slot Attention study (`col775 slots study`): one flow for either decoder or both.

For each decoder asked for: train one run (resuming, or reusing a finished one) in <out>/<decoder>
and score it (ARI, FG-ARI, mIoU, MSE: `train.train`), draw every slot's mask for a few validation
images, generate as many new scenes as the validation set has by composing training slots
(K-means library), score them with FID against the validation images, and write one report
(report.py). Every decoder is seen only through the `SlotModel` interface. The generation and its
FID are cached with the checkpoint and sampler they were made from: retraining or another sampler
makes them again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from col775.core.plots import image_grid
from col775.core.report import Report
from col775.core.runs import atomic_write_json, read_run
from col775.core.training import pick_device, seed_everything
from col775.slots.config import SlotsConfig, load_slots_config
from col775.slots.fid import fid_folders, inception_path, write_png_folder
from col775.slots.generation import compositional_generation, to_uint8
from col775.slots.loaders import Loaders, make_loaders
from col775.slots.report import DecoderResult, build_report
from col775.slots.scenes import MASK_PALETTE
from col775.slots.slot_model import SlotModel
from col775.slots.train import checkpoint_fingerprint, load_trained, sampler_key, train

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("ari", "fg_ari", "miou", "mse")


def run_study(configs: dict[str, SlotsConfig], out: str | Path, force: bool = False) -> Report:
    """Train (or reuse) the run of each decoder in `configs` ("sbd" and/or "diffusion", each with its
    own config), then masks, compositional generation, FID and one report in `out`."""
    began = time.perf_counter()
    out = Path(out)
    if any(config.fid for config in configs.values()):
        inception_path()  # a missing FID network stops the study before training, not after it
    results: dict[str, DecoderResult] = {}
    summary: dict = {}
    for name, config in configs.items():
        result = study_decoder(config, out, force)
        results[name] = result
        metrics = result.run["metrics"]
        summary |= {f"{name}_{key}": metrics[key] for key in SUMMARY_KEYS}
        summary |= {f"{name}_fid": result.generation["fid"], f"{name}_sampler": metrics["sampler"]}
    summary["wall_seconds"] = time.perf_counter() - began
    report = build_report(results, summary)
    atomic_write_json(out / "summary.json", summary)
    path = report.write(out)
    log.info("report written to %s", path)
    return report


def study_decoder(config: SlotsConfig, out: Path, force: bool) -> DecoderResult:
    """One decoder's part of the study: its run in out/<decoder>, figures and generation."""
    run_dir = out / config.decoder
    metrics = train(config, run_dir, force)
    device = pick_device(config.device)
    model = load_trained(config, run_dir, device)
    loaders = make_loaders(config)
    figures = out / "plots"  # Report.write copies what it uses into out/figures
    slots_png = slot_figure(model, loaders, config, device, figures / f"{config.decoder}_slots.png")
    generation = generate(config, model, loaders, out / "generation" / config.decoder, device, force,
                          checkpoint_fingerprint(run_dir))  # fmt: skip
    run = read_run(run_dir)
    run["metrics"] = metrics  # the numbers of this config's sampler, whatever metrics.json was first scored with
    return DecoderResult(config=config, run=run, generation=generation, slots_png=slots_png)


# ------------------------------------------------------------------------------------ figures


def _grey(mask: np.ndarray) -> np.ndarray:
    """A [H, W] map in [0, 1] as a grey uint8 image [H, W, 3] (0 black, 1 white, no rescaling)."""
    return np.repeat((np.clip(mask, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


@torch.no_grad()
def slot_figure(model: SlotModel, loaders: Loaders, config: SlotsConfig, device: torch.device, path: Path) -> Path:
    """Two rows per validation image (the first `figure_images`): image, reconstruction, every slot's
    mask; then the true segmentation, the predicted one (argmax of the masks), every slot's masked
    reconstruction."""
    dataset = loaders.val.dataset
    samples = [dataset[i] for i in range(min(config.figure_images, len(dataset)))]
    images = torch.stack([s["image"] for s in samples]).to(device)
    seed_everything(config.seed)
    out = model.explain(images, torch.Generator(device=device).manual_seed(config.seed))
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
    config: SlotsConfig, model: SlotModel, loaders: Loaders, folder: Path, device: torch.device, force: bool,
    checkpoint: str,
) -> dict:
    """Compositional generation and its FID against the validation images; cached in `folder` for the
    checkpoint (its fingerprint), the sampler and the generation settings it was made with."""
    key = {
        "checkpoint": checkpoint, "sampler": sampler_key(config), "fid": config.fid,
        "fid_max_images": config.fid_max_images, "fid_method": config.fid_method,
        "library_max_images": config.library_max_images,
    }  # fmt: skip
    result_path = folder / "generation.json"
    if result_path.is_file() and not force:
        cached = json.loads(result_path.read_text())
        if cached.get("key") == key:
            return cached
    n_val = len(loaders.val.dataset)
    count = min(n_val, config.fid_max_images) if config.fid_max_images else n_val
    seed_everything(config.seed)  # the slots' initial noise, so the library is reproducible
    generator = torch.Generator(device=device).manual_seed(config.seed)
    began = time.perf_counter()
    images, library = compositional_generation(
        lambda x: model.encode(x)[0], lambda slots: model.decode(slots, generator), loaders.library, count,
        config.num_slots, device, seed=config.seed, batch_size=config.eval_batch_size,
        max_library_images=config.library_max_images,
    )  # fmt: skip
    generated_dir = write_png_folder(images, folder / "generated")
    grid = image_grid(list(images[:16]), folder / "generated_grid.png", ncols=8,
                      title=f"{model.label}: compositional generation")  # fmt: skip
    result = {
        "key": key, "generated": count, "library_slots": len(library.slots),
        "library_images": len(library.slots) // config.num_slots, "clusters": library.num_clusters,
        "cluster_sizes": library.cluster_sizes(), "grid": str(grid), "fid": None, "fid_reference": n_val,
        "sampler": config.sampler_label() if config.decoder == "diffusion" else None,
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


def study_configs(preset: str | Path | None, overrides: dict, decoders: str) -> dict[str, SlotsConfig]:
    """The config of each decoder `decoders` names ("sbd", "diffusion" or "both"): the preset's shared
    values, its section for that decoder, then `overrides`, which reach every run."""
    names = ("sbd", "diffusion") if decoders == "both" else (decoders,)
    return {name: load_slots_config(preset, overrides, name) for name in names}


def demo(out: Path, force: bool = False) -> Report:
    """Both decoders at CPU size on generated 32x32 scenes, in one report (`col775 demo`)."""
    return run_study(study_configs("demo", {}, "both"), out, force=force)
