"""The whole normalisation study (`col775 resnet study`) and its report.

Runs, each a run folder under the study's output folder:
    norm-<kind>          every kind of `study_norms` at the configured batch size: torch_bn is the
                         model of section 1.1, bn/in/bin/ln/gn/nn the six variants of section 2
    batch-<kind>-b<B>    BN and GN at each of `study_batch_sizes`, with early stopping on val accuracy
With several seeds each becomes `<run>/seed-<k>` (core/seeds.py); the report's tables and curves show each
variant's first seed, and its seed section every seed. The runs train in this process, side by side in
worker processes, or from a plan of `col775 resnet train` lines (core/study.py). Then Grad-CAM on the
single run with the best val accuracy, and one report with every number and setting.
A run whose loss goes NaN or inf is recorded as diverged (`diverged.json` in its folder) and reported
so; the study goes on with the others and does not train it again unless `force` is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from col775.core.plots import line_plot
from col775.core.report import Report
from col775.core.provenance import read_provenance
from col775.core.runs import RunDir, atomic_write_json, read_run
from col775.core.seeds import SeedNoise, by_variant, first_seed, seeded, variant
from col775.core.study import StudyOptions, Trainer, finished_runs, missing_notice, train_runs, write_plan
from col775.core.training import NonFiniteLossError, pick_device
from col775.resnet.config import ResnetConfig, run_fields
from col775.resnet.gradcam import gradcam_grids, match_classes
from col775.resnet.train import CURVES, RunDiverged, amp_enabled, build_model, evaluate, make_loaders, plot_curves, train

log = logging.getLogger(__name__)

NAMES = {
    "torch_bn": "torch BatchNorm2d (1.1)", "bn": "BN", "in": "IN", "bin": "BIN", "ln": "LN", "gn": "GN", "nn": "no norm",
}  # fmt: skip


def study_runs(config: ResnetConfig) -> dict[str, ResnetConfig]:
    """Every run the study trains, by folder name."""
    runs = {f"norm-{kind}": dataclasses.replace(config, norm=kind) for kind in config.study_norms}
    for kind in ("bn", "gn"):
        for size in config.study_batch_sizes:
            runs[f"batch-{kind}-b{size}"] = dataclasses.replace(
                config, norm=kind, batch_size=size, patience=config.study_batch_patience
            )
    return runs


TRAINER_FLAGS = ("--record-divergence",)  # a plan line records a NaN loss as the study does


def run_study(config: ResnetConfig, out: str | Path, options: StudyOptions = StudyOptions()) -> Report | None:
    """Train every run (resuming or skipping finished ones), then Grad-CAM, then the report.

    `options` picks seeds, side-by-side processes, a plan of commands instead of training (returns None)
    or a report of what has finished. The Grad-CAM class names are matched to the data's class folders
    first, so a name that matches none stops the study before it trains anything. Grad-CAM shows the
    single run with the best val accuracy, over every seed.
    """
    out = Path(out)
    info = make_loaders(config).info
    chosen = match_classes(config.gradcam_classes, info.classes, info.root / "train")
    runs = seeded(study_runs(config), options.seeds)
    trainer = Trainer("resnet", train_or_record_divergence, TRAINER_FLAGS)
    if options.plan is not None:
        write_plan(runs, out, trainer, options.plan, options.force)
        return None
    failures = {} if options.report_only else train_runs(runs, out, trainer, options)
    diverged = {name: read_run(out / name) | {"diverged": record} for name, run_config in runs.items()
                if (record := recorded_divergence(run_config, out / name)) is not None}
    results = finished_runs(runs, out)
    if not results:
        if len(diverged) == len(runs):
            raise NonFiniteLossError(f"every run of the study in {out} diverged; lower --lr or set --grad-clip")
        failed = "; ".join(f"{name} {why}" for name, why in failures.items())
        raise FileNotFoundError(f"no run of the study in {out} has finished"
                                + (f"; failed: {failed}" if failed else "; train them first (without --report-only)"))
    notice = missing_notice([n for n in runs if n not in results and n not in diverged], failures)
    best_name = max(results, key=lambda n: results[n]["metrics"]["val"]["accuracy"])
    shown = {key: run for key, (_, run) in first_seed(results).items()}
    report = build_report(config, shown, out, diverged, notice, seed_noise(results))
    add_gradcam(report, config, best_name, runs[best_name], out / best_name, out / "gradcam", chosen)
    atomic_write_json(out / "summary.json", study_summary(config, results, best_name, diverged))
    path = report.write(out)
    log.info("report written to %s", path)
    return report


def summary_key(run_name: str) -> str:
    """A variant's name in summary.json: "norm-bn" -> "bn", "batch-gn-b8" -> "gn_b8"."""
    return run_name.removeprefix("norm-").removeprefix("batch-").replace("-", "_")


