"""The ``col775 slots ...`` commands.

The top-level CLI calls ``register(subparsers)``. Each sub-command is added by one
``_add_<command>(commands)`` function listed in ``_COMMANDS`` (append yours there); it sets
``handler`` on its parser to a function ``handler(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from col775.slots.cli_diffusion import add_train_diffusion, add_train_vae
from col775.slots.scenes import write_scene_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``slots`` command and its sub-commands to a top-level ``add_subparsers()`` object."""
    slots = subparsers.add_parser(
        "slots", help="Slot Attention object discovery on CLEVRTex-like scenes (assignment 2)"
    )
    commands = slots.add_subparsers(dest="slots_command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)


def _add_make_scenes(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "make-scenes",
        help="write synthetic CLEVRTex-like scenes with exact masks",
        description="Write images/{train,val}/NNNNNN.png and colour-coded masks/{train,val}/NNNNNN.png "
                    "(background black), the layout `col775 slots train --data DIR` reads.",
    )
    parser.add_argument("--n", type=int, required=True, help="number of scenes in all (train + val)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of scenes for val (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-objects", type=int, default=1)
    parser.add_argument("--max-objects", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering in parallel")
    parser.set_defaults(handler=_run_make_scenes)


def _run_make_scenes(args: argparse.Namespace) -> int:
    if args.n < 1 or args.size < 8:
        raise ValueError(f"need --n >= 1 and --size >= 8, got --n {args.n} --size {args.size}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    n_val = round(args.n * args.val_fraction)
    out = write_scene_folder(
        args.out, n_train=args.n - n_val, n_val=n_val, size=args.size, seed=args.seed,
        min_objects=args.min_objects, max_objects=args.max_objects, workers=args.workers,
    )
    print(f"wrote {args.n - n_val} train and {n_val} val scenes to {out}", file=sys.stderr)
    return 0


def _add_train(commands: argparse._SubParsersAction) -> None:
    from col775.core.config import add_config_args
    from col775.slots.config import STUDY_FIELDS, SlotsConfig

    parser = commands.add_parser(
        "train", help="train and evaluate one Slot Attention run (--decoder sbd)",
        description="Train one run in --out (the same --out resumes it) and write metrics.json with the "
                    "validation ARI, FG-ARI, mIoU and reconstruction MSE. Without --data, scenes are generated.",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/slots", help="run folder (the same folder resumes)")
    parser.add_argument("--force", action="store_true", help="train again even if the run finished")
    add_config_args(parser, SlotsConfig, skip=STUDY_FIELDS)
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from col775.core.config import config_from_args
    from col775.slots.config import SlotsConfig
    from col775.slots.study import decoder_spec

    config = config_from_args(SlotsConfig, args, "slots")
    metrics = decoder_spec(config.decoder).train(config, Path(args.out), args.force)
    print(json.dumps({k: metrics[k] for k in ("ari", "fg_ari", "miou", "mse")}, indent=2))
    return 0


def _add_study(commands: argparse._SubParsersAction) -> None:
    from col775.core.config import add_config_args
    from col775.slots.config import SlotsConfig

    parser = commands.add_parser(
        "study", help="train, masks, compositional generation, FID and a report",
        description="Train (or reuse) the run of --decoder, then draw slot masks, generate scenes from a K-means "
                    "slot library, score them with FID against the validation images, and write report.html.",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/slots-study", help="folder of the study's run and report")
    parser.add_argument("--force", action="store_true", help="train and generate again")
    add_config_args(parser, SlotsConfig)
    parser.set_defaults(handler=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from col775.core.config import config_from_args
    from col775.slots.config import SlotsConfig
    from col775.slots.diffusion_study import run_decoders

    config = config_from_args(SlotsConfig, args, "slots")
    run_decoders(config, Path(args.out), force=args.force)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


_COMMANDS = (_add_make_scenes, _add_train, _add_study, add_train_vae, add_train_diffusion)
