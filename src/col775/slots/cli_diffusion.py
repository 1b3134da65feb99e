"""`col775 slots train-vae` and `col775 slots train-diffusion` (assignment 2, part 2).

slots/cli.py lists `add_train_vae` and `add_train_diffusion` in its `_COMMANDS`. Both take every
field of `SlotDiffusionConfig` as a flag over a preset (default `diffusion-demo`, a CPU-sized run;
`--preset diffusion-course` is the assignment's).
"""

from __future__ import annotations

import argparse
import json

from col775.core.config import add_config_args, config_from_args
from col775.slots.slot_diffusion import DIFFUSION_STUDY_FIELDS, SlotDiffusionConfig

DEFAULT_PRESET = "diffusion-demo"


def _train_vae(args: argparse.Namespace) -> int:
    from col775.slots.train_vae import train_vae

    config = config_from_args(SlotDiffusionConfig, args, "slots", default_preset=DEFAULT_PRESET)
    metrics = train_vae(config, args.out, force=args.force)
    print(json.dumps({k: v for k, v in metrics.items() if k != "data"}, indent=2))
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    from col775.slots.train_diffusion import train_diffusion

    config = config_from_args(SlotDiffusionConfig, args, "slots", default_preset=DEFAULT_PRESET)
    metrics = train_diffusion(config, args.out, force=args.force)
    print(json.dumps({k: v for k, v in metrics.items() if k != "data"}, indent=2))
    return 0


def add_train_vae(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-vae",
        help="train the VQ-VAE of the diffusion decoder (writes <out>/vae.pt)",
        description="Train the course's VQ-VAE (--vae-arch course) or a narrow one (--vae-arch small) on the "
                    "scene images: pixel MSE + VQ loss, dead codes restarted. The best weights go to "
                    "<out>/vae.pt, a plain state_dict that `train-diffusion --vae` takes.",
    )
    parser.add_argument("--out", default="runs/slots-vae", help="run folder (the same folder resumes)")
    parser.add_argument("--force", action="store_true", help="train again even if the run finished")
    add_config_args(parser, SlotDiffusionConfig, skip=DIFFUSION_STUDY_FIELDS)
    parser.set_defaults(handler=_train_vae)


def add_train_diffusion(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-diffusion",
        help="train Slot Attention with the latent diffusion decoder, then score it",
        description="Train the slot encoder and the slot-conditioned UNet jointly over a frozen VQ-VAE "
                    "(--vae PATH: the course's vae_checkpoint.pth or a train-vae vae.pt; without it one is "
                    "trained into <out>/vae first), then write ARI/FG-ARI of the attention masks, the MSE "
                    "of sampled reconstructions and the FID of compositional generation to metrics.json.",
    )
    parser.add_argument("--out", default="runs/slots-diffusion", help="run folder (the same folder resumes)")
    parser.add_argument("--force", action="store_true", help="train again even if the run finished")
    add_config_args(parser, SlotDiffusionConfig)
    parser.set_defaults(handler=_train_diffusion)