def study_summary(config: ResnetConfig, results: dict[str, dict], best_name: str, diverged: dict) -> dict:
    """summary.json: each variant's val and test accuracy (first seed; with several seeds also the mean and
    standard deviation over them) and the variant with the best val accuracy (val chose it; its test
    accuracy is the held-out number), with the split sizes and settings that produced them."""
    info = results[best_name]["metrics"]["data"]
    summary: dict = {
        "accuracy_unit": "fraction of images",
        "selection": "best_variant has the best val accuracy of every run (all seeds); test was not used to choose",
        "test_split": (f"carved from train ({info['test_fraction']:.0%}, seed {config.seed})" if info["test_carved"]
                       else "the data's own test folder"),
        "split_sizes": info["split_sizes"],
        "image_size": config.image_size, "epochs": config.epochs, "n": config.n,
        "best_variant": summary_key(variant(best_name)),
        "best_run": best_name,
        "best_val_accuracy": results[best_name]["metrics"]["val"]["accuracy"],
        "best_test_accuracy": results[best_name]["metrics"]["test"]["accuracy"],
        "diverged": sorted(summary_key(name) for name in diverged),
    }
    for key, group in by_variant(results).items():
        for split in ("val", "test"):
            values = [run["metrics"][split]["accuracy"] for run in group.values()]
            summary[f"{summary_key(key)}_{split}_accuracy"] = values[0]
            if len(values) > 1:
                summary[f"{summary_key(key)}_{split}_accuracy_mean"] = float(np.mean(values))
                summary[f"{summary_key(key)}_{split}_accuracy_std"] = float(np.std(values, ddof=1))
    return summary


def recorded_divergence(config: ResnetConfig, run_dir: Path) -> dict | None:
    """The run's diverged.json record, if it diverged with these settings and has not finished since."""
    path = run_dir / "diverged.json"
    if not path.is_file() or (run_dir / "metrics.json").is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["settings"] == json.loads(json.dumps(run_fields(config))) else None


def train_or_record_divergence(config: ResnetConfig, run_dir: Path, force: bool) -> dict | None:
    """Train one run of the study; None when it finished, its divergence record when its loss went NaN.

    The record (epoch, last finite loss, error, settings) is kept in `run_dir/diverged.json`, so running
    the study again reports the run as diverged without training it; `force`, new settings or a
    metrics.json written since (the run finished after all) make it train as usual.
    """
    run_dir = Path(run_dir)
    if not force and (record := recorded_divergence(config, run_dir)) is not None:
        return record
    path = run_dir / "diverged.json"
    path.unlink(missing_ok=True)
    try:
        train(config, run_dir, force=force)
    except RunDiverged as error:
        log.warning("%s diverged; the study goes on without it: %s", run_dir, error)
        record = {"epoch": error.epoch, "last_finite_loss": error.last_finite_loss, "error": str(error),
                  "settings": json.loads(json.dumps(run_fields(config)))}
        atomic_write_json(path, record)
        return record
    return None


