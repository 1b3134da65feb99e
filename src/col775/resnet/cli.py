"""`col775 resnet train`, `col775 resnet evaluate` and `col775 resnet study`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from col775.core.config import add_config_args, config_from_args
from col775.core.study import add_study_args, publish_results, study_options
from col775.resnet.config import STUDY_FIELDS, ResnetConfig

# torchrun's own parser takes `--n` for a prefix of its `--nnodes`; this spelling passes through it.
ALIASES = {"n": "--blocks-per-stage"}


def _train(args: argparse.Namespace) -> int:
    from col775.resnet.study import train_or_record_divergence
    from col775.resnet.train import train

    config = config_from_args(ResnetConfig, args, "resnet")
    if args.record_divergence:
        record = train_or_record_divergence(config, args.out, args.force)
        if record is not None:
            print(json.dumps({"diverged": record}, indent=2))
            return 0
    metrics = train(config, args.out, force=args.force and not args.record_divergence)
    print(json.dumps({split: metrics[split] for split in ("train", "val", "test")}, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from col775.resnet.export import export_run

    meta = export_run(args.run, args.file)
    print(json.dumps({k: meta[k] for k in ("source_run", "epoch", "val_accuracy", "test_accuracy")} | {"file": args.file}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from col775.resnet.evaluate import score_run, write_details

    evaluation, classes = score_run(args.run, args.data, args.split, args.device)
    if args.out:
        write_details(evaluation, classes, args.out)
    print(json.dumps(evaluation.summary(), indent=2))
    return 0


def _study(args: argparse.Namespace) -> int:
    from col775.resnet.study import run_study

    config = config_from_args(ResnetConfig, args, "resnet")
    options = study_options(args)
    run_study(config, args.out, options)
    publish_results(args, Path(args.out), leave_out=["*gradcam_*"])  # Grad-CAM grids show the data's photographs
    print(f"plan: {options.plan}" if options.plan else f"report: {args.out}/report.html")
    return 0


def register(commands) -> None:
    resnet = commands.add_parser("resnet", help="ResNet normalisation study (assignment 1, part 1)")
    verbs = resnet.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train and evaluate one ResNet run",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--out", default="runs/resnet", help="run folder (the same folder resumes)")
    train.add_argument("--force", action="store_true", help="train again even if the run finished")
    train.add_argument("--record-divergence", action="store_true",
                       help="as in a study: a loss that becomes NaN or inf is written to OUT/diverged.json and "
                            "the command ends normally (the study reports the run as diverged)")
    add_config_args(train, ResnetConfig, skip=STUDY_FIELDS, aliases=ALIASES)
    train.set_defaults(handler=_train)

    evaluate = verbs.add_parser(
        "evaluate", help="score a trained run's best checkpoint on a folder of class folders",
        description="Score RUN's best checkpoint (eval mode, no augmentation) and print loss, accuracy, micro "
        "and macro F1 and the image count as JSON. DIR/SPLIT/<Class>/<image> is read when DIR/SPLIT exists, "
        "otherwise DIR/<Class>/<image>. Class folders are matched to the run's classes by name; one the run "
        "does not know is an error, missing ones are fine. DIR equal to the run's own data folder uses the "
        "run's own splits (its carved test split included), so --split train reproduces metrics.json.",
    )
    evaluate.add_argument("run", metavar="RUN", help="run folder written by `col775 resnet train`, or a file "
                          "written by `col775 resnet export`")
    evaluate.add_argument("--data", metavar="DIR", required=True, help="folder of split folders, or of class folders")
    evaluate.add_argument("--split", default="test", help="split folder to read when DIR has one (default: test)")
    evaluate.add_argument("--out", help="also write this JSON with per-class accuracy and the confusion "
                          "matrix, and the matrix drawn as <stem>_confusion.png beside it")
    evaluate.add_argument("--device", help="device to run on (default: the run's own setting)")
    evaluate.set_defaults(handler=_evaluate)

    export = verbs.add_parser(
        "export", help="write a finished run's best weights to one small file that evaluate reads",
        description="Write RUN's best checkpoint as FILE: the model's tensors (float32) with the run's settings, "
        "class names and source as plain data, all loadable with torch.load(weights_only=True). "
        "`col775 resnet evaluate FILE --data DIR` then scores it as it scores the run folder.",
    )
    export.add_argument("run", metavar="RUN", help="run folder written by `col775 resnet train`")
    export.add_argument("file", metavar="FILE", help="where the weights go (e.g. results/resnet/best.pt)")
    export.set_defaults(handler=_export)

    study = verbs.add_parser("study", help="every variant, the batch-size study, Grad-CAM and a report")
    study.add_argument("--out", default="runs/resnet-study", help="folder of the study's runs and report")
    add_study_args(study)
    add_config_args(study, ResnetConfig, aliases=ALIASES)
    study.set_defaults(handler=_study)
