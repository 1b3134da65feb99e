"""The Slot Attention study (`col775 slots study`): one flow for either decoder or both, on one or more
scene styles, with seeds.

Runs, each a run folder under the study's output folder (core/study.py trains them in this process,
side by side in worker processes, or writes them as a plan of `col775 slots` lines):
    <decoder>            each decoder asked for ("sbd", "diffusion"), trained and scored (ARI, FG-ARI,
                         mIoU, MSE: `train.train`); `<style>-<decoder>` for each of several
                         generated scene styles (`scene_styles`)
    vae, <style>-vae     the frozen VQ-VAE the diffusion runs of a style read, when no --vae is given:
                         trained first (one per style, shared by every seed), then the diffusion runs
With several seeds each decoder run becomes `<run>/seed-<k>` (core/seeds.py). Then, for the first
seed of each run: every slot's mask for a few validation images, as many new scenes as the
validation set has, composed from training slots (K-means library) and scored with FID against the
validation images; and one report (report.py) with a results table per style and, over seeds,
mean ± std, 95% intervals and whether SBD and diffusion differ beyond seed noise. Every decoder is
seen only through the `SlotModel` interface. The generation and its FID are cached with the
checkpoint and sampler they were made from: retraining or another sampler makes them again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from col775.core.plots import image_grid
from col775.core.report import Report
from col775.core.runs import atomic_write_json, read_run
from col775.core.seeds import SeedNoise, by_variant, first_seed, seeded
from col775.core.study import StudyOptions, Trainer, finished_runs, missing_notice, train_runs, write_plan
from col775.core.training import pick_device, seed_everything
from col775.slots.config import SlotsConfig, load_slots_config
from col775.slots.fid import fid_folders, inception_path, write_png_folder
from col775.slots.generation import compositional_generation, to_uint8
from col775.slots.loaders import Loaders, make_loaders
from col775.slots.report import DecoderResult, build_report
from col775.slots.scenes import MASK_PALETTE
from col775.slots.slot_model import SlotModel
from col775.slots.train import checkpoint_fingerprint, evaluate_run, load_trained, sampler_key, train
from col775.slots.train_vae import VAE_FILE, train_vae

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("ari", "fg_ari", "miou", "mse", "fg_ari_interior", "boundary_share")
SEED_SCORES = (("fg_ari", "FG-ARI (%)"), ("ari", "ARI (%)"), ("miou", "mIoU (%)"))
TRAINER = Trainer("slots", train)
VAE_TRAINER = Trainer("slots", train_vae, command="train-vae")


@dataclass(frozen=True)
class StudyRuns:
    """What the study trains, by run folder name (before seeds): the VAEs first, then the decoder runs."""

    vaes: dict[str, SlotsConfig]
    runs: dict[str, SlotsConfig]


def scene_styles(config: SlotsConfig) -> list[str]:
    """The generated scene styles a study trains on: `scene_styles`, or `scene_style` alone."""
    return list(config.scene_styles) or [config.scene_style]


def study_runs(configs: dict[str, SlotsConfig], out: Path, vae_seed: int | None = None) -> StudyRuns:
    """Each decoder of `configs` on each scene style; a diffusion run without `vae` reads the VAE run of
    its style (trained with `vae_seed`, default its config's seed) from the study folder."""
    styles = scene_styles(next(iter(configs.values())))
    vaes, runs = {}, {}
    for style in styles:
        prefix = f"{style}-" if len(styles) > 1 else ""
        for decoder, config in configs.items():
            config = dataclasses.replace(config, scene_style=style, scene_styles=[])
            if decoder == "diffusion" and not config.vae:
                vaes[f"{prefix}vae"] = dataclasses.replace(config, seed=config.seed if vae_seed is None else vae_seed)
                config = dataclasses.replace(config, vae=str(out.resolve() / f"{prefix}vae" / VAE_FILE))
            runs[f"{prefix}{decoder}"] = config
    return StudyRuns(vaes, runs)


def run_study(configs: dict[str, SlotsConfig], out: str | Path, options: StudyOptions = StudyOptions()) -> Report | None:
    """Train (or reuse) the runs of each decoder in `configs` ("sbd" and/or "diffusion", each with its
    own config), then masks, compositional generation, FID, summary.json and one report in `out`.

    `options` picks seeds, side-by-side processes, a plan of commands instead of training (returns None)
    or a report of the runs that have finished, naming the missing ones.
    """
    began = time.perf_counter()
    out = Path(out)
    planned = study_runs(configs, out, options.seeds[0] if options.seeds else None)
    runs = seeded(planned.runs, options.seeds)
    if options.plan is not None:
        write_plan(runs, out, TRAINER, options.plan, options.force,
                   needs=(planned.vaes, VAE_TRAINER) if planned.vaes else None)  # fmt: skip
        return None
    if any(config.fid for config in runs.values()):
        inception_path()  # a missing FID network stops the study before training, not after it
    failures = {} if options.report_only else train_in_order(planned.vaes, runs, out, options)
    results = finished_runs(runs, out)
    if not results:
        failed = "; ".join(f"{name} {why}" for name, why in failures.items())
        raise FileNotFoundError(f"no run of the study in {out} has finished"
                                + (f"; failed: {failed}" if failed else "; train them first (without --report-only)"))
    missing = [name for name in planned.vaes | runs if not (out / name / "metrics.json").is_file()]
    scores = {name: evaluate_run(runs[name], out / name) for name in results}
    shown = {key: study_decoder(runs[name], out, name, key, set(planned.vaes), options.force)
             for key, (name, _) in first_seed(results).items()}
    summary = summarise(shown, scores, scene_styles(next(iter(configs.values()))))
    summary["wall_seconds"] = time.perf_counter() - began
    report = build_report(shown, summary, missing_notice(missing, failures), seed_noise(shown, scores))
    atomic_write_json(out / "summary.json", summary)
    path = report.write(out)
    log.info("report written to %s", path)
    return report


def train_in_order(vaes: dict[str, SlotsConfig], runs: dict[str, SlotsConfig], out: Path,
                   options: StudyOptions) -> dict[str, str]:
    """The VAEs, then the decoder runs; returns {run: why it failed} (a diffusion run whose VAE failed
    is not started)."""
    failures = train_runs(vaes, out, VAE_TRAINER, options)
    blocked = {name: f"its VAE run {Path(config.vae).parent.name} failed" for name, config in runs.items()
               if config.vae and Path(config.vae).parent.name in failures}
    return failures | blocked | train_runs({n: c for n, c in runs.items() if n not in blocked}, out, TRAINER, options)


def study_decoder(config: SlotsConfig, out: Path, name: str, key: str, vae_runs: set[str], force: bool) -> DecoderResult:
    """One finished run's part of the report: its scores, figures and generation (named `key`, the run's
    name without its seed)."""
    run_dir = out / name
    device = pick_device(config.device)
    model = load_trained(config, run_dir, device)
    loaders = make_loaders(config)
    figures = out / "plots"  # Report.write copies what it uses into out/figures
    slots_png = slot_figure(model, loaders, config, device, figures / f"{key}_slots.png")
    generation = generate(config, model, loaders, out / "generation" / key, device, force,
                          checkpoint_fingerprint(run_dir))  # fmt: skip
    run = read_run(run_dir)
    scores = evaluate_run(config, run_dir)  # the numbers of this config's sampler
    by_objects = scores.pop("by_objects")
    run["metrics"] |= scores
    vae = Path(config.vae).parent if config.vae else None
    return DecoderResult(config=config, run=run, generation=generation, slots_png=slots_png, name=key,
                         vae_run=read_run(vae) if vae is not None and vae.name in vae_runs else None,
                         by_objects=by_objects)


def summarise(shown: dict[str, DecoderResult], scores: dict[str, dict], styles: list[str]) -> dict:
    """summary.json: `<decoder>_<score>` for the first style, `<style>_<decoder>_<score>` for the others;
    each score the mean over seeds (with `..._std` where there are several), FID and sampler of the first."""
    summary: dict = {}
    for key, group in by_variant(scores).items():
        result = shown[key]
        style = result.config.scene_style
        prefix = ("" if style == styles[0] else f"{style}_") + result.config.decoder
        for score in SUMMARY_KEYS:
            values = [run[score] for run in group.values()]
            summary[f"{prefix}_{score}"] = None if None in values else float(np.mean(values))
            if len(values) > 1:
                summary[f"{prefix}_{score}_std"] = None if None in values else float(np.std(values, ddof=1))
        summary |= {f"{prefix}_fid": result.generation["fid"], f"{prefix}_sampler": result.run["metrics"]["sampler"],
                    f"{prefix}_seeds": len(group)}
    return summary


def seed_noise(shown: dict[str, DecoderResult], scores: dict[str, dict]) -> SeedNoise | None:
    """FG-ARI, ARI and mIoU (%) of every run over its seeds and, per style, SBD against diffusion; None when
    no run has more than one seed (or the data has no masks)."""
    groups = by_variant(scores)
    if all(len(group) < 2 for group in groups.values()):
        return None
    labels = {key: shown[key].label for key in groups}
    table = {labels[key]: {label: [100 * run[score] for run in group.values()] for score, label in SEED_SCORES
                           if all(run[score] is not None for run in group.values())}
             for key, group in groups.items()}
    comparisons = []
    for key, result in shown.items():
        if result.config.decoder == "sbd" and (other := key.replace("sbd", "diffusion")) in shown:
            comparisons += [("spatial broadcast vs latent diffusion", labels[key], labels[other], label)
                            for _, label in SEED_SCORES[:2]]
    return SeedNoise(table, comparisons)


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
    return run_study(study_configs("demo", {}, "both"), out, StudyOptions(force=force))