def seed_noise(results: dict[str, dict]) -> SeedNoise | None:
    """Val and test accuracy (%) of every variant over its seeds, and the assignment's comparisons on test
    accuracy; None when no variant has more than one seed."""
    groups = by_variant(results)
    if all(len(group) < 2 for group in groups.values()):
        return None
    labels = {key: _label(key, next(iter(group.values()))) for key, group in groups.items()}
    scores = {labels[key]: {f"{split} acc (%)": [100 * run["metrics"][split]["accuracy"] for run in group.values()]
                            for split in ("val", "test")} for key, group in groups.items()}
    pairs = [("torch BN vs our BN", "norm-torch_bn", "norm-bn")]
    pairs += [(f"{NAMES[kind]} vs BN", f"norm-{kind}", "norm-bn") for kind in ("in", "bin", "ln", "gn", "nn")]
    for kind in ("bn", "gn"):
        sizes = sorted((int(key.rsplit("-b", 1)[1]), key) for key in groups if key.startswith(f"batch-{kind}-"))
        if len(sizes) >= 2:
            pairs.append((f"{kind.upper()} at batch {sizes[0][0]} vs {sizes[-1][0]}", sizes[0][1], sizes[-1][1]))
    comparisons = [(what, labels[a], labels[b], "test acc (%)") for what, a, b in pairs if a in labels and b in labels]
    return SeedNoise(scores, comparisons)


def diverged_text(record: dict) -> str:
    """How the report shows a diverged run, e.g. "diverged at epoch 3 (last finite loss 2.31)"."""
    loss = record["last_finite_loss"]
    return f"diverged at epoch {record['epoch'] + 1} " + (
        f"(last finite loss {loss:.4g})" if loss is not None else "(at its first step)"
    )


def _fmt(value: float) -> str:
    return f"{100 * value:.1f}"


def _label(name: str, run: dict) -> str:
    config = run["config"]
    if name.startswith("norm-"):
        return NAMES.get(config["norm"], config["norm"])
    return f"{NAMES.get(config['norm'], config['norm'])}, batch {config['batch_size']}"


