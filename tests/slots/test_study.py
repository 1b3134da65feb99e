"""The Slot Attention study end to end on tiny configs: its report, its generation cache, both decoders
with every flag reaching every run, `--vae`, and the CLI."""

import argparse
import dataclasses
import json

import pytest
import torch
import yaml

import col775.slots.study as study_module
import col775.slots.train_vae as train_vae_module
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
    summary = json.loads((out / "summary.json").read_text())
    assert all(isinstance(summary[k], float) for k in ("sbd_ari", "sbd_fg_ari", "sbd_mse", "sbd_fid"))
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
