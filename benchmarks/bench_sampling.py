"""Ancestral sampling with all T = 1000 steps against DDIM with 50: time, and the quality of what each makes.

Both samplers reconstruct the same validation images from their slots with a trained slot-diffusion
model (the best checkpoint of a `col775 slots train --decoder diffusion` run), starting from the same noise.
Quality is the MSE to the images and the clean-fid FID of the reconstructions against the images
themselves (with so few images FID is biased upwards; it compares the two samplers, nothing else).

    .venv/bin/python benchmarks/bench_sampling.py --run runs/slots-diffusion            # 64 images
    .venv/bin/python benchmarks/bench_sampling.py --run runs/slots-diffusion --quick    # 16 images

Expected: DDIM about T/50 = 20x faster (one UNet call a step for both) at a similar MSE and FID.
Timings on a shared CPU are noisy; say which machine ran them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from col775.core.config import from_dict
from col775.core.training import pick_device
from col775.slots.fid import InceptionFeatures, fid_folders, write_png_folder
from col775.slots.generation import to_uint8
from col775.slots.config import SlotsConfig
from col775.slots.loaders import make_loaders
from col775.slots.train import load_trained


def run_config(run: Path) -> SlotsConfig:
    path = run / "config.yaml"
    if not (run / "checkpoints").is_dir() or not path.is_file():
        raise FileNotFoundError(
            f"{run} is not a trained slot-diffusion run; make one with "
            f"`col775 slots train --decoder diffusion --preset demo --out {run}` (a few minutes)"
        )
    return from_dict(SlotsConfig, yaml.safe_load(path.read_text()), str(path))


def timed(step) -> tuple[torch.Tensor, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/slots-diffusion"), help="a diffusion run folder")
    parser.add_argument("--images", type=int, default=64, help="validation images to reconstruct")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="16 images")
    args = parser.parse_args()
    count = 16 if args.quick else args.images
    if not (args.run / "checkpoints").is_dir():
        print(f"skipped: no trained slot-diffusion run at {args.run} "
              f"(make one with `col775 slots train --decoder diffusion --preset demo --out {args.run}`, or pass --run)")
        return

    config = run_config(args.run)
    device = pick_device(config.device)
    model = load_trained(config, args.run, device)
    dataset = make_loaders(config).val.dataset
    count = min(count, len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(count)]).to(device)
    with torch.no_grad():
        slots = model.encode(images)[0]
    timesteps = model.diffusion.num_steps

    def sample(sampler: str, steps: int) -> torch.Tensor:
        model.use_sampler(sampler, steps)
        return model.decode(slots, torch.Generator(device=device).manual_seed(0))

    ddim, ddim_seconds = timed(lambda: sample("ddim", args.ddim_steps))
    ancestral, ancestral_seconds = timed(lambda: sample("ancestral", timesteps))

    extractor = InceptionFeatures(device)
    with tempfile.TemporaryDirectory() as tmp:
        real = write_png_folder(to_uint8(images), Path(tmp) / "real")
        scores = {}
        for name, recon in (("ancestral", ancestral), ("ddim", ddim)):
            folder = write_png_folder(to_uint8(recon), Path(tmp) / name)
            fid = fid_folders(folder, real, device=device, extractor=extractor, method=config.fid_method)
            scores[name] = (fid, float(((recon - images) ** 2).mean()))

    print(f"device: {device}; run: {args.run}; {count} images of {config.image_size}x{config.image_size}; "
          f"UNet base {config.unet_base_channels}")
    print(f"{'sampler':<28} {'UNet calls':>10} {'seconds':>9} {'s/image':>9} {'MSE':>8} {'FID':>8}")
    for name, steps, seconds in (("ancestral (ours, baseline)", timesteps, ancestral_seconds),
                                 (f"DDIM {args.ddim_steps} steps (ours)", args.ddim_steps, ddim_seconds)):
        fid, mse = scores["ancestral" if name.startswith("ancestral") else "ddim"]
        print(f"{name:<28} {steps:>10} {seconds:>9.2f} {seconds / count:>9.4f} {mse:>8.4f} {fid:>8.2f}")
    print(f"speed-up of DDIM over ancestral sampling: {ancestral_seconds / ddim_seconds:.1f}x "
          f"(UNet calls {timesteps / args.ddim_steps:.0f}x fewer)")


if __name__ == "__main__":
    main()