def build_report(config: ResnetConfig, results: dict[str, dict], out: Path, diverged: dict[str, dict],
                 notice: str = "", noise: SeedNoise | None = None) -> Report:
    """The study's report of `results` (one run per variant); `notice` says which runs are missing, and
    `noise` adds the seed section."""
    figures = out / "figures"
    report = Report("ResNet normalisation study")
    if notice:
        report.text(notice)
    first = next(iter(results.values()))["metrics"]
    data = first["data"]
    nested = data.get("from_subfolders", {})  # absent from runs made before sub-folders were read
    report.text(
        f"A {6 * config.n + 2}-layer ResNet (n = {config.n}) on {len(data['classes'])} classes from "
        f"`{data['root']}` ({'generated data' if not config.data else 'user data'}), images "
        f"{data['image_size']}x{data['image_size']}; splits: "
        + ", ".join(f"{k} {v}" for k, v in data["split_sizes"].items())
        + ". "
        + (f"There was no test split, so a stratified {data['test_fraction']:.0%} of train (seed {config.seed}) "
           "was held out as test. " if data["test_carved"] else "")
        + (f"{data['num_skipped']} unreadable images were skipped: {', '.join(data['skipped'][:10])}. "
           if data["num_skipped"] else "No image was unreadable. ")
        + ("Images read from sub-folders of class folders, as that class: "
           + ", ".join(f"{k} {v}" for k, v in nested.items()) + ". " if any(nested.values()) else "")
        + f"Optimiser {config.optimizer} (lr {config.lr}, momentum {config.momentum}, weight decay "
        f"{config.weight_decay}), schedule {config.schedule}, {config.epochs} epochs at most; numbers are "
        "from the checkpoint with the best validation accuracy, evaluated in eval mode without augmentation "
        "on every image of each split. Per-epoch train curves are evaluated the same way on "
        + (f"all {first['train_sample_size']} training images" if first["train_sample_size"] == data["split_sizes"]["train"]
           else f"a fixed sample of {first['train_sample_size']} training images (seed {config.seed})")
        + "; the running numbers of the augmented training passes are in each run's metrics.jsonl as `train_aug/...`."
    )

    norm_runs = [n for n in results if n.startswith("norm-")]
    report.heading("Accuracy, micro F1 and macro F1 (%)")
    headers = ["run"] + [f"{split} {metric}" for split in ("train", "val", "test") for metric in ("acc", "micro F1", "macro F1")]
    headers += ["best epoch", "epochs run", "images/s", "training minutes"]
    rows = []
    for name, run in results.items():
        m = run["metrics"]
        row = [_label(name, run)]
        row += [_fmt(m[split][key]) for split in ("train", "val", "test") for key in ("accuracy", "micro_f1", "macro_f1")]
        row += [(m["best_epoch"] or 0) + 1, m["epochs_run"], f"{m['images_per_second']:.1f}", _minutes(run)]
        rows.append(row)
    for name, run in diverged.items():
        rows.append([_label(name, run), diverged_text(run["diverged"])] + [""] * (len(headers) - 2))
    report.table(headers, rows)
    known = [run for run in results.values() if _timed(run)]
    report.text("Training minutes are wall-clock minutes of each epoch's training and its two evaluations, summed "
                f"over the epochs; the runs of this table together: {sum(_seconds(r) for r in known) / 60:.0f} minutes"
                + (f" (not counting {len(results) - len(known)} runs made before epoch times were recorded)"
                   if len(known) < len(results) else "")
                + ". The machine and thread count of each run are in its settings below.")
    if diverged:
        report.text(f"Runs whose loss became NaN or inf ({', '.join(diverged)}) are left out of the curves and "
                    "comparisons below; each folder's diverged.json says where, and `--force` trains them again.")

    report.heading("Curves of every variant")
    for key, title in CURVES:
        val_series = {
            _label(n, results[n]): ([r["epoch"] + 1 for r in results[n]["history"]], [r[f"val/{key}"] for r in results[n]["history"]])
            for n in norm_runs
        }
        report.figure(line_plot(val_series, figures / f"variants_val_{key}.png", title=f"val {title}", ylabel=key),
                      f"Validation {title} of every normalisation variant")
    for name in norm_runs:
        label = _label(name, results[name])
        report.figure(plot_curves(results[name]["history"], figures / f"{name}_curves.png", label),
                      f"{label}: train (eval mode, no augmentation) and val error, accuracy, micro F1 and macro F1")

    if "norm-torch_bn" in results and "norm-bn" in results:
        add_sanity_check(report, results["norm-torch_bn"], results["norm-bn"], figures)
    batch_runs = [n for n in results if n.startswith("batch-")]
    if batch_runs:
        add_batch_study(report, results, batch_runs, figures)
    report.heading("Observations")
    report.text(observations(results))
    if noise is not None:
        noise.add_to(report)
    report.heading("Settings of every run")
    for name, run in (results | diverged).items():
        report.settings(name, run["config"], read_provenance(run["path"]))
    return report


def _timed(run: dict) -> bool:
    """Whether every epoch of the run recorded its time (runs from before epoch_seconds did not)."""
    return all("epoch_seconds" in r for r in run["history"])


def _seconds(run: dict) -> float:
    return sum(r["epoch_seconds"] for r in run["history"])


def _minutes(run: dict) -> str:
    """A run's training minutes, or "?" when its epochs were recorded without their times."""
    return f"{_seconds(run) / 60:.0f}" if _timed(run) else "?"


