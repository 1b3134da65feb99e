"""The measurements of one lent GPU session (benchmarks/device/gpu_session.sh), one stage per call, and
the markdown table of them all.

    gpu_numbers.py resnet --device cuda --size 256 --batch 32 --out OUT    training images/s of ResNet(n=2)
        with torch_bn, own bn and own gn, eager and compiled, and the projected time of the course-scale
        study (30,000 images x 50 epochs x 11 runs) at each rate
    gpu_numbers.py slots --device cuda --preset course --out OUT          Slot Attention (spatial
        broadcast) training steps/s at the preset's size and batch, eager and compiled, and the projected
        time of 100,000 steps
    gpu_numbers.py mathqa RUN... --out OUT                                examples/s of finished
        `col775 mathqa train` runs (their metrics.json)
    gpu_numbers.py table --out OUT                                        OUT/gpu_table.md of every row

Each stage appends its rows to OUT/rows.jsonl as it measures them, so a stage cut short by its timeout
keeps what it measured. ResNet and Slot Attention steps are timed as their `train` commands run them on
CUDA (ResNet: bf16 autocast and channels_last; slots: float32) on random inputs, data loading left out;
warm-up steps (which compile) are not timed, and the device is synchronised around the timed steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks folder
from bench_compile import RESNET_NORMS, resnet_step, slots_step  # noqa: E402

STUDY_IMAGES = 30_000 * 50 * 11  # the course-scale ResNet study: images x epochs x runs
SLOTS_STEPS = 100_000


def timed_rate(step: Callable[[], None], per_step: int, warmup: int, steps: int, device: str) -> float:
    """Examples per second over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return per_step * steps / (time.perf_counter() - began)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def add_row(out: Path, row: dict) -> None:
    """Append one measured row to OUT/rows.jsonl and print it."""
    with (out / "rows.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(" | ".join(str(v) for v in row.values()), flush=True)


def measure_resnet(args: argparse.Namespace) -> None:
    images = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    labels = torch.randint(0, 25, (args.batch,), device=args.device)
    amp = args.device.startswith("cuda")
    for compiled in (False, True):
        for kind in RESNET_NORMS:
            rate = timed_rate(resnet_step(kind, compiled, images, labels, amp), args.batch, args.warmup, args.steps,
                              args.device)
            add_row(args.out, {
                "what": f"ResNet n=2 {kind}, {args.size}px, batch {args.batch}" + (", bf16, channels_last" if amp else ""),
                "mode": "compiled" if compiled else "eager", "rate": f"{rate:,.0f} images/s",
                "projection": f"course study ({STUDY_IMAGES:,} images): {hours(STUDY_IMAGES / rate)}",
            })


def measure_slots(args: argparse.Namespace) -> None:
    from col775.slots.config import load_slots_config

    config = load_slots_config(args.preset, {}, "sbd")
    for compiled in (False, True):
        rate = timed_rate(slots_step(args.preset, compiled, config.batch_size, args.device), 1, args.warmup,
                          args.steps, args.device)
        add_row(args.out, {
            "what": f"Slot Attention, spatial broadcast ({args.preset} preset: {config.image_size}px, batch "
                    f"{config.batch_size}, K = {config.num_slots})",
            "mode": "compiled" if compiled else "eager", "rate": f"{rate:.2f} steps/s",
            "projection": f"{SLOTS_STEPS:,} steps: {hours(SLOTS_STEPS / rate)}",
        })


def measure_mathqa(args: argparse.Namespace) -> None:
    for run in args.runs:
        if not (Path(run) / "metrics.json").is_file():
            print(f"{run} did not finish: no row (its log is beside it)")
            continue
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        config = yaml.safe_load((Path(run) / "config.yaml").read_text())
        data = "course problems" if config["data"] else "generated problems"
        add_row(args.out, {
            "what": f"MathQA {config['model']}, batch {config['batch_size']}, {data}",
            "mode": "amp" if config.get("amp") else "float32",
            "rate": f"{metrics['train_examples_per_second']:,.0f} examples/s",
            "projection": f"one epoch of 29,837 course problems: "
                          f"{29_837 / metrics['train_examples_per_second'] / 60:.1f} min",
        })


def write_table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in (args.out / "rows.jsonl").read_text().splitlines()]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    lines = [f"Measured on {device}, torch {torch.__version__}, training steps (forward, loss, backward, optimiser).",
             "", "| what | mode | rate | projected |", "|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['mode']} | {r['rate']} | {r['projection']} |" for r in rows]
    (args.out / "gpu_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("resnet", "slots", "mathqa", "table"))
    parser.add_argument("runs", nargs="*", help="mathqa: finished run folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--preset", default="course")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"resnet": measure_resnet, "slots": measure_slots, "mathqa": measure_mathqa, "table": write_table}[args.stage](args)


if __name__ == "__main__":
    main()
