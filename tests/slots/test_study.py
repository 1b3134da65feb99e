"""The Slot Attention study end to end on a tiny config, its caches, its presets and its CLI."""

import argparse
import json

import pytest

import col775.slots.study as study_module
from col775.core.config import load_config
from col775.slots import cli
from col775.slots.autoencoder import course_config, course_recipe
from col775.slots.config import SlotsConfig
from col775.slots.study import decoder_spec, run_study


def tiny_config(cache_dir, **overrides) -> SlotsConfig:
    values = dict(
        cache_dir=str(cache_dir), image_size=16, n_train=24, n_val=3, max_objects=2, num_slots=3, slot_dim=8,
        slot_hidden_dim=16, encoder_channels=[8, 8], encoder_strides=[2, 1], decoder_broadcast=4,
        decoder_channels=[8, 8], decoder_strides=[2, 2], batch_size=8, eval_batch_size=8, epochs=2,
        steps_per_epoch=2, warmup_steps=2, decay_steps=100, device="cpu", figure_images=2,
    )  # fmt: skip
    return SlotsConfig(**(values | overrides))


def test_study_writes_a_report_with_scores_masks_and_generated_images(tmp_path, monkeypatch):
    out = tmp_path / "study"
    run_study(tiny_config(tmp_path / "cache"), out)
    html = (out / "report.html").read_text()
    for text in ("Results on the validation set", "FG-ARI", "Compositional generation", "The first generated images",
                 "Slots of validation images", "about 161", "Observations"):  # fmt: skip
        assert text in html, text
    assert html.count("data:image/png;base64") >= 4  # loss, ARI curve, masks, generated grid
    summary = json.loads((out / "summary.json").read_text())
    assert all(isinstance(summary[k], float) for k in ("ari", "fg_ari", "mse", "fid"))
    assert summary["fid"] > 0
    assert len(list((out / "generation" / "sbd" / "generated").glob("*.png"))) == 3  # as many as val images
    assert len(list((out / "generation" / "sbd" / "val").glob("*.png"))) == 3

    # A second call reuses the finished run and the cached generation: no training, no FID.
    monkeypatch.setattr(study_module, "fid_folders", lambda *a, **k: pytest.fail("FID computed twice"))
    monkeypatch.setattr(study_module, "compositional_generation", lambda *a, **k: pytest.fail("generated twice"))
    monkeypatch.setattr("col775.slots.train.train_epoch", lambda *a, **k: pytest.fail("trained twice"))
    run_study(tiny_config(tmp_path / "cache"), out)
    assert json.loads((out / "summary.json").read_text())["fid"] == summary["fid"]


def test_study_without_fid_still_generates(tmp_path):
    out = tmp_path / "study"
    run_study(tiny_config(tmp_path / "cache", fid=False, epochs=1), out)
    assert json.loads((out / "summary.json").read_text())["fid"] is None
    assert "FID was turned off" in (out / "report.md").read_text()


def test_unknown_decoders_are_refused():
    with pytest.raises(ValueError, match="decoder must be one of"):
        SlotsConfig(decoder="transformer")
    with pytest.raises(ValueError, match="available"):
        decoder_spec("transformer")


def test_course_preset_is_the_papers_model_and_recipe():
    config = load_config(SlotsConfig, "slots", "course", {})
    assert config.model_config() == course_config()
    paper = course_recipe()
    ours = config.recipe()
    assert (ours.lr, ours.warmup_steps, ours.decay_rate, ours.decay_steps, ours.batch_size) == (
        paper.lr, paper.warmup_steps, paper.decay_rate, paper.decay_steps, paper.batch_size,
    )  # fmt: skip
    assert (config.num_slots, config.slot_dim, config.slot_iters, config.image_size) == (11, 64, 3, 128)


def test_demo_preset_is_small_and_valid():
    config = load_config(SlotsConfig, "slots", "demo", {})
    assert config.model_config().image_size == 32 and config.max_objects <= 4
    assert config.epochs * config.steps_per_epoch <= 1000


def test_cli_has_train_and_study_with_a_decoder_choice():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["slots", "study", "--preset", "demo", "--decoder", "sbd", "--out", "x", "--no-fid"])
    assert args.handler is cli._run_study and args.decoder == "sbd" and args.fid is False
    args = parser.parse_args(["slots", "train", "--decoder", "sbd", "--epochs", "3"])
    assert args.handler is cli._run_train and args.epochs == "3"
    assert not hasattr(args, "fid")  # study-only settings are not train flags