def add_sanity_check(report: Report, torch_run: dict, ours: dict, figures: Path) -> None:
    report.heading("Sanity check: torch BatchNorm2d against our BN")
    rows = []
    for split in ("train", "val", "test"):
        for key in ("accuracy", "micro_f1", "macro_f1"):
            a, b = torch_run["metrics"][split][key], ours["metrics"][split][key]
            rows.append([f"{split} {key}", _fmt(a), _fmt(b), f"{100 * (b - a):+.2f}"])
    report.table(["metric", "torch BN (%)", "our BN (%)", "difference (points)"], rows)
    for key, title in CURVES[:2]:
        series = {}
        for label, run in (("torch BN", torch_run), ("our BN", ours)):
            for split in ("train", "val"):
                series[f"{label} {split}"] = ([r["epoch"] + 1 for r in run["history"]], [r[f"{split}/{key}"] for r in run["history"]])
        report.figure(line_plot(series, figures / f"sanity_{key}.png", title=f"torch BN vs our BN: {title}", ylabel=key),
                      f"torch BatchNorm2d and our BatchNorm: {title}, train and val")
    gaps = [abs(a["val/loss"] - b["val/loss"]) for a, b in zip(torch_run["history"], ours["history"])]
    if gaps:
        report.text(f"The largest per-epoch difference in validation loss is {max(gaps):.4g}.")


def add_batch_study(report: Report, results: dict[str, dict], names: list[str], figures: Path) -> None:
    report.heading("Batch size: BN and GN")
    rows = []
    for name in names:
        run = results[name]
        m = run["metrics"]
        rows.append([_label(name, run), _fmt(m["val"]["accuracy"]), _fmt(m["test"]["accuracy"]), _fmt(m["test"]["macro_f1"]),
                     m["epochs_run"], "yes" if m["stopped_early"] else "no"])
    report.table(["run", "val acc", "test acc", "test macro F1", "epochs run", "stopped early"], rows)
    settings = {(results[n]["config"]["lr"], results[n]["config"]["epochs"]) for n in names}
    sizes = sorted({results[n]["config"]["batch_size"] for n in names})
    if len(settings) == 1 and len(sizes) > 1:
        (lr, epochs), = settings
        report.text(f"Every batch size trains at the same learning rate ({lr:g}) for the same {epochs} epochs at most, "
                    f"so batch {sizes[0]} takes {sizes[-1] // sizes[0]}x as many SGD steps as batch {sizes[-1]}: the "
                    "comparison mixes the batch statistics with the number of updates.")
    series = {_label(n, results[n]): ([r["epoch"] + 1 for r in results[n]["history"]], [r["val/accuracy"] for r in results[n]["history"]]) for n in names}
    report.figure(line_plot(series, figures / "batch_val_accuracy.png", title="val accuracy by batch size", ylabel="accuracy"),
                  "Validation accuracy of BN and GN at each batch size")


def observations(results: dict[str, dict]) -> str:
    """A paragraph read off the numbers (no claim that the numbers don't support)."""
    val = {name: run["metrics"]["val"]["accuracy"] for name, run in results.items()}
    test = {name: run["metrics"]["test"]["accuracy"] for name, run in results.items()}
    norm = {n: v for n, v in val.items() if n.startswith("norm-")}
    parts = []
    if norm:
        ranked = sorted(norm, key=norm.get, reverse=True)
        label = lambda n: _label(n, results[n])  # noqa: E731
        parts.append(
            "By validation accuracy the variants rank " + ", ".join(f"{label(n)} {_fmt(norm[n])}%" for n in ranked) + "."
        )
        if "norm-nn" in norm and "norm-bn" in norm:
            gap = 100 * (norm["norm-bn"] - norm["norm-nn"])
            parts.append(f"BN is {gap:+.1f} points against no normalisation.")
        if "norm-torch_bn" in norm and "norm-bn" in norm:
            diff = 100 * (test["norm-bn"] - test["norm-torch_bn"])
            parts.append(f"Our BN and torch's BatchNorm2d differ by {diff:+.2f} points of test accuracy.")
    for kind in ("bn", "gn"):
        sizes = sorted((int(n.rsplit("-b", 1)[1]), val[n]) for n in val if n.startswith(f"batch-{kind}-"))
        if len(sizes) >= 2:
            (small, a), (large, b) = sizes[0], sizes[-1]
            parts.append(f"{kind.upper()} goes from {_fmt(b)}% at batch {large} to {_fmt(a)}% at batch {small} ({100 * (a - b):+.1f} points).")
    chance = 1 / max(len(next(iter(results.values()))["metrics"]["data"]["classes"]), 1)
    parts.append(f"Chance is {_fmt(chance)}%.")
    return " ".join(parts)


