"""The study end to end on a tiny generated set: every run, the report, Grad-CAM grids, diverged runs."""

import dataclasses
import json
import math
import os
import re
import statistics
import subprocess

import pytest
import yaml

from col775.cli import main
from col775.core.study import StudyOptions
from col775.core.training import NonFiniteLossError
from col775.resnet import study as study_module
from col775.resnet import train as train_module
from col775.resnet.config import ResnetConfig, run_fields
from col775.resnet.study import run_study, study_runs, train_or_record_divergence


def tiny_study(tmp_path, **changes) -> ResnetConfig:
    values = dict(
        image_size=16, synthetic_train_per_class=4, synthetic_val_per_class=3, synthetic_test_per_class=2,
        n=1, epochs=2, batch_size=16, eval_batch_size=128, warmup_epochs=0, device="cpu",
        cache_dir=str(tmp_path / "cache"), study_norms=["torch_bn", "bn", "gn"], study_batch_sizes=[8, 32],
        study_batch_patience=1, gradcam_classes=["Cattle Egret", "indian-peacock"], gradcam_per_kind=2,
    )
    values.update(changes)
    return ResnetConfig(**values)


def test_runs_cover_every_variant_and_batch_size(tmp_path):
    names = set(study_runs(ResnetConfig()))
    assert names == {f"norm-{k}" for k in ("torch_bn", "bn", "in", "bin", "ln", "gn", "nn")} | {
        "batch-bn-b8", "batch-bn-b128", "batch-gn-b8", "batch-gn-b128"
    }


def test_study_writes_a_report_with_tables_curves_and_gradcam(tmp_path):
    out = tmp_path / "study"
    run_study(tiny_study(tmp_path), out)
    md = (out / "report.md").read_text()
    for name in ("norm-torch_bn", "norm-bn", "norm-gn", "batch-bn-b8", "batch-gn-b32"):
        assert (out / name / "metrics.json").is_file()
    assert "Sanity check: torch BatchNorm2d against our BN" in md
    assert "Batch size: BN and GN" in md
    assert "so batch 8 takes 4x as many SGD steps as batch 32" in md  # same lr and epochs at both sizes
    # each variant: error, accuracy, micro F1 and macro F1, train (eval mode) and val
    caption = "train (eval mode, no augmentation) and val error, accuracy, micro F1 and macro F1"
    assert sum(line.startswith("![") and caption in line for line in md.splitlines()) == 3
    assert "`train_aug/...`" in md
    # the names as the assignment writes them find their folders (Cattle-Egret, Indian-Peacock)
    assert (out / "gradcam" / "gradcam_Cattle-Egret.png").is_file()
    assert (out / "gradcam" / "gradcam_Indian-Peacock.png").is_file()
    for figure in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (out / figure).is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("](figures/")
    # summary.json: every variant's numbers as its metrics.json has them; the best chosen by val accuracy
    summary = json.loads((out / "summary.json").read_text())
    scores = {name: json.loads((out / name / "metrics.json").read_text())
              for name in ("norm-torch_bn", "norm-bn", "norm-gn", "batch-bn-b8", "batch-bn-b32", "batch-gn-b8", "batch-gn-b32")}
    for name, metrics in scores.items():
        key = name.removeprefix("norm-").removeprefix("batch-").replace("-", "_")
        assert summary[f"{key}_val_accuracy"] == metrics["val"]["accuracy"]
        assert summary[f"{key}_test_accuracy"] == metrics["test"]["accuracy"]
    best = max(scores, key=lambda name: scores[name]["val"]["accuracy"])
    assert summary["best_test_accuracy"] == scores[best]["test"]["accuracy"]
    assert summary["best_val_accuracy"] == max(m["val"]["accuracy"] for m in scores.values())


def test_a_gradcam_class_matching_no_folder_stops_the_study_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained before checking classes"))
    config = tiny_study(tmp_path, gradcam_classes=["Cattle Egret", "Copper Barbet"])
    with pytest.raises(ValueError, match=r"'Copper Barbet' matches no class folder in .*train \(closest: Coppersmith-Barbet"):
        run_study(config, tmp_path / "study")
    assert not (tmp_path / "study").exists()


