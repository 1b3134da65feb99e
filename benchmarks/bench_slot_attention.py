"""Speed of our Slot Attention against the `slot-attention` package (lucidrains) at equal sizes.

Two measurements, forward + backward, interleaved repeats (best and median reported; on a
shared machine the best is the steadier number):
  1. the Slot Attention module alone: inputs [B, N, 64], K = 11 slots of size 64, T = 3, MLP 128;
  2. one training step (forward, MSE loss, backward, Adam) of our SlotAutoencoder with the demo
     architecture, once with our module and once with the package's module inside it (the package
     has no autoencoder, so the baseline step is our autoencoder with its Slot Attention inside).
The package's projections carry biases and ours do not (the paper's have none); otherwise the
computation is the same.

Run: .venv/bin/python benchmarks/bench_slot_attention.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from col775.slots.sbd import SlotAutoencoder, demo_config
from col775.slots.slot_attention import SlotAttention

try:
    from slot_attention import SlotAttention as PackageSlotAttention
except ImportError as err:
    raise SystemExit(
        "the baseline needs the `slot-attention` package: .venv/bin/pip install slot-attention"
    ) from err


class PackageAdapter(nn.Module):
    """Gives the package's module our call signature: (inputs, slots_init) -> (slots, attn)."""

    def __init__(self, num_slots: int, dim: int, iters: int, hidden_dim: int) -> None:
        super().__init__()
        self.inner = PackageSlotAttention(num_slots, dim, iters=iters, hidden_dim=hidden_dim)

    def forward(self, inputs: Tensor, slots_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        slots = self.inner(inputs)
        return slots, slots.new_zeros(0)  # the package does not return its attention


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per call of each function, alternating them so load drifts hit all."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def module_step(module: nn.Module, inputs: Tensor) -> Callable[[], None]:
    def step() -> None:
        slots, _ = module(inputs)
        slots.square().mean().backward()

    return step


def autoencoder_step(model: SlotAutoencoder, images: Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)

    def step() -> None:
        loss = model.loss(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def report(title: str, result: dict[str, tuple[float, float]]) -> None:
    (ours, ours_med), (base, base_med) = result["ours"], result["package"]
    print(title)
    print(f"  ours    best {ours * 1e3:9.2f} ms   median {ours_med * 1e3:9.2f} ms")
    print(f"  package best {base * 1e3:9.2f} ms   median {base_med * 1e3:9.2f} ms")
    print(f"  ratio ours/package  best {ours / base:.3f}x   median {ours_med / base_med:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    batch, side, repeats = (8, 16, 10) if args.quick else (32, 32, 20)
    k, dim, iters, hidden = 11, 64, 3, 128
    inputs = torch.randn(batch, side * side, dim, device=device, requires_grad=True)
    ours = SlotAttention(k, dim, dim, iters=iters, hidden_dim=hidden).to(device)
    package = PackageSlotAttention(k, dim, iters=iters, hidden_dim=hidden).to(device)
    result = time_interleaved(
        {
            "ours": module_step(ours, inputs),
            "package": lambda: package(inputs).square().mean().backward(),
        },
        repeats, warmup=2, device=device,
    )
    report(
        f"Slot Attention forward+backward: B={batch}, N={side}x{side}, D=64, K={k}, T={iters} "
        f"on {device}", result,
    )

    cfg = demo_config()
    ae_batch = 8 if args.quick else 16
    images = torch.rand(ae_batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    ours_ae = SlotAutoencoder(cfg).to(device)
    package_ae = SlotAutoencoder(cfg).to(device)
    package_ae.slot_attention = PackageAdapter(
        cfg.num_slots, cfg.slot_dim, cfg.slot_iters, cfg.slot_hidden_dim
    ).to(device)
    result = time_interleaved(
        {
            "ours": autoencoder_step(ours_ae, images),
            "package": autoencoder_step(package_ae, images),
        },
        repeats, warmup=2, device=device,
    )
    report(
        f"Autoencoder training step (demo config {cfg.image_size}x{cfg.image_size}, "
        f"K={cfg.num_slots}, slot size {cfg.slot_dim}), B={ae_batch} on {device}", result,
    )
    print(f"torch threads: {torch.get_num_threads()}; CPU timings are noisy on a shared machine")


if __name__ == "__main__":
    main()