def add_gradcam(report: Report, config: ResnetConfig, name: str, best: ResnetConfig, run_dir: Path, out: Path,
                chosen: list[str]) -> None:
    """Grad-CAM grids of the best run on validation images of the chosen class folders."""
    device = pick_device(best.device)
    loaders = make_loaders(best)
    model = build_model(best, loaders.info.num_classes).to(device)
    RunDir(run_dir, run_fields(best)).load_best({"model": model})
    val = evaluate(model, loaders.val, device, amp_enabled(best, device), "Grad-CAM predictions")
    report.heading(f"Grad-CAM of the best model ({name})")
    maps = gradcam_grids(model, loaders.val.dataset, val.predictions, val.labels, loaders.info.classes, chosen,
                         config.gradcam_per_kind, out, device)
    short = [f"{m.name} ({m.correct} correct, {m.wrong} wrong)" for m in maps
             if m.correct < config.gradcam_per_kind or m.wrong < config.gradcam_per_kind]
    report.text(
        f"Maps for the true class at the {2 * best.n} layers of the last (64x64 at 256x256 input) stage, "
        f"mean-aggregated by the grad-cam package, laid over validation images: top row classified "
        f"correctly, bottom row wrongly. "
        + (f"Fewer than {config.gradcam_per_kind} images existed for: {'; '.join(short)}." if short else "")
    )
    for m in maps:
        report.figure(m.grid, f"Grad-CAM, {m.name}")
    report.table(
        ["class", "val accuracy (%)", "correct shown", "wrong shown", "focus, correct", "focus, wrong"],
        [[m.name, _fmt(_class_accuracy(val, loaders.info.classes, m.name)), m.correct, m.wrong,
          m.focus.get("correct"), m.focus.get("wrong")] for m in maps],
    )
    report.text(gradcam_observations(maps))


def _class_accuracy(val, classes: list[str], name: str) -> float:
    rows = val.labels == classes.index(name)
    return float(np.mean(val.predictions[rows] == classes.index(name))) if rows.any() else 0.0


def gradcam_observations(maps) -> str:
    """What the focus numbers say: a flat map puts 10% of its mass in its top 10% of pixels."""
    pairs = [(m.focus["correct"], m.focus["wrong"]) for m in maps if "correct" in m.focus and "wrong" in m.focus]
    text = ("Focus is the share of a map's mass in its brightest 10% of pixels (0.10 for a flat map, 1.0 for "
            "a single point). ")
    if not pairs:
        return text + "No class had both correct and wrong images to compare."
    right, wrong = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
    sharper = sum(a > b for a, b in pairs)
    return text + (
        f"Averaged over the {len(pairs)} classes with both kinds, maps of correctly classified images have "
        f"focus {right:.2f} against {wrong:.2f} for misclassified ones; the correct maps are the more "
        f"concentrated in {sharper} of {len(pairs)} classes. Read the grids for where that mass lies."
    )


def demo(out: Path, force: bool = False) -> Report:
    """The study at CPU size on generated data (`col775 demo`)."""
    from col775.core.config import load_config

    config = load_config(ResnetConfig, "resnet", "demo", {})
    return run_study(config, out, StudyOptions(force=force))
