"""The whole MathQA study (`col775 mathqa study`, assignment 1 part 2.3) and its report.

Runs, each a run folder under the study's output folder (the same command resumes them):
    model-<kind>   the four models of 2.3.1, at the configured teacher forcing (0.6 in the
                   course) and beam size (10)
    tf-<p>         lstm_attn at the other teacher-forcing probabilities of 2.3.2; the configured
                   probability is model-lstm_attn itself, not trained twice
Decodings of trained runs, without retraining; scores are cached in the run's decodings.json
and the predictions written in the course's submission format under predictions/:
    model-<kind>   every split at the configured beam, with and without grammar constraints
    bert_finetune  the test split (dev when the data has none) at beams 1, 10 and 20 (2.3.3)
With several seeds each run becomes `<run>/seed-<k>` (core/seeds.py): the tables show each variant's
first seed and the seed section every seed. The runs train in this process, side by side in worker
processes, or from a plan of `col775 mathqa train` lines (core/study.py).
Every dev number is labelled "dev, also used for model selection" (``train.split_role``): dev
picks each run's checkpoint, and without a test split it also stands in for test in 2.3.2
and 2.3.3. Models are named after the encoder each run really used (``models.model_name``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from col775.core.config import load_config, preset_path, read_sections, to_dict
from col775.core.plots import line_plot
from col775.core.provenance import read_provenance
from col775.core.report import Report, runs_report
from col775.core.runs import atomic_write_json
from col775.core.seeds import SeedNoise, by_variant, first_seed, seeded, variant
from col775.core.study import StudyOptions, Trainer, finished_runs, missing_notice, train_runs, write_plan
from col775.mathqa import data
from col775.mathqa.models import KINDS, model_name
from col775.mathqa.score import load_submission, score_records
from col775.mathqa.train import (
    MathqaConfig, data_dir, load_trained, model_config, predict, run_config, split_role, train_model,
)

log = logging.getLogger(__name__)

TEACHER_FORCING = (0.3, 0.6, 0.9)  # part 2.3.2
BEAM_SIZES = (1, 10, 20)  # part 2.3.3
TF_MODEL, BEAM_MODEL = "lstm_attn", "bert_finetune"
METRICS = (("exact_match", "EM"), ("execution_accuracy", "exec"), ("token_accuracy", "token"))


# ---------------------------------------------------------------- runs


def model_run(kind: str) -> str:
    return f"model-{kind}"


def tf_run(config: MathqaConfig, p: float) -> str:
    """The run of lstm_attn at teacher forcing p (the main lstm_attn run at ``config``'s, lstm_attn's settings)."""
    return model_run(TF_MODEL) if p == config.teacher_forcing else f"tf-{p:g}"


def study_settings(preset: str | Path | None, flags: dict[str, Any]) -> tuple[MathqaConfig, dict[str, dict[str, Any]]]:
    """The study's shared settings (defaults, the preset's top level, then ``flags``, None meaning unset) and,
    per model kind, the values of the preset's section of that kind (``lstm:``, ``bert_frozen:``, ...) that no
    flag overrides: the ``overrides`` of :func:`study_runs`."""
    config = load_config(MathqaConfig, "mathqa", preset, flags, KINDS)
    if preset is None:
        return config, {}
    _, sections = read_sections(MathqaConfig, preset_path("mathqa", preset), KINDS)
    given = {name for name, value in flags.items() if value is not None}
    return config, {kind: {k: v for k, v in section.items() if k not in given} for kind, section in sections.items()}


def study_runs(config: MathqaConfig, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, MathqaConfig]:
    """Every run the study trains, by folder name; ``overrides`` changes fields per model kind (the tf-<p>
    runs are lstm_attn runs, so they take its overrides, and the one at its teacher forcing is its main run)."""
    overrides = overrides or {}

    def make(kind: str, **changes: Any) -> MathqaConfig:
        return dataclasses.replace(config, model=kind, **(overrides.get(kind, {}) | changes))

    runs = {model_run(kind): make(kind) for kind in KINDS}
    for p in TEACHER_FORCING:
        runs.setdefault(tf_run(make(TF_MODEL), p), make(TF_MODEL, teacher_forcing=p))
    return runs


def starting_points(runs: dict[str, MathqaConfig], out: Path) -> tuple[dict[str, MathqaConfig], dict[str, MathqaConfig]]:
    """The runs split in two: those that start from scratch, and those that start from another run of this
    study (a preset's ``init_from: model-bert_frozen`` names a variant; a run starts from that variant's run
    of its own seed, in ``out``), which train once the first have finished."""
    variants = by_variant(runs)
    first, then = {}, {}
    for name, config in runs.items():
        if config.init_from not in variants:
            first[name] = config
            continue
        source = config.init_from + name[len(variant(name)):]  # the same seed's folder
        if runs[source].init_from in variants:
            raise ValueError(f"{name} starts from {source}, which starts from {runs[source].init_from} in turn; "
                             "a study run can only start from a run that starts from scratch")
        then[name] = dataclasses.replace(config, init_from=str(out / source))
    return first, then


# ---------------------------------------------------------------- decodings


class Decoding(NamedTuple):
    """One way of decoding one split of a trained run."""

    split: str
    beam: int
    grammar: bool

    @property
    def name(self) -> str:
        return f"{self.split}_beam{self.beam}_{'grammar' if self.grammar else 'free'}"


def summarise(records: list[dict]) -> dict[str, float]:
    """The three scores (%) of a submission, plus the share (%) of predictions that execute at all."""
    summary, verdicts = score_records(records)
    return summary | {"executable": 100 * sum(v.error is None for v in verdicts) / len(verdicts)}


def decode(run_dir: Path, wanted: Sequence[Decoding], device: str = "auto") -> dict[str, dict[str, float]]:
    """Scores of each wanted decoding of a finished run, by ``Decoding.name``.

    The decoding the run itself ended with (its beam and grammar setting) is read back from
    ``predictions/<split>.json`` where training wrote one (not for train, nor a test.json added
    after training); the others are decoded from the best checkpoint and written to
    ``predictions/<name>.json``. Scores are cached in ``decodings.json`` next to a fingerprint of
    the run's metrics.json, so a retrained run is decoded again and a resumed study is not.
    """
    cache_path = run_dir / "decodings.json"
    stamp = hashlib.sha1((run_dir / "metrics.json").read_bytes()).hexdigest()
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if cache.get("run") != stamp:
        cache = {"run": stamp, "scores": {}}
    config, _ = run_config(run_dir)
    loaded = None
    for wanted_decoding in wanted:
        if wanted_decoding.name in cache["scores"]:
            continue
        split, beam, grammar = wanted_decoding
        written = run_dir / "predictions" / f"{split}.json"
        if (beam, grammar) == (config.beam_size, config.grammar) and written.is_file():
            records = load_submission(written)
        else:
            if loaded is None:
                loaded = load_trained(run_dir, device)
            model, _, prepared = loaded
            loader = data.make_loader(prepared.splits[split], config.eval_batch_size, shuffle=False,
                                      wordpiece_pad_id=prepared.wordpiece_pad_id)
            found, predicted = predict(model, loader, next(model.parameters()).device, beam, config.max_decode_len,
                                       config.length_penalty, grammar, desc=f"{run_dir.name} {wanted_decoding.name}")
            data.write_predictions(run_dir / "predictions" / f"{wanted_decoding.name}.json", found, predicted)
            records = [{**record, "predicted": text} for record, text in zip(found, predicted)]
        cache["scores"][wanted_decoding.name] = summarise(records)
        atomic_write_json(cache_path, cache)
    return {d.name: cache["scores"][d.name] for d in wanted}


# ---------------------------------------------------------------- the study


def run_study(config: MathqaConfig, out: str | Path, options: StudyOptions = StudyOptions(),
              overrides: dict[str, dict[str, Any]] | None = None) -> Report | None:
    """Train every run (resuming or skipping finished ones), decode the variants, write the report.

    `overrides` gives fields per model kind (the preset's sections, :func:`study_settings`).
    `options` picks seeds, side-by-side processes, a plan of commands instead of training (returns None)
    or a report of what has finished; until every variant has a finished run that report lists the
    finished runs' numbers and names the missing ones.
    """
    out = Path(out)
    first, then = starting_points(seeded(study_runs(config, overrides), options.seeds), out)
    runs = first | then
    # the report's study-wide settings (2.3.2's teacher forcing, the decoding) are those of the lstm_attn runs
    config = dataclasses.replace(config, model=TF_MODEL, **(overrides or {}).get(TF_MODEL, {}))
    trainer = Trainer("mathqa", train_model)  # with force train_model also drops a run's old decodings
    if options.plan is not None:
        write_plan(then or first, out, trainer, options.plan, options.force, needs=(first, trainer) if then else None)
        return None
    failures = {}
    if not options.report_only:
        failures = train_runs(first, out, trainer, options)
        failures |= train_runs(then, out, trainer, options)  # a run whose starting point failed says so
    results = finished_runs(runs, out)
    notice = missing_notice([name for name in runs if name not in results], failures)
    shown = first_seed(results)
    if len(shown) < len(by_variant(runs)):
        report = Report("MathQA: word problems to programs (incomplete)")
        report.text(notice + " The study's own tables need a finished run of every variant; meanwhile the "
                    "finished runs' numbers. Their final numbers decode each run's best checkpoint with beam search "
                    "(the beam_size column); dev also chose that checkpoint, by the greedy execution accuracy it "
                    "scored after each epoch (the dev curves: greedy decodings, not beam search).")
        report.extend(runs_report([out / name for name in results], out / "figures", "Finished runs", root=out))
    else:
        splits = [s for s in ("dev", "test") if s in shown[model_run(KINDS[0])][1]["metrics"]]
        decoded_runs = {name: decode(out / name, wanted_decodings(config, kind, splits), config.device)
                        for kind in KINDS for name in by_variant(results)[model_run(kind)]}
        decoded = {kind: decoded_runs[shown[model_run(kind)][0]] for kind in KINDS}
        names = {kind: model_name(kind, model_config(runs[shown[model_run(kind)][0]])) for kind in KINDS}
        detail = {key: run for key, (_, run) in shown.items()}
        noise = seed_noise(config, results, decoded_runs, names, splits[-1])
        report = build_report(config, detail, decoded, splits, names, out, notice, noise)
        atomic_write_json(out / "summary.json", study_summary(config, detail, decoded, splits[-1], names))
    path = report.write(out)
    log.info("report written to %s", path)
    return report


def _starting_point(config: dict[str, Any], out: Path) -> str:
    """How a run began, when it began from another run's weights (``init_from``)."""
    if not config.get("init_from"):
        return ""
    source = Path(config["init_from"])
    source = source.relative_to(out) if source.is_relative_to(out) else source
    epochs = config["epochs"]
    return (f", starting from the best checkpoint of {source.as_posix()} (its encoder and trained decoder): its scores "
            f"are that model's after {epochs} more epoch{'s' if epochs != 1 else ''}"
            + (f" of {config['max_steps_per_epoch']} batches" if config.get("max_steps_per_epoch") else "")
            + " with the encoder unfrozen, so the difference between the two measures those steps")


def study_summary(config: MathqaConfig, runs: dict[str, dict], decoded: dict[str, dict], split: str,
                  names: dict[str, str]) -> dict[str, Any]:
    """summary.json: scores (%) on ``split`` of each model at the configured beam and grammar setting (as its
    metrics.json has them), of each teacher-forcing run, of each model with and without the grammar, and of
    BEAM_MODEL at each beam size; each variant's first seed."""
    summary: dict[str, Any] = {
        "split": split, "split_role": split_role(split), "beam_size": config.beam_size, "grammar": config.grammar,
        "models": names, "unit": "percent",
    }
    for kind in KINDS:
        scores = runs[model_run(kind)]["metrics"][split]
        summary |= {f"{kind}_{key}": scores[key] for key, _ in METRICS}
        for grammar in (False, True):
            scores = decoded[kind][Decoding(split, config.beam_size, grammar).name]
            summary |= {f"{kind}_{'grammar' if grammar else 'free'}_{key}": scores[key] for key, _ in METRICS[:2]}
    for p in TEACHER_FORCING:
        scores = runs[tf_run(config, p)]["metrics"][split]
        summary |= {f"{TF_MODEL}_tf{p:g}_{key}": scores[key] for key, _ in METRICS[:2]}
    for k in BEAM_SIZES:
        scores = decoded[BEAM_MODEL][Decoding(split, k, config.grammar).name]
        summary |= {f"{BEAM_MODEL}_beam{k}_{key}": scores[key] for key, _ in METRICS[:2]}
    return summary


def wanted_decodings(config: MathqaConfig, kind: str, splits: list[str]) -> list[Decoding]:
    """Every split at the configured beam with and without grammar; the beam sizes of 2.3.3 for BEAM_MODEL."""
    wanted = [Decoding(split, config.beam_size, grammar) for split in splits for grammar in (False, True)]
    if kind == BEAM_MODEL:
        wanted += [Decoding(splits[-1], k, config.grammar) for k in BEAM_SIZES]
    return list(dict.fromkeys(wanted))


def seed_noise(config: MathqaConfig, results: dict[str, dict], decoded_runs: dict[str, dict], names: dict[str, str],
               eval_split: str) -> SeedNoise | None:
    """Exact match and execution accuracy of the models, teacher-forcing runs and beam sizes over seeds, and
    the assignment's comparisons on execution accuracy; None when no variant has more than one seed."""
    groups = by_variant(results)
    if all(len(group) < 2 for group in groups.values()):
        return None
    role = split_role(eval_split)

    def scores(values: list[dict]) -> dict[str, list[float]]:
        return {f"{role} {short} (%)": [v[key] for v in values] for key, short in METRICS[:2]}

    table = {names[kind]: scores([run["metrics"][eval_split] for run in groups[model_run(kind)].values()])
             for kind in KINDS}
    table |= {f"{names[TF_MODEL]}, teacher forcing {p:g}": scores(
        [run["metrics"][eval_split] for run in groups[tf_run(config, p)].values()]) for p in TEACHER_FORCING}
    table |= {f"{names[BEAM_MODEL]}, beam {k}": scores(
        [decoded_runs[name][Decoding(eval_split, k, config.grammar).name] for name in groups[model_run(BEAM_MODEL)]])
        for k in BEAM_SIZES}
    key = f"{role} exec (%)"
    comparisons = [("attention vs none", names["lstm"], names["lstm_attn"], key),
                   ("frozen vs fine-tuned encoder", names["bert_frozen"], names["bert_finetune"], key)]
    comparisons += [(f"teacher forcing {a:g} vs {b:g}", f"{names[TF_MODEL]}, teacher forcing {a:g}",
                     f"{names[TF_MODEL]}, teacher forcing {b:g}", key) for a, b in combinations(TEACHER_FORCING, 2)]
    comparisons += [(f"beam {a} vs {b}", f"{names[BEAM_MODEL]}, beam {a}", f"{names[BEAM_MODEL]}, beam {b}", key)
                    for a, b in combinations(BEAM_SIZES, 2)]
    return SeedNoise(table, comparisons)


def _pct(value: float) -> str:
    return f"{value:.1f}"


def _diff(a: float, b: float) -> str:
    return f"{b - a:+.1f}"


def _columns(split: str) -> list[str]:
    """Table headers of the three scores on ``split``, each saying what the split was used for."""
    return [f"{split_role(split)}: {short}" for _, short in METRICS]


def build_report(config: MathqaConfig, results: dict[str, dict], decoded: dict[str, dict[str, dict]],
                 splits: list[str], names: dict[str, str], out: Path, notice: str = "",
                 noise: SeedNoise | None = None) -> Report:
    """The study's report of `results` (one run per variant); ``names`` maps each model kind to what the
    report calls it, `notice` says which runs are missing, and `noise` adds the seed section."""
    figures = out / "figures"
    eval_split = splits[-1]
    report = Report("MathQA: word problems to programs")
    if notice:
        report.text(notice)
    first = results[model_run(KINDS[0])]
    sizes = {"train": len(data.load_split(data_dir(config) / "train.json"))}
    sizes |= {name: len(load_submission(first["path"] / "predictions" / f"{name}.json")) for name in splits}
    report.text(
        f"Data: {'generated word problems (synthetic.py)' if not config.data else f'`{config.data}`'}; "
        + ", ".join(f"{name} {n} problems" for name, n in sizes.items())
        + f". The models train with teacher forcing {config.teacher_forcing} (unless listed below) and, at the end, "
        f"decode with beam search (k = {config.beam_size}, length penalty {config.length_penalty}) from the "
        "checkpoint with the best dev execution accuracy under greedy decoding. Dev therefore chose the model, "
        f"and its scores, labelled '{split_role('dev')}', are not held-out estimates (they may be optimistic)"
        + ("; test is held out" if "test" in splits else
           ". The data has no test split, so dev also stands in for test wherever the assignment asks for it "
           "(2.3.2 and 2.3.3)")
        + ". " + unseen_tokens_sentence(first["metrics"], sizes)
        + " Scores are percentages over all problems of a split: "
        "**exact match** (the program text equals the gold one, a trailing `|` aside), **execution accuracy** "
        "(the program runs and its value is within 2% of the answer, as in the course checker) and **token "
        "accuracy** (our definition: the share of gold token positions where the predicted token is the same, "
        "averaged over problems; missing tokens count as wrong, surplus ones are ignored)."
    )
    base = to_dict(config)
    shared = {k: v for k, v in base.items() if k != "model"}
    differing = {name: {k: v for k, v in run["config"].items() if k in shared and shared[k] != v
                        and not (k == "teacher_forcing" and name.startswith("tf-"))}
                 for name, run in results.items()}
    if any(differing.values()):
        report.text(f"Runs whose settings differ from {model_run(TF_MODEL)}'s beyond the model and 2.3.2's teacher "
                    "forcing: " + "; ".join(
            f"{name} ({', '.join(f'{k} {v}' for k, v in changes.items())})"
            for name, changes in differing.items() if changes) + ".")

    report.heading("The four models (2.3.1)")
    encoder_lr = results[model_run("bert_finetune")]["config"]["encoder_lr"]
    report.text(
        f"{names['bert_frozen']}: the encoder gets no gradient (its weights never change, and it stays in eval mode, "
        "without dropout), while the learned number-index embedding added to its output, the bridge to the decoder "
        f"and the decoder are trained. {names['bert_finetune']}: the encoder is trained as well, at its own learning "
        f"rate {encoder_lr:g}" + _starting_point(results[model_run("bert_finetune")]["config"], out) + "."
    )
    headers = ["model"] + [column for split in splits for column in _columns(split)]
    headers += ["best epoch", "epochs run", "trainable parameters", "train examples/s", "training minutes"]
    rows = []
    for kind in KINDS:
        m = results[model_run(kind)]["metrics"]
        rows.append([names[kind]] + [_pct(m[split][key]) for split in splits for key, _ in METRICS]
                    + [m["best_epoch"] + 1, m["epochs_run"], m["parameters"], f"{m['train_examples_per_second']:.0f}",
                       f"{m['train_minutes']:.0f}"])
    report.table(headers, rows)
    report.text(f"Training minutes are wall-clock minutes of training and scoring dev each epoch, summed over the "
                f"epochs (a cached frozen encoder's caching not included, nor the minutes of the run another started "
                f"from); every run of this study together: "
                f"{sum(run['metrics']['train_minutes'] for run in results.values()):.0f} minutes. The machine and thread count of "
                "each run are in its settings below.")
    add_curves(report, results, names, figures)
    add_grammar(report, config, decoded, splits, names)
    add_teacher_forcing(report, config, results, names[TF_MODEL], figures, eval_split)
    add_beam(report, config, decoded[BEAM_MODEL], names[BEAM_MODEL], eval_split)

    report.heading("Observations")
    for paragraph in observations(config, results, decoded, names, eval_split):
        report.text(paragraph)

    report.heading("Prediction files")
    report.text(
        "In the course's submission format (the data's records, each with an added `predicted` program), "
        "scorable with `col775 mathqa score FILE`: `<run>/predictions/<split>.json` is the decoding each run "
        f"ended with (beam {config.beam_size}, grammar constraints {'on' if config.grammar else 'off'}); "
        "`<run>/predictions/<split>_beam<k>_<grammar|free>.json` are the other decodings above. Runs: "
        + ", ".join(f"`{name}`" for name in results) + "."
    )
    if noise is not None:
        noise.add_to(report)
    report.heading("Settings of every run")
    report.settings("decoding in the study", {
        "beam_size": config.beam_size, "beam_sizes_of_2.3.3": list(BEAM_SIZES), "length_penalty": config.length_penalty,
        "max_decode_len": config.max_decode_len, "grammar_variants": [False, True],
        "teacher_forcing_of_2.3.2": list(TEACHER_FORCING),
    })
    for name, run in results.items():
        report.settings(name, run["config"], read_provenance(run["path"]))
    return report


def unseen_tokens_sentence(metrics: dict[str, Any], sizes: dict[str, int]) -> str:
    """How many gold programs of each scored split hold a token that no training program has."""
    counts = metrics.get("gold_programs_with_unseen_tokens")
    if counts is None:
        return "(Gold programs with tokens unseen in training were not counted: the runs predate the count.)"
    return (
        "Gold programs with a token that no training program has (it becomes `<unk>`, which decoding never "
        "emits, so they can never be matched exactly): "
        + ", ".join(f"{split} {n} of {sizes[split]}" for split, n in counts.items()) + "."
    )


def _source(run: dict, results: dict[str, dict]) -> dict | None:
    """The run of ``results`` that ``run`` started from (``init_from``), if any."""
    start = run["config"].get("init_from")
    return next((other for other in results.values() if start and Path(start) == Path(other["path"])), None)


def _epochs(run: dict, results: dict[str, dict]) -> list[int]:
    """A run's epochs (1-based), counted on from its starting checkpoint's epoch when it started from another run."""
    source = _source(run, results)
    offset = source["metrics"]["best_epoch"] + 1 if source else 0
    return [offset + r["epoch"] + 1 for r in run["history"]]


def add_curves(report: Report, results: dict[str, dict], names: dict[str, str], figures: Path) -> None:
    report.heading("Loss curves", 3)
    report.text(
        "Loss is the cross-entropy per target token. The train loss is measured while training, under teacher "
        "forcing p (the model's own previous token is fed at the other steps); the dev loss is measured after "
        "each epoch with full teacher forcing, so the two are comparable only at p = 1. A run that starts from "
        "another run's checkpoint counts its epochs on from that checkpoint's."
    )
    for kind in KINDS:
        run = results[model_run(kind)]
        series = {split: (_epochs(run, results), [r[f"{split}/loss"] for r in run["history"]])
                  for split in ("train", "dev")}
        png = line_plot(series, figures / f"loss_{kind}.png", title=f"{names[kind]}: loss", ylabel="loss per token")
        report.figure(png, f"{names[kind]}: train and dev loss per epoch")
    series = {}
    for kind in KINDS:
        run = results[model_run(kind)]
        xs, ys = _epochs(run, results), [r["dev/execution_accuracy"] for r in run["history"]]
        source = _source(run, results)
        if source:  # the line goes on from the checkpoint it started from
            start = source["metrics"]["best_epoch"]
            xs = [start + 1] + xs
            ys = [next(r for r in source["history"] if r["epoch"] == start)["dev/execution_accuracy"]] + ys
        series[names[kind]] = (xs, ys)
    png = line_plot(series, figures / "dev_execution_accuracy.png", title="dev execution accuracy (greedy)",
                    ylabel="execution accuracy (%)")
    report.figure(png, "Dev execution accuracy under greedy decoding after each epoch (used to pick the checkpoint); "
                       "a run that starts from another run's checkpoint goes on from that run's point")


def add_grammar(report: Report, config: MathqaConfig, decoded: dict[str, dict], splits: list[str],
                names: dict[str, str]) -> None:
    report.heading(f"Grammar-constrained decoding (beam {config.beam_size})", 3)
    report.text(
        "Free decoding lets the model emit any token sequence; constrained decoding (grammar.py) allows only "
        "well-formed programs: an operation, then exactly its number of arguments (`nK` only for numbers the "
        "problem has, `#k` only for finished steps, constants), then `|`. 'executes' is the share of "
        "predictions that run without error, whatever their value."
    )
    headers = ["model", "split"] + [f"{short} {mode}" for _, short in METRICS + (("executable", "executes"),)
                                    for mode in ("free", "grammar")]
    rows = []
    for kind in KINDS:
        for split in splits:
            free = decoded[kind][Decoding(split, config.beam_size, False).name]
            constrained = decoded[kind][Decoding(split, config.beam_size, True).name]
            cells = [_pct(scores[key]) for key, _ in METRICS + (("executable", ""),) for scores in (free, constrained)]
            rows.append([names[kind], split_role(split)] + cells)
    report.table(headers, rows)


def add_teacher_forcing(report: Report, config: MathqaConfig, results: dict[str, dict], name: str, figures: Path,
                        eval_split: str) -> None:
    report.heading(f"Teacher forcing probability (2.3.2, {name}, beam {config.beam_size}, "
                   f"{split_role(eval_split)})", 3)
    rows = []
    for p in TEACHER_FORCING:
        run = results[tf_run(config, p)]
        m = run["metrics"]
        rows.append([p] + [_pct(m[eval_split][key]) for key, _ in METRICS]
                    + [f"{run['history'][-1]['train/loss']:.3f}", f"{min(r['dev/loss'] for r in run['history']):.3f}",
                       m["best_epoch"] + 1])
    report.table(["teacher forcing p"] + _columns(eval_split) + ["last train loss", "lowest dev loss", "best epoch"],
                 rows)
    for split in ("train", "dev"):
        series = {f"p = {p}": (_epochs(results[tf_run(config, p)], results),
                               [r[f"{split}/loss"] for r in results[tf_run(config, p)]["history"]])
                  for p in TEACHER_FORCING}
        png = line_plot(series, figures / f"teacher_forcing_{split}_loss.png", title=f"{split} loss by teacher forcing",
                        ylabel="loss per token")
        report.figure(png, f"{name}: {split} loss per epoch at each teacher forcing probability")


def add_beam(report: Report, config: MathqaConfig, decoded: dict[str, dict], name: str, eval_split: str) -> None:
    report.heading(f"Beam size (2.3.3, {name}, {split_role(eval_split)})", 3)
    rows = []
    for k in BEAM_SIZES:
        scores = decoded[Decoding(eval_split, k, config.grammar).name]
        rows.append([k] + [_pct(scores[key]) for key, _ in METRICS] + [_pct(scores["executable"])])
    report.table(["beam k"] + _columns(eval_split) + ["executes"], rows)


# ---------------------------------------------------------------- observations


def observations(config: MathqaConfig, results: dict[str, dict], decoded: dict[str, dict], names: dict[str, str],
                 eval_split: str) -> list[str]:
    """Paragraphs read off the numbers (no claim the numbers don't support)."""
    metric = {kind: results[model_run(kind)]["metrics"][eval_split] for kind in KINDS}
    ranked = sorted(KINDS, key=lambda k: metric[k]["execution_accuracy"], reverse=True)

    def change(before: str, after: str, key: str) -> str:
        return _diff(metric[before][key], metric[after][key])

    scored_on = split_role(eval_split)
    parts = [
        f"On {scored_on}, by execution accuracy the models rank "
        + ", ".join(f"{names[k]} {_pct(metric[k]['execution_accuracy'])}%" for k in ranked) + ". "
        f"Attention changes exact match by {change('lstm', 'lstm_attn', 'exact_match')} and execution accuracy "
        f"by {change('lstm', 'lstm_attn', 'execution_accuracy')} points (lstm_attn against lstm); fine-tuning "
        f"the encoder instead of freezing it changes them by {change('bert_frozen', 'bert_finetune', 'exact_match')} and "
        f"{change('bert_frozen', 'bert_finetune', 'execution_accuracy')} points."
    ]
    gaps = [metric[k]["execution_accuracy"] - metric[k]["exact_match"] for k in KINDS]
    parts.append(
        f"Execution accuracy minus exact match is {_span(gaps, signed=True)} points across the models; a positive "
        "gap means some problems were solved by a program whose text differs from the gold one (for example "
        "with the arguments of a commutative operation swapped)."
    )
    parts.append(_overfitting(results, names))
    parts.append(_grammar_observation(config, decoded, eval_split))
    parts.append(_teacher_forcing_observation(config, results, names[TF_MODEL], eval_split))
    beam = [decoded[BEAM_MODEL][Decoding(eval_split, k, config.grammar).name] for k in BEAM_SIZES]
    parts.append(
        f"Beam size ({names[BEAM_MODEL]}, {scored_on}): exact match "
        + "/".join(_pct(b["exact_match"]) for b in beam) + " and token accuracy "
        + "/".join(_pct(b["token_accuracy"]) for b in beam) + f" at k = {'/'.join(map(str, BEAM_SIZES))}; "
        f"from greedy (k = 1) to k = {BEAM_SIZES[-1]} exact match changes by "
        f"{_diff(beam[0]['exact_match'], beam[-1]['exact_match'])} points and execution accuracy by "
        f"{_diff(beam[0]['execution_accuracy'], beam[-1]['execution_accuracy'])}."
    )
    return [p for p in parts if p]


def _overfitting(results: dict[str, dict], names: dict[str, str]) -> str:
    notes = []
    for kind in KINDS:
        history = results[model_run(kind)]["history"]
        if len(history) < 3:
            continue
        dev = [r["dev/loss"] for r in history]
        low = min(range(len(dev)), key=dev.__getitem__)
        if low < len(dev) - 1 and dev[-1] > dev[low] and history[-1]["train/loss"] < history[low]["train/loss"]:
            notes.append(f"{names[kind]} (lowest dev loss {dev[low]:.3f} at epoch {low + 1}, {dev[-1]:.3f} at the last "
                         f"epoch {len(dev)}, while its train loss kept falling)")
    if notes:
        return "Dev loss rose again after its minimum for: " + "; ".join(notes) + ", a sign of over-fitting."
    if all(len(results[model_run(k)]["history"]) >= 3 for k in KINDS):
        return "No model's dev loss rose after its minimum while its train loss fell: none over-fitted in this budget."
    return ""


def _grammar_observation(config: MathqaConfig, decoded: dict[str, dict], eval_split: str) -> str:
    free = {k: decoded[k][Decoding(eval_split, config.beam_size, False).name] for k in KINDS}
    constrained = {k: decoded[k][Decoding(eval_split, config.beam_size, True).name] for k in KINDS}
    changes = [constrained[k]["execution_accuracy"] - free[k]["execution_accuracy"] for k in KINDS]
    return (
        f"Grammar constraints ({split_role(eval_split)}, beam {config.beam_size}): across the models, the share of "
        f"predictions that execute is {_span([f['executable'] for f in free.values()])}% without them and "
        f"{_span([c['executable'] for c in constrained.values()])}% with them, and execution accuracy changes by "
        f"{_span(changes, signed=True)} points. A well-formed program can still fail to execute "
        "(a division by zero, a too large factorial) or compute the wrong value."
    )


def _span(values: list[float], signed: bool = False) -> str:
    """"a to b" of the smallest and largest value, or the one value when they are equal."""
    show = (lambda v: f"{v:+.1f}") if signed else (lambda v: f"{v:.1f}")
    low, high = min(values), max(values)
    return show(low) if show(low) == show(high) else f"{show(low)} to {show(high)}"


def _teacher_forcing_observation(config: MathqaConfig, results: dict[str, dict], name: str, eval_split: str) -> str:
    em = {p: results[tf_run(config, p)]["metrics"][eval_split]["exact_match"] for p in TEACHER_FORCING}
    token = {p: results[tf_run(config, p)]["metrics"][eval_split]["token_accuracy"] for p in TEACHER_FORCING}
    best = max(TEACHER_FORCING, key=em.get)
    values = [em[p] for p in TEACHER_FORCING]
    if values == sorted(values) and values[0] < values[-1]:
        trend = "rises with p"
    elif values == sorted(values, reverse=True) and values[0] > values[-1]:
        trend = "falls as p grows"
    else:
        trend = "is not monotonic in p"
    return (
        f"Teacher forcing ({name}, {split_role(eval_split)}): exact match is "
        + "/".join(_pct(em[p]) for p in TEACHER_FORCING) + " and token accuracy "
        + "/".join(_pct(token[p]) for p in TEACHER_FORCING) + f" at p = {'/'.join(f'{p:g}' for p in TEACHER_FORCING)}; "
        f"exact match {trend}, highest at p = {best:g}. These are single runs (seed {config.seed}), so differences "
        "of a point or two may be noise."
    )


# ---------------------------------------------------------------- demo

def demo(out: Path, force: bool = False) -> Report:
    """The study at CPU size on generated problems (`col775 demo`): the demo preset, with its short BERT runs."""
    config, sections = study_settings("demo", {})
    return run_study(config, out, StudyOptions(force=force), sections)
