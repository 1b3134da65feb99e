"""The ``col775 mathqa ...`` commands.

The top-level CLI calls ``register(subparsers)``. Each command is added by one
``_add_<command>(commands)`` function listed in ``_COMMANDS``; it sets ``handler`` on its
parser to a ``handler(args) -> int`` (the exit code). Bad input ends with
argparse's usual ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from functools import partial
from pathlib import Path

from col775.core.config import add_config_args, config_from_args
from col775.core.study import add_study_args, publish_results, study_options
from col775.mathqa import data
from col775.mathqa.models import KINDS
from col775.mathqa.score import SubmissionError, load_submission, score_records, write_verdicts
from col775.mathqa.train import MathqaConfig, data_dir, load_trained, predict, run_config, train_model


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mathqa`` command and its sub-commands to a top-level ``add_subparsers()`` object."""
    mathqa = subparsers.add_parser("mathqa", help="word problems to MathQA programs (assignment 1, part 2)")
    commands = mathqa.add_subparsers(dest="mathqa_command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)


def _add_score(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "score",
        help="score a submission file the course's way",
        description="Print {n, execution_accuracy, exact_match, token_accuracy} (percentages) as one "
                    "JSON object for a file of MathQA records with an added 'predicted' program. "
                    "The file itself is never written to.",
    )
    parser.add_argument("file", type=Path, help="JSON list of {Problem, linear_formula, answer, predicted}")
    parser.add_argument("--out", type=Path, help="also write the per-record verdicts here as JSON")
    parser.set_defaults(handler=partial(_run_score, parser=parser))


def _run_score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.out is not None and args.out.resolve() == args.file.resolve():
        parser.error(f"--out {args.out} is the submission file itself; choose another path")
    try:
        records = load_submission(args.file)
    except SubmissionError as error:
        parser.error(str(error))
    summary, verdicts = score_records(records)
    if args.out is not None:
        write_verdicts(verdicts, args.out)
    print(json.dumps(summary))
    return 0


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and one flag per MathqaConfig field; ``--model`` with the four kinds as choices."""
    parser.add_argument("--model", choices=KINDS, default=None,
                        help="model kind (overrides the preset): GloVe BiLSTM-LSTM, the same with attention, "
                             "frozen or fine-tuned BERT encoder with an attention LSTM decoder")
    add_config_args(parser, MathqaConfig, skip=("model",))


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train and evaluate one seq2seq model",
        description="Train one model (resuming its run folder if it stopped), decode dev and test with beam "
                    "search, write OUT/metrics.json and the predictions in the course's submission format "
                    "(OUT/predictions/<split>.json), and print the scores. Without --data it runs on "
                    "generated problems.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="runs/mathqa", help="run folder (the same folder resumes)")
    parser.add_argument("--force", action="store_true", help="train again even if the run finished")
    _add_config_flags(parser)
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    config = config_from_args(MathqaConfig, args, "mathqa", sections=KINDS, section_field="model")
    metrics = train_model(config, args.out, force=args.force)
    print(json.dumps({split: metrics[split] for split in ("dev", "test") if split in metrics}, indent=2))
    return 0


def _add_study(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "study",
        help="the four models, teacher forcing, beam size, grammar decoding, and a report",
        description="Every run of assignment 1 part 2.3 (each a resumable run folder under OUT), the "
                    "beam-size and grammar-constrained decodings, and OUT/report.md + OUT/report.html. "
                    "A preset's sections lstm:, lstm_attn:, bert_frozen: and bert_finetune: set the runs of "
                    "that model; the flags set every run's settings; --model is chosen by the study.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="runs/mathqa-study", help="folder of the study's runs and report")
    add_study_args(parser)
    add_config_args(parser, MathqaConfig, skip=("model",))
    parser.set_defaults(handler=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from col775.mathqa.study import run_study, study_settings

    config, sections = study_settings(args.preset, {f.name: getattr(args, f.name, None) for f in fields(MathqaConfig)})
    options = study_options(args)
    run_study(config, args.out, options, sections)
    publish_results(args, Path(args.out))
    print(f"plan: {options.plan}" if options.plan else f"report: {Path(args.out) / 'report.html'} and "
                                                        f"{Path(args.out) / 'report.md'}")
    return 0


def _add_decode(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "decode",
        help="decode a split of a trained run, or any file of problems, with another beam size or grammar setting",
        description="Decode with a trained run's best checkpoint and its own vocabularies, and print the scores "
                    "as JSON (percentages; 'executable' is the share of predictions that run at all). Either "
                    "SPLIT of the run's data, written to RUN/predictions/<split>_beam<k>_<grammar|free>.json "
                    "(scores cached in RUN/decodings.json), or --file: any JSON list of problems in the course's "
                    "format (a test set that arrived after training), written to --out. Both in the course's "
                    "submission format. Beam size and grammar default to the run's own.",
    )
    parser.add_argument("run", type=Path, help="a run folder written by `col775 mathqa train`")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", choices=data.SPLITS, default="dev", help="a split of the run's data")
    source.add_argument("--file", type=Path, help="a JSON list of {Problem, linear_formula, answer}")
    parser.add_argument("--out", type=Path, help="with --file: where the predictions go "
                                                 "(default RUN/predictions/file-<name>_beam<k>_<grammar|free>.json)")
    parser.add_argument("--beam-size", type=int, default=None, help="default: the run's beam_size")
    parser.add_argument("--grammar", action=argparse.BooleanOptionalAction, default=None,
                        help="allow only well-formed programs (default: the run's grammar setting)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=partial(_run_decode, parser=parser))


def _run_decode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from col775.mathqa.study import Decoding, decode

    if not (args.run / "metrics.json").is_file():
        raise SystemExit(f"{args.run} has no metrics.json: train it to the end first (`col775 mathqa train --out {args.run}`)")
    if args.out is not None and args.file is None:
        parser.error("--out goes with --file (a split's predictions are written inside the run folder)")
    config, _ = run_config(args.run)
    beam = config.beam_size if args.beam_size is None else args.beam_size
    if beam < 1:
        parser.error(f"--beam-size must be at least 1, got {beam}")
    grammar = config.grammar if args.grammar is None else args.grammar
    if args.file is not None:
        scores = _decode_file(args.run, args.file, Decoding(f"file-{args.file.stem}", beam, grammar), args.out,
                              args.device)
    else:
        if not (data_dir(config) / f"{args.split}.json").is_file():
            raise FileNotFoundError(f"{data_dir(config) / f'{args.split}.json'} does not exist: the run's data has no "
                                    f"{args.split} split; decode a file of problems with --file PATH.json")
        wanted = Decoding(args.split, beam, grammar)
        scores = decode(args.run, [wanted], args.device)[wanted.name]
    print(json.dumps(scores, indent=2))
    return 0


def _decode_file(run: Path, path: Path, wanted, out: Path | None, device: str) -> dict:
    """Decode the problems of ``path`` as ``wanted`` (a study.Decoding) and score them; also counts how
    many were cut to the run's length caps for the encoder (they are scored all the same)."""
    from col775.mathqa.study import summarise

    records = data.load_split(path)
    if not records:
        raise ValueError(f"{path} holds no problems")
    model, config, prepared = load_trained(run, device)
    loader = data.make_loader(prepared.encode(records), config.eval_batch_size, shuffle=False,
                              wordpiece_pad_id=prepared.wordpiece_pad_id)
    found, predicted = predict(model, loader, next(model.parameters()).device, wanted.beam, config.max_decode_len,
                               config.length_penalty, wanted.grammar, desc=f"{path.name} {wanted.name}")
    written = data.write_predictions(out or run / "predictions" / f"{wanted.name}.json", found, predicted)
    print(f"predictions: {written}", file=sys.stderr)
    truncated = data.count_over(records, config.max_source_len, config.max_target_len)
    return summarise([{**r, "predicted": p} for r, p in zip(found, predicted)]) | {"truncated": truncated}


_COMMANDS = (_add_score, _add_train, _add_study, _add_decode)
