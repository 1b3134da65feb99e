"""The Slot Attention study end to end on tiny configs: its report, its generation cache, both decoders
with every flag reaching every run, `--vae`, the CLI, seeds, the VAE trained first, plans, partial reports
and scene styles."""

import argparse
import dataclasses
import json
import math
import re
import shlex
import statistics
import sys

import pytest
import torch
import yaml

import col775.slots.study as study_module
import col775.slots.train_vae as train_vae_module
from col775.cli import main
from col775.core.study import StudyOptions
from col775.slots import cli
from col775.slots.diffusion.vae import VQVAE
from col775.slots.study import run_study
from col775.slots.train import train
from tests.slots.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_study_writes_a_report_with_scores_masks_and_generated_images(cache, tmp_path, monkeypatch):
    out = tmp_path / "study"
    run_study({"sbd": tiny_config(cache, fid=True, epochs=2)}, out)
    html = (out / "report.html").read_text()
    for text in ("Results on the validation set", "FG-ARI", "Compositional generation", "the first generated images",
                 "Slots of validation images", "about 161", "Observations"):  # fmt: skip
        assert text in html, text
    assert html.count("data:image/png;base64") >= 4  # loss, ARI curve, masks, generated grid
    # The scores by object count hold every validation image once.
    md = (out / "report.md").read_text()
    section = md.split("Scores by number of objects")[1].split("###")[0]
    counts = [int(line.split("|")[2]) for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    assert sum(counts) == 6
    # The boundary paragraph quotes the run's cached evaluation.
    scores = json.loads((out / "sbd" / "evaluation" / "sbd.json").read_text())
    boundaries = md.split("Object boundaries")[1].split("###")[0]
    assert f"{100 * scores['boundary_share']:.1f}% of the validation" in boundaries
    assert f"FG-ARI is {100 * scores['fg_ari_interior']:.1f}%" in boundaries
    summary = json.loads((out / "summary.json").read_text())
    assert all(isinstance(summary[k], float) for k in ("sbd_ari", "sbd_fg_ari", "sbd_mse", "sbd_fid", "sbd_fg_ari_interior"))
    assert summary["sbd_fid"] > 0 and summary["sbd_sampler"] is None
    assert len(list((out / "generation" / "sbd" / "generated").glob("*.png"))) == 6  # as many as val images
    assert len(list((out / "generation" / "sbd" / "val").glob("*.png"))) == 6

    # A second call reuses the finished run and the cached generation: no training, no FID.
    monkeypatch.setattr(study_module, "fid_folders", lambda *a, **k: pytest.fail("FID computed twice"))
    monkeypatch.setattr(study_module, "compositional_generation", lambda *a, **k: pytest.fail("generated twice"))
    monkeypatch.setattr("col775.slots.train.train_epoch", lambda *a, **k: pytest.fail("trained twice"))
    run_study({"sbd": tiny_config(cache, fid=True, epochs=2)}, out)
    assert json.loads((out / "summary.json").read_text())["sbd_fid"] == summary["sbd_fid"]


def test_study_without_fid_still_generates(cache, tmp_path):
    out = tmp_path / "study"
    run_study({"sbd": tiny_config(cache, epochs=1)}, out)
    assert json.loads((out / "summary.json").read_text())["sbd_fid"] is None
    assert "FID was turned off" in (out / "report.md").read_text()


def spy_generation(monkeypatch) -> list:
    calls = []
    real = study_module.compositional_generation
    monkeypatch.setattr(study_module, "compositional_generation", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_the_generation_of_a_retrained_checkpoint_is_made_again(cache, tmp_path, monkeypatch):
    out = tmp_path / "study"
    config = tiny_config(cache, epochs=1)
    run_study({"sbd": config}, out)
    first = json.loads((out / "generation" / "sbd" / "generation.json").read_text())
    retrained = dataclasses.replace(config, lr=0.05)
    train(retrained, out / "sbd", force=True)  # the run is trained again outside the study
    calls = spy_generation(monkeypatch)
    run_study({"sbd": retrained}, out)
    assert calls == [1]
    again = json.loads((out / "generation" / "sbd" / "generation.json").read_text())
    assert again["key"]["checkpoint"] != first["key"]["checkpoint"]


def test_another_sampler_generates_again_and_is_labelled(cache, tmp_path, monkeypatch):
    torch.manual_seed(0)
    vae = tmp_path / "vae.pt"
    torch.save(VQVAE.small(num_codes=16).state_dict(), vae)
    out = tmp_path / "study"
    config = tiny_config(cache, "diffusion", vae=str(vae), epochs=1, sampler="ddim", sampler_steps=3)
    run_study({"diffusion": config}, out)
    calls = spy_generation(monkeypatch)
    monkeypatch.setattr("col775.slots.train.train_epoch", lambda *a, **k: pytest.fail("trained twice"))
    run_study({"diffusion": dataclasses.replace(config, sampler="ancestral")}, out)
    assert calls == [1]
    generation = json.loads((out / "generation" / "diffusion" / "generation.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert generation["sampler"] == summary["diffusion_sampler"] == "ancestral, 20 steps"
    assert "| latent diffusion | ancestral, 20 steps |" in (out / "report.md").read_text()


def test_study_of_both_decoders_passes_every_flag_to_every_run_and_takes_a_vae(cache, tmp_path, monkeypatch):
    torch.manual_seed(0)
    vae = tmp_path / "vae.pt"
    torch.save(VQVAE.small(num_codes=16).state_dict(), vae)
    values = dataclasses.asdict(tiny_config(cache))
    shared = {k: v for k, v in values.items() if k not in ("decoder", "lr", "epochs", "steps_per_epoch", "batch_size")}
    preset = tmp_path / "tiny.yaml"  # each decoder's own optimisation, as the real presets have
    preset.write_text(yaml.safe_dump(shared | {
        "sbd": {"lr": 0.001, "epochs": 3, "steps_per_epoch": 2, "batch_size": 8},
        "diffusion": {"lr": 0.0001, "epochs": 4, "steps_per_epoch": 3, "batch_size": 4},
    }))  # fmt: skip
    monkeypatch.setattr(train_vae_module, "train_vae", lambda *a, **k: pytest.fail("a VAE was trained"))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "both"
    args = parser.parse_args([
        "slots", "study", "--decoder", "both", "--preset", str(preset), "--out", str(out), "--vae", str(vae),
        "--epochs", "1", "--lr", "0.003", "--steps-per-epoch", "1", "--batch-size", "6", "--sampler", "ddim",
    ])  # fmt: skip
    assert args.handler(args) == 0
    for decoder in ("sbd", "diffusion"):
        run = yaml.safe_load((out / decoder / "config.yaml").read_text())
        assert (run["decoder"], run["epochs"], run["lr"], run["steps_per_epoch"], run["batch_size"]) == (
            decoder, 1, 0.003, 1, 6)  # fmt: skip
    assert yaml.safe_load((out / "diffusion" / "config.yaml").read_text())["vae"] == str(vae)
    assert not (out / "diffusion" / "vae").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert {"sbd_ari", "sbd_fg_ari", "diffusion_ari", "diffusion_fg_ari", "sbd_mse", "diffusion_mse"} <= set(summary)
    assert summary["diffusion_sampler"] == "DDIM, 3 steps"
    md = (out / "report.md").read_text()
    results = md.split("## Results on the validation set", 1)[1]
    assert "| spatial broadcast |" in results and "| latent diffusion | DDIM, 3 steps |" in results


def test_commands_take_the_image_size_of_the_data_unless_given(tmp_path):
    (tmp_path / "scenes.json").write_text(json.dumps({"size": 48}))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    for command in ("train-vae", "train-diffusion", "train", "study"):
        args = parser.parse_args(["slots", command, "--preset", "course", "--data", str(tmp_path)])
        assert cli._overrides(args)["image_size"] == 48, command
    args = parser.parse_args(["slots", "train-vae", "--data", str(tmp_path), "--image-size", "64"])
    assert cli._overrides(args)["image_size"] == "64"


def test_cli_trains_either_decoder_and_refuses_unknown_ones():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["slots", "study", "--preset", "demo", "--decoder", "both", "--out", "x", "--no-fid"])
    assert args.handler is cli._run_study and args.decoders == "both" and args.fid is False
    args = parser.parse_args(["slots", "train", "--decoder", "diffusion", "--epochs", "3", "--sampler", "ddim"])
    assert args.handler is cli._run_train and args.decoder == "diffusion" and args.epochs == "3"
    assert not hasattr(args, "fid")  # study-only settings are not train flags
    args = parser.parse_args(["slots", "train-diffusion"])
    assert args.handler is cli._run_train and args.decoder == "diffusion" and args.default_preset == "demo"
    with pytest.raises(SystemExit):
        parser.parse_args(["slots", "study", "--decoder", "transformer"])


# ---------------------------------------------------------------- seeds, VAE first, plans, scene styles


def both(cache, **changes) -> dict:
    """Both decoders at the tiny size, the diffusion run without --vae (so the study trains its VAE)."""
    return {decoder: tiny_config(cache, decoder, epochs=1, **changes) for decoder in ("sbd", "diffusion")}


def t_interval(values: list[float]) -> tuple[float, float]:
    """The 95% t-interval of the mean of two values, with t(0.975, df 1) from a t table."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    half = 12.706205 * std / math.sqrt(len(values))
    return mean - half, mean + half


def test_two_seeds_give_two_folders_per_run_one_shared_vae_and_a_mean_std_table(cache, tmp_path):
    out = tmp_path / "study"
    run_study(both(cache), out, StudyOptions(seeds=[0, 1]))
    assert (out / "vae" / "vae.pt").is_file() and yaml.safe_load((out / "vae" / "config.yaml").read_text())["seed"] == 0
    fg_ari = {}
    for decoder in ("sbd", "diffusion"):
        assert sorted(p.name for p in (out / decoder).iterdir()) == ["seed-0", "seed-1"]
        fg_ari[decoder] = []
        for seed in (0, 1):
            run = out / decoder / f"seed-{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["seed"] == seed
            if decoder == "diffusion":  # the study's one VAE, not one trained inside each run
                assert config["vae"] == str((out / "vae" / "vae.pt").resolve()) and not (run / "vae").exists()
            fg_ari[decoder].append(100 * json.loads((run / "metrics.json").read_text())["fg_ari"])
    md = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for decoder, label in (("sbd", "spatial broadcast"), ("diffusion", "latent diffusion")):
        values = fg_ari[decoder]
        low, high = t_interval(values)
        spread = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
        assert re.search(rf"\| {label} \| 2 \| {re.escape(spread)} \| {low:.1f} to {high:.1f} \|", md), (label, spread)
        assert summary[f"{decoder}_fg_ari"] == pytest.approx(statistics.mean(values) / 100)
        assert summary[f"{decoder}_fg_ari_std"] == pytest.approx(statistics.stdev(values) / 100)
    (a_low, a_high), (b_low, b_high) = t_interval(fg_ari["sbd"]), t_interval(fg_ari["diffusion"])
    verdict = "within seed noise" if a_low <= b_high and b_low <= a_high else "differs beyond seed noise"
    assert (f"spatial broadcast vs latent diffusion (FG-ARI (%)): spatial broadcast "
            f"{statistics.mean(fg_ari['sbd']):.1f} ± {statistics.stdev(fg_ari['sbd']):.1f} against latent diffusion "
            f"{statistics.mean(fg_ari['diffusion']):.1f} ± {statistics.stdev(fg_ari['diffusion']):.1f}: {verdict}.") in md
    assert "trained by this study first" in md


def plan_lines(plan) -> list[list[str]]:
    return [shlex.split(line) for line in plan.read_text().splitlines() if not line.startswith("#")]


def test_plan_trains_the_vae_first_its_lines_give_the_study_report_and_report_only_names_the_missing(
        cache, tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    values = dataclasses.asdict(tiny_config(cache, epochs=1))
    preset.write_text(yaml.safe_dump({k: v for k, v in values.items() if k != "decoder"}))
    out, plan = tmp_path / "study", tmp_path / "plan.sh"
    study = ["slots", "study", "--preset", str(preset), "--decoder", "both", "--out", str(out)]
    assert main([*study, "--plan", str(plan)]) == 0
    text = plan.read_text()
    lines = plan_lines(plan)
    assert [line[:5] for line in lines] == [[sys.executable, "-m", "col775", "slots", verb]
                                            for verb in ("train-vae", "train", "train")]
    assert [line[line.index("--out") + 1] for line in lines] == [str(out.resolve() / n) for n in ("vae", "sbd", "diffusion")]
    assert text.index("First these") < text.index("train-vae") < text.index("Then, once every line above") < text.index(" train ")
    assert not (out / "sbd").exists()

    assert main([*study, "--report-only"]) == 2
    assert "no run of the study" in capsys.readouterr().err
    for line in lines[:2]:  # the VAE and the SBD run, each its own command
        assert main(line[3:]) == 0
    assert main([*study, "--report-only"]) == 0
    md = (out / "report.md").read_text()
    assert "left out of this report:** diffusion." in md and "| spatial broadcast |" in md
    assert "| latent diffusion |" not in md
    assert main(lines[2][3:]) == 0  # reads the VAE the first line trained
    assert not (out / "diffusion" / "vae").exists()
    assert main([*study, "--report-only"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for decoder in ("sbd", "diffusion"):  # the report's numbers are each plan-trained run's own
        metrics = json.loads((out / decoder / "metrics.json").read_text())
        assert summary[f"{decoder}_fg_ari"] == metrics["fg_ari"] and summary[f"{decoder}_mse"] == metrics["mse"]
    assert "Incomplete" not in (out / "report.md").read_text()

    direct = tmp_path / "direct"  # the study trained in one call gives the same numbers
    assert main([*study[:-1], str(direct)]) == 0
    again = json.loads((direct / "summary.json").read_text())
    for key in ("sbd_fg_ari", "sbd_mse", "diffusion_fg_ari", "diffusion_mse"):
        assert again[key] == pytest.approx(summary[key], rel=1e-4, abs=1e-6), key


def test_the_vae_trains_before_the_diffusion_runs_and_a_failed_vae_stops_only_them(cache, tmp_path, monkeypatch):
    out = tmp_path / "study"
    planned = study_module.study_runs(both(cache), out)
    calls = []

    def fake_train_runs(runs, folder, trainer, options):
        calls.append((trainer.command, list(runs)))
        return {"vae": "ValueError: broken (log x)"} if trainer.command == "train-vae" else {}

    monkeypatch.setattr(study_module, "train_runs", fake_train_runs)
    failures = study_module.train_in_order(planned.vaes, planned.runs, out, StudyOptions(jobs=2))
    assert calls == [("train-vae", ["vae"]), ("train", ["sbd"])]
    assert failures == {"vae": "ValueError: broken (log x)", "diffusion": "its VAE run vae failed"}


def test_scene_styles_train_each_decoder_on_each_style_with_a_table_and_summary_keys_each(cache, tmp_path):
    out = tmp_path / "styles"
    preset = tmp_path / "tiny.yaml"
    values = dataclasses.asdict(tiny_config(cache, epochs=1))
    preset.write_text(yaml.safe_dump({k: v for k, v in values.items() if k != "decoder"}))
    assert main(["slots", "study", "--preset", str(preset), "--out", str(out), "--scene-styles", "simple,textured"]) == 0
    assert sorted(p.name for p in out.iterdir() if (p / "config.yaml").is_file()) == ["simple-sbd", "textured-sbd"]
    summary = json.loads((out / "summary.json").read_text())
    for style, prefix in (("simple", ""), ("textured", "textured_")):
        run = out / f"{style}-sbd"
        assert yaml.safe_load((run / "config.yaml").read_text())["scene_style"] == style
        metrics = json.loads((run / "metrics.json").read_text())
        assert summary[f"{prefix}sbd_fg_ari"] == metrics["fg_ari"] and summary[f"{prefix}sbd_ari"] == metrics["ari"]
    assert "simple_sbd_fg_ari" not in summary
    md = (out / "report.md").read_text()
    for style in ("simple", "textured"):
        table = md.split(f"## Results on the validation set: {style} scenes", 1)[1].split("##", 1)[0]
        assert table.count("| spatial broadcast |") == 1
        assert f"## The spatial broadcast decoder ({style} scenes)" in md


@pytest.mark.parametrize("flags, message", [
    (["--scene-styles", "simple", "--data", ".", "--image-size", "16"], "drop --scene-styles"),
    (["--scene-styles", "simple,watercolour"], "scene_styles takes each of"),
    (["--scene-style", "watercolour"], "scene_style must be one of"),
])
def test_bad_scene_styles_are_one_clear_error(flags, message, capsys, tmp_path):
    assert main(["slots", "study", "--out", str(tmp_path / "study"), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("col775: error: ") and message in error


def test_the_report_states_the_mask_entropy_penalty_and_labels_its_training_curve(cache, tmp_path):
    penalised = tiny_config(cache, fid=False, epochs=2, mask_entropy_weight=0.1, mask_entropy_start=1,
                            mask_entropy_full=2)  # fmt: skip
    run_study({"sbd": penalised}, tmp_path / "penalised")
    md = (tmp_path / "penalised" / "report.md").read_text()
    assert "times a weight ramped from 0 at step 1 to 0.1 at step 2; the validation loss is the MSE alone" in md
    assert "training loss (reconstruction MSE + the mask-entropy penalty) and validation reconstruction MSE" in md
    # the penalised training loss is not set against the validation MSE
    assert "holds the mask-entropy penalty, so it is not compared" in md and "overfit noticeably" not in md
    run_study({"sbd": tiny_config(cache, fid=False, epochs=2)}, tmp_path / "plain")
    md = (tmp_path / "plain" / "report.md").read_text()
    assert "mask-entropy penalty" not in md and "train and validation reconstruction loss (MSE) per epoch" in md
    assert "x the training loss of that epoch" in md
