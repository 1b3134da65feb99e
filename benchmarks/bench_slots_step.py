"""Training steps a second of a slots preset's model in float32 against bf16 autocast (`--bf16`).

One step is what `col775 slots train` does per batch: the model's loss (forward), backward and an Adam
update, on random images of the preset's size and batch. Both modes are built from the same seed and
timed in the same run, interleaved round by round, and each keeps its best round, so load from other
processes touches them alike. bf16 pays only on hardware with bf16 arithmetic (CUDA, or a CPU with
AVX512-BF16 or AMX); elsewhere expect a ratio below 1.

Run: .venv/bin/python benchmarks/bench_slots_step.py [--preset cpu] [--decoder sbd] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from col775.core.training import bf16_autocast
from col775.slots.build import build_model, build_vae
from col775.slots.config import load_slots_config


def training_step(preset: str, decoder: str, bf16: bool, device: torch.device) -> Callable[[], None]:
    """One training step of a fresh model of `preset`'s `decoder` (the diffusion decoder with an untrained VAE
    of its preset's size, frozen as in training), as a callable."""
    config = load_slots_config(preset, {}, decoder)
    torch.manual_seed(0)
    vae = build_vae(config.vae_arch, config.vae_num_codes) if decoder == "diffusion" else None
    model = build_model(config, vae).to(device)
    model.prepare(torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device) * 2 - 1)
    images = torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device) * 2 - 1
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        with bf16_autocast(device, bf16):
            loss = model.loss(images, generator).float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="slots preset (default cpu)")
    parser.add_argument("--decoder", choices=("sbd", "diffusion"), default="sbd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps timed per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = {"float32": training_step(args.preset, args.decoder, False, device),
             "bf16 autocast": training_step(args.preset, args.decoder, True, device)}  # fmt: skip
    for step in modes.values():  # warm-up: first-call allocations and kernel choices
        step(), step()
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(args.rounds):
        for name, step in modes.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - began) / args.steps)
    print(f"preset {args.preset}, decoder {args.decoder}, {args.device}, {args.threads} thread(s), best of "
          f"{args.rounds} rounds of {args.steps} steps")
    for name, seconds in best.items():
        print(f"  {name:14s} {1 / seconds:6.2f} steps/s  {best['float32'] / seconds:.2f}x float32")


if __name__ == "__main__":
    main()
