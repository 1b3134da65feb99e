"""Training images per second eager against `--compile` (torch.compile), for ResNet and Slot Attention.

Each model's training step (forward, loss, backward, optimiser step) is timed eager and compiled
the way its `train --compile` compiles it, both in float32 with the default memory format and
measured in the same run: ResNet(n=2) with torch_bn, our bn and our gn (`torch.compile(model)`),
and the spatial-broadcast Slot Attention model of a slots preset (the slot encoder and the decoder
compiled in place, `build.compile_trainable`). Compiling takes from seconds to minutes per model on
a CPU (a C++ compiler is needed), and is left out of the timing: the warm-up steps compile, then
every round times one step of each entry in turn and the best round is kept, so load from other
processes touches them alike. `--quick`: 32x32 ResNet images, batch 8, 3 rounds.
Run: .venv/bin/python benchmarks/bench_compile.py [--quick] [--preset demo] [--threads 1]
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F

from bench_resnet_step import best_seconds
from col775.resnet.resnet import ResNet
from col775.slots.build import build_model, compile_trainable
from col775.slots.config import load_slots_config

RESNET_NORMS = ("torch_bn", "bn", "gn")


def resnet_step(kind: str, compiled: bool, images: torch.Tensor, labels: torch.Tensor,
                amp: bool = False) -> Callable[[], None]:
    """One SGD step of a fresh ResNet(n=2) with norm `kind`, eager or compiled, on the images' device, as a
    callable; `amp`: bf16 autocast and channels_last memory, as `resnet train` does on CUDA."""
    torch.manual_seed(0)
    model = ResNet(2, 25, norm=kind).to(images.device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step


def slots_step(preset: str, compiled: bool, batch: int, device: str = "cpu") -> Callable[[], None]:
    """One Adam step of the preset's spatial-broadcast model, eager or compiled, as a callable."""
    config = load_slots_config(preset, {}, "sbd")
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if compiled:
        compile_trainable(model)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
    images = torch.rand(batch, 3, config.image_size, config.image_size, device=device) * 2 - 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(images).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small ResNet images, fewer rounds")
    parser.add_argument("--size", type=int, default=64, help="ResNet image side (default 64)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--preset", default="demo", help="slots preset of the SBD model (default demo)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size, batch, rounds = (32, 8, 3) if args.quick else (args.size, args.batch, args.rounds)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 25, (batch,))
    steps = {}
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        steps |= {(f"resnet n=2 {kind}, {size}px", mode): resnet_step(kind, compiled, images, labels)
                  for kind in RESNET_NORMS}
        config = load_slots_config(args.preset, {}, "sbd")
        steps[(f"slots sbd ({args.preset}), {config.image_size}px", mode)] = slots_step(args.preset, compiled, batch)
    best = best_seconds(steps, rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {batch}, best of {rounds} rounds, "
          "float32; ratio = compiled images/s / eager images/s")
    print(f"{'model':<34} {'eager img/s':>12} {'compiled img/s':>15} {'ratio':>7}")
    for model in dict.fromkeys(name for name, _ in steps):
        eager, compiled = batch / best[(model, "eager")], batch / best[(model, "compiled")]
        print(f"{model:<34} {eager:12.1f} {compiled:15.1f} {compiled / eager:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
