"""The ``col775 slots ...`` commands.

The top-level CLI calls ``register(subparsers)``. Each sub-command is added by one
``_add_<command>(commands)`` function listed in ``_COMMANDS`` (append yours there); it sets
``handler`` on its parser to a function ``handler(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from col775.slots.scenes import SCENE_STYLES, write_scene_folder


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
    parser.add_argument("--scene-style", choices=SCENE_STYLES, default="textured",
                        help="textured (CLEVRTex-like, the default) or simple (solid colours, plain background)")
    parser.set_defaults(handler=_run_make_scenes)


def _run_make_scenes(args: argparse.Namespace) -> int:
    if args.n < 1 or args.size < 8:
        raise ValueError(f"need --n >= 1 and --size >= 8, got --n {args.n} --size {args.size}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    n_val = round(args.n * args.val_fraction)
    out = write_scene_folder(
        args.out, n_train=args.n - n_val, n_val=n_val, size=args.size, seed=args.seed,
        min_objects=args.min_objects, max_objects=args.max_objects, workers=args.workers, style=args.scene_style,
    )
    print(f"wrote {args.n - n_val} train and {n_val} val scenes to {out}", file=sys.stderr)
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """The config fields given on the command line; with --data and no --image-size, the data's image size."""
    from col775.slots.config import SlotsConfig
    from col775.slots.loaders import data_image_size

    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SlotsConfig)}
    if overrides["data"] and overrides["image_size"] is None:
        overrides["image_size"] = data_image_size(Path(overrides["data"]).expanduser())
    return overrides


def _add_command(commands: argparse._SubParsersAction, name: str, out: str, skip: tuple[str, ...], help: str,
                 description: str, study: bool = False, **defaults) -> argparse.ArgumentParser:
    """A sub-command taking every config field but `skip` as a flag, with --out and --force (and, for a
    `study`, the flags every study shares)."""
    from col775.core.config import add_config_args
    from col775.core.study import add_study_args
    from col775.slots.config import SlotsConfig

    parser = commands.add_parser(name, help=help, description=description)
    add_config_args(parser, SlotsConfig, skip=skip)
    parser.add_argument("--out", default=out, help=f"{'study' if study else 'run'} folder (the same folder resumes; "
                                                   f"default {out})")
    if study:
        add_study_args(parser)
    else:
        parser.add_argument("--force", action="store_true", help="train again even if the run finished")
    parser.set_defaults(**defaults)
    return parser


def _add_train(commands: argparse._SubParsersAction) -> None:
    from col775.slots.config import EVAL_FIELDS, STUDY_FIELDS

    study_only = tuple(f for f in EVAL_FIELDS if f not in ("sampler", "sampler_steps", "recon_max_images"))
    study_only += STUDY_FIELDS
    _add_command(
        commands, "train", "runs/slots", study_only, help="train and evaluate one Slot Attention run (--decoder sbd|diffusion)",
        description="Train one run in --out (the same --out resumes it) and write metrics.json with the validation "
                    "ARI, FG-ARI, mIoU and reconstruction MSE. Without --data, scenes are generated. The diffusion "
                    "decoder uses --vae PATH (the course's vae_checkpoint.pth or a train-vae vae.pt) or first "
                    "trains a VQ-VAE into <out>/vae. Evaluating a finished run with another --sampler does not "
                    "train it again.",
        handler=_run_train, default_preset=None,
    )  # fmt: skip
    _add_command(
        commands, "train-diffusion", "runs/slots-diffusion", study_only + ("decoder",),
        help="`train --decoder diffusion` (default preset demo)",
        description="The same as `col775 slots train --decoder diffusion`, with the demo preset by default.",
        handler=_run_train, default_preset="demo", decoder="diffusion",
    )  # fmt: skip


def _run_train(args: argparse.Namespace) -> int:
    from col775.slots.config import load_slots_config
    from col775.slots.train import train

    config = load_slots_config(args.preset or args.default_preset, _overrides(args))
    metrics = train(config, Path(args.out), args.force)
    print(json.dumps({k: metrics[k] for k in ("ari", "fg_ari", "miou", "mse", "sampler")}, indent=2))
    return 0


def _add_train_vae(commands: argparse._SubParsersAction) -> None:
    from col775.slots.config import DATA_FIELDS, VAE_FIELDS, SlotsConfig

    kept = DATA_FIELDS + VAE_FIELDS + ("eval_batch_size",)
    _add_command(
        commands, "train-vae", "runs/slots-vae", tuple(f.name for f in dataclasses.fields(SlotsConfig) if f.name not in kept),
        help="train the VQ-VAE of the diffusion decoder (writes <out>/vae.pt)",
        description="Train the course's VQ-VAE (--vae-arch course) or a narrow one (--vae-arch small|tiny) on the "
                    "scene images: pixel MSE + VQ loss, dead codes restarted. The best weights go to <out>/vae.pt, "
                    "a plain state_dict that `train --decoder diffusion --vae` takes.",
        handler=_run_train_vae,
    )  # fmt: skip


def _run_train_vae(args: argparse.Namespace) -> int:
    from col775.slots.config import load_slots_config
    from col775.slots.train_vae import train_vae

    config = load_slots_config(args.preset or "demo", _overrides(args), "diffusion")
    metrics = train_vae(config, args.out, force=args.force)
    print(json.dumps({k: v for k, v in metrics.items() if k != "data"}, indent=2))
    return 0


def _add_study(commands: argparse._SubParsersAction) -> None:
    parser = _add_command(
        commands, "study", "runs/slots-study", ("decoder",), help="train, masks, compositional generation, FID and a report",
        description="Train (or reuse) the run of each --decoder (sbd, diffusion or both) on each of --scene-styles "
                    "(generated scenes; default the one --scene-style), once per --seeds seed; without --vae, a VQ-VAE "
                    "per style is trained first for the diffusion runs. Then draw slot masks, generate scenes from a "
                    "K-means slot library, score them with FID against the validation images, and write one "
                    "report.html and summary.json. Every config flag reaches every run it trains.",
        handler=_run_study, study=True,
    )  # fmt: skip
    parser.add_argument("--decoder", dest="decoders", choices=("sbd", "diffusion", "both"), default="sbd",
                        help="which decoder(s) to train and report (default sbd)")  # fmt: skip


def _run_study(args: argparse.Namespace) -> int:
    from col775.core.study import publish_results, study_options
    from col775.core.training import single_process
    from col775.slots.study import run_study, study_configs

    single_process("col775 slots study", "launch `col775 slots train` under torchrun instead (a study's --plan "
                                         "lists its runs' train commands), then build the report with --report-only")
    options = study_options(args)
    run_study(study_configs(args.preset, _overrides(args), args.decoders), Path(args.out), options)
    publish_results(args, Path(args.out))
    if options.plan is not None:
        print(f"plan: {options.plan}")
        return 0
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


_COMMANDS = (_add_make_scenes, _add_train, _add_study, _add_train_vae)
