"""`col775 resnet train` and `col775 resnet study`."""

from __future__ import annotations

import argparse
import json

from col775.core.config import add_config_args, config_from_args
from col775.resnet.config import STUDY_FIELDS, ResnetConfig

# torchrun's own parser takes `--n` for a prefix of its `--nnodes`; this spelling passes through it.
ALIASES = {"n": "--blocks-per-stage"}


def _train(args: argparse.Namespace) -> int:
    from col775.resnet.train import train

    config = config_from_args(ResnetConfig, args, "resnet")
    metrics = train(config, args.out, force=args.force)
    print(json.dumps({split: metrics[split] for split in ("train", "val", "test")}, indent=2))
    return 0


def _study(args: argparse.Namespace) -> int:
    from col775.resnet.study import run_study

    config = config_from_args(ResnetConfig, args, "resnet")
    run_study(config, args.out, force=args.force)
    print(f"report: {args.out}/report.html")
    return 0


def register(commands) -> None:
    resnet = commands.add_parser("resnet", help="ResNet normalisation study (assignment 1, part 1)")
    verbs = resnet.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train and evaluate one ResNet run",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--out", default="runs/resnet", help="run folder (the same folder resumes)")
    train.add_argument("--force", action="store_true", help="train again even if the run finished")
    add_config_args(train, ResnetConfig, skip=STUDY_FIELDS, aliases=ALIASES)
    train.set_defaults(handler=_train)

    study = verbs.add_parser("study", help="every variant, the batch-size study, Grad-CAM and a report")
    study.add_argument("--out", default="runs/resnet-study", help="folder of the study's runs and report")
    study.add_argument("--force", action="store_true", help="train every run again")
    add_config_args(study, ResnetConfig, aliases=ALIASES)
    study.set_defaults(handler=_study)
