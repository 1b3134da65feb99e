"""Images per second of one ResNet(n=2) SGD training step with each norm, in three CPU modes.

Modes: eager float32 (NCHW memory); channels_last + bf16 autocast (`cpu_bf16`); and that
compiled with torch.compile (`--compile`), the fastest mode on a CPU with bf16 arithmetic
(AVX512-BF16 or AMX). For each mode the step of every norm is compared with the step of `torch_bn`
(PyTorch's own nn.BatchNorm2d) measured in the same run: targets in the compiled mode are at most
1.15x torch_bn's time for bn, in, ln and gn, and at most 1.5x for bin.

Every round times one step of each norm in turn and the best of the rounds is kept, so that load
from other processes touches all of them alike. Compiling takes about a minute per norm and
image size on a laptop CPU, so `--quick` (a smoke run on tiny images) leaves the compiled mode out.
Run: .venv/bin/python benchmarks/bench_resnet_step.py [--quick] [--sizes 64,128] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from col775.resnet.norms import NORM_KINDS
from col775.resnet.resnet import ResNet

MODES = ("eager fp32", "channels_last+bf16", "compiled")
TARGETS = {"bn": 1.15, "in": 1.15, "ln": 1.15, "gn": 1.15, "bin": 1.5}


def train_step(kind: str, mode: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One SGD step of a fresh ResNet(n=2) with norm `kind` in `mode`, as a callable."""
    torch.manual_seed(0)
    model = ResNet(2, 25, norm=kind)
    fast = mode != "eager fp32"
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    # dynamic=False: a second image size in the same process would otherwise be compiled with symbolic
    # sizes (automatic dynamic shapes), whose kernels ran 1.3-1.9x slower than each size compiled alone.
    forward = torch.compile(model, dynamic=False) if mode == "compiled" else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            logits = forward(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step


def best_seconds(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Best time of one step for each entry, over `rounds` rounds that run each once in turn."""
    for step in steps.values():  # warm-up (compiles in the compiled mode)
        step()
        step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32 images, no compiled mode")
    parser.add_argument("--sizes", default="64,128", help="image sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [32] if args.quick else [int(s) for s in args.sizes.split(",")]
    batch, rounds = (4, 2) if args.quick else (args.batch, args.rounds)
    modes = MODES[:2] if args.quick else MODES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {batch}, "
          f"best of {rounds} rounds; ratio = step time / torch_bn's step time in the same mode")
    for size in sizes:
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 25, (batch,))
        for mode in modes:
            steps = {kind: train_step(kind, mode, images, labels) for kind in NORM_KINDS}
            best = best_seconds(steps, rounds)
            for kind in NORM_KINDS:
                ratio = best[kind] / best["torch_bn"]
                target = TARGETS.get(kind) if mode == "compiled" else None
                verdict = "" if target is None else f"  (target <= {target}x: {'ok' if ratio <= target else 'over'})"
                print(f"{size:4d}px  {mode:<19} {kind:<9} {batch / best[kind]:8.1f} images/s  "
                      f"ratio {ratio:5.2f}x{verdict}", flush=True)


if __name__ == "__main__":
    main()