def test_a_diverged_run_is_recorded_reported_and_not_retrained_and_the_study_goes_on(tmp_path, monkeypatch):
    config = tiny_study(tmp_path, epochs=1, gradcam_classes=["Cattle Egret"], gradcam_per_kind=1)
    runs = {"norm-bn": dataclasses.replace(config, norm="bn"), "norm-nn": dataclasses.replace(config, norm="nn", lr=1e6)}
    monkeypatch.setattr(study_module, "study_runs", lambda _config: runs)
    out = tmp_path / "study"

    run_study(config, out)
    record = json.loads((out / "norm-nn" / "diverged.json").read_text())
    assert record["epoch"] == 0 and math.isfinite(record["last_finite_loss"])
    assert re.search(r"loss became (nan|inf) at epoch 1, step \d+", record["error"])
    assert (out / "norm-bn" / "metrics.json").is_file() and not (out / "norm-nn" / "metrics.json").exists()
    row = f"| no norm | diverged at epoch 1 (last finite loss {record['last_finite_loss']:.4g}) |"
    assert row in (out / "report.md").read_text()
    assert "Grad-CAM of the best model (norm-bn)" in (out / "report.md").read_text()

    # the study assembled again from its folders sees the divergence and trains nothing
    real_epoch = train_module.train_epoch
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("retrained a recorded run"))
    run_study(config, out)
    assert row in (out / "report.md").read_text()

    # a single `train` of that folder stops with the usual error
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step \d+\. The run stops here"):
        train_module.train(runs["norm-nn"], out / "norm-nn")

    # --force trains the run again
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("retrained"))
    with pytest.raises(pytest.fail.Exception, match="retrained"):
        train_or_record_divergence(runs["norm-nn"], out / "norm-nn", force=True)
    assert not (out / "norm-nn" / "diverged.json").exists()


# ---------------------------------------------------------------- seeds, processes, plans


def two_runs(config: ResnetConfig) -> dict:
    return {"norm-bn": dataclasses.replace(config, norm="bn"), "norm-gn": dataclasses.replace(config, norm="gn")}


def small(tmp_path) -> ResnetConfig:
    return tiny_study(tmp_path, epochs=1, gradcam_classes=["Cattle Egret"], gradcam_per_kind=1)


@pytest.mark.usefixtures("one_thread")
def test_two_seeds_give_two_folders_per_variant_and_a_mean_std_table(tmp_path, monkeypatch):
    monkeypatch.setattr(study_module, "study_runs", two_runs)
    out = tmp_path / "study"
    run_study(small(tmp_path), out, StudyOptions(seeds=[0, 1]))
    md = (out / "report.md").read_text()
    for variant, label in (("norm-bn", "BN"), ("norm-gn", "GN")):
        assert sorted(p.name for p in (out / variant).iterdir()) == ["seed-0", "seed-1"]
        accuracy = []
        for seed in (0, 1):
            config = yaml.safe_load((out / variant / f"seed-{seed}" / "config.yaml").read_text())
            assert config["seed"] == seed
            accuracy.append(100 * json.loads((out / variant / f"seed-{seed}" / "metrics.json").read_text())["test"]["accuracy"])
        mean, std = statistics.mean(accuracy), statistics.stdev(accuracy)
        half = 12.706205 * std / math.sqrt(2)  # t(0.975, df 1) from a t table
        spread = f"{mean:.1f}" if std == 0 else f"{mean:.1f} ± {std:.1f}"
        assert re.search(rf"\| {label} \| 2 \| [^|]+ \| [^|]+ \| {re.escape(spread)} \| {mean - half:.1f} to "
                         rf"{mean + half:.1f} \|", md) or (std == 0 and f"| {label} | 2 |" in md)
        summary = json.loads((out / "summary.json").read_text())
        assert summary[f"{variant[5:]}_test_accuracy_mean"] == pytest.approx(mean / 100)
        assert summary[f"{variant[5:]}_test_accuracy_std"] == pytest.approx(std / 100)
    assert "## Seed noise" in md and "GN vs BN (test acc (%)): GN " in md
    assert "Grad-CAM of the best model (norm-" in md and "/seed-" in md


