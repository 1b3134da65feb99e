"""The ``col775 slots ...`` commands.

The top-level CLI calls ``register(subparsers)``. Each sub-command is added by one
``_add_<command>(commands)`` function listed in ``_COMMANDS`` (append yours there); it sets
``handler`` on its parser to a function ``handler(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


_COMMANDS = (_add_make_scenes,)
