"""Our slot-conditioned UNet vs diffusers' UNet2DConditionModel of the same shape: forward + backward time.

Both networks get the same widths, levels, ResBlocks per level, attention levels, heads, GroupNorm
groups and cross-attention width (= slot dim), and the same inputs. Known differences: diffusers
resamples with strided/upsampling convolutions where ours (as the assignment asks) uses
parameter-free pooling/interpolation inside a ResBlock, so the parameter counts differ a little.

    .venv/bin/python benchmarks/bench_unet.py            # demo and course configs
    .venv/bin/python benchmarks/bench_unet.py --quick    # demo config only

Target: ours at most 1.2x diffusers' time. Timings on a shared CPU are noisy; the two models are
timed alternately and the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from col775.slots.diffusion.unet import UNet, UNetConfig, course_unet_config, demo_unet_config


def diffusers_twin(cfg: UNetConfig) -> UNet2DConditionModel:
    """A diffusers UNet with the same layout as `UNet(cfg)`."""
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    attention = [2 ** level in cfg.attention_resolutions for level in range(len(widths))]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    return UNet2DConditionModel(
        sample_size=32, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=tuple(down), up_block_types=tuple(up), mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_groups, cross_attention_dim=cfg.slot_dim,
        # diffusers reads `attention_head_dim` as the number of heads per level.
        attention_head_dim=tuple(w // cfg.head_channels for w in widths),
        transformer_layers_per_block=cfg.transformer_depth,
    )


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def seconds(step: Callable[[], None]) -> float:
    """Wall time of one call, waiting for queued GPU work to finish."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(name: str, cfg: UNetConfig, batch: int, repeats: int, num_slots: int = 11) -> float:
    torch.manual_seed(0)
    ours, theirs = UNet(cfg), diffusers_twin(cfg)
    z = torch.randn(batch, cfg.in_channels, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    slots = torch.randn(batch, num_slots, cfg.slot_dim)

    def step_ours() -> None:
        ours.zero_grad(set_to_none=True)
        ours(z, t, slots).pow(2).mean().backward()

    def step_theirs() -> None:
        theirs.zero_grad(set_to_none=True)
        theirs(z, t, encoder_hidden_states=slots).sample.pow(2).mean().backward()

    step_ours(), step_theirs()  # warm-up
    ours_times, theirs_times = [], []
    for _ in range(repeats):  # alternate so that load from other processes hits both alike
        ours_times.append(seconds(step_ours))
        theirs_times.append(seconds(step_theirs))
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    ratio = ours_s / theirs_s
    print(f"{name}: batch {batch}, 32x32 latent, {num_slots} slots of {cfg.slot_dim}, forward+backward, "
          f"median of {repeats}")
    print(f"  ours      {ours_s * 1000:9.1f} ms   {params(ours):>12,} params")
    print(f"  diffusers {theirs_s * 1000:9.1f} ms   {params(theirs):>12,} params")
    print(f"  ratio ours/diffusers = {ratio:.2f}  (target <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo config only, fewer repeats")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_device(args.device)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench("demo config", demo_unet_config(), args.batch, 3 if args.quick else args.repeats)
    if not args.quick:
        bench("course config", course_unet_config(), args.batch, args.repeats)


if __name__ == "__main__":
    main()