@pytest.mark.usefixtures("one_thread")
def test_jobs_2_trains_the_same_runs_as_jobs_1_and_reports_failed_and_diverged_runs(tmp_path, monkeypatch):
    config = small(tmp_path)
    monkeypatch.setattr(study_module, "study_runs", two_runs)
    run_study(config, tmp_path / "one")
    more = lambda c: two_runs(c) | {"norm-nn": dataclasses.replace(c, norm="nn", lr=1e6),  # noqa: E731
                                    "norm-xx": dataclasses.replace(c, norm="xx")}
    monkeypatch.setattr(study_module, "study_runs", more)
    run_study(config, tmp_path / "two", StudyOptions(jobs=2))
    for name in ("norm-bn", "norm-gn"):
        one, two = (json.loads((tmp_path / out / name / "metrics.json").read_text()) for out in ("one", "two"))
        for split in ("train", "val", "test"):
            assert two[split] == pytest.approx(one[split], rel=1e-5)
        assert (tmp_path / "two" / name / "config.yaml").read_text() == (tmp_path / "one" / name / "config.yaml").read_text()
        record = json.loads((tmp_path / "two" / name / "provenance.json").read_text())[0]
        assert record["pid"] != os.getpid() and record["torch_threads"] == max(1, os.cpu_count() // 2)
        assert "epoch 1: train acc" in (tmp_path / "two" / "logs" / f"{name}.log").read_text()
    assert json.loads((tmp_path / "two" / "norm-nn" / "diverged.json").read_text())["epoch"] == 0
    md = (tmp_path / "two" / "report.md").read_text()
    assert "| no norm | diverged at epoch 1" in md and "| GN |" in md
    assert re.search(r"left out of this report:\*\* norm-xx \(failed, ValueError: unknown norm kind 'xx'.* \(log "
                     r".*logs/norm-xx\.log\)\)", md)


def test_train_with_record_divergence_writes_the_record_and_ends_normally(tmp_path, capsys):
    config = small(tmp_path)
    preset = tmp_path / "nn.yaml"
    preset.write_text(yaml.safe_dump(run_fields(dataclasses.replace(config, norm="nn", lr=1e6))))
    out = tmp_path / "norm-nn"
    assert main(["resnet", "train", "--preset", str(preset), "--out", str(out), "--record-divergence"]) == 0
    assert json.loads(capsys.readouterr().out)["diverged"]["epoch"] == 0
    assert json.loads((out / "diverged.json").read_text())["epoch"] == 0
    assert main(["resnet", "train", "--preset", str(preset), "--out", str(out)]) == 2  # without it: the usual error


@pytest.mark.usefixtures("one_thread")
def test_a_plan_line_trains_its_run_and_report_only_names_the_missing(tmp_path, monkeypatch):
    config = small(tmp_path)
    monkeypatch.setattr(study_module, "study_runs", two_runs)
    out, plan = tmp_path / "study", tmp_path / "plan.sh"
    assert run_study(config, out, StudyOptions(plan=plan)) is None
    lines = [line for line in plan.read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 2 and not (out / "norm-bn").exists()
    subprocess.run(["bash", "-c", lines[0]], cwd=tmp_path / "..", check=True, capture_output=True)
    assert (out / "norm-bn" / "metrics.json").is_file() and not (out / "norm-gn").exists()
    assert yaml.safe_load((out / "norm-bn" / "config.yaml").read_text()) == run_fields(dataclasses.replace(config, norm="bn"))

    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("--report-only trained"))
    run_study(config, out, StudyOptions(report_only=True))
    md = (out / "report.md").read_text()
    assert "left out of this report:** norm-gn." in md and "| BN |" in md
