"""`train-diffusion` end to end on tiny generated scenes: metrics, frozen VAE, NaN guard, resume, the report."""

import argparse
import json

import pytest
import torch

from col775.core.config import load_config
from col775.core.training import NonFiniteLossError
from col775.slots import train_diffusion as train_module
from col775.slots.cli_diffusion import add_train_diffusion
from col775.slots.config import SlotsConfig
from col775.slots.diffusion_study import comparison_table, diffusion_config_from, diffusion_report
from col775.slots.slot_diffusion import SlotDiffusion, SlotDiffusionConfig
from col775.slots.train_diffusion import GENERATED_DIR, train_diffusion
from col775.slots.vae import VQVAE


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def vae_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "given-vae.pt"
    torch.save(VQVAE.small(num_codes=16).state_dict(), path)
    return path


def tiny_config(tmp_path, **changes) -> SlotDiffusionConfig:
    values = dict(
        image_size=16, n_train=8, n_val=4, max_objects=2, num_slots=3, slot_dim=16, slot_hidden_dim=16,
        encoder_channels=[8], encoder_strides=[2], vae_arch="small", vae_num_codes=16, vae_epochs=1,
        vae_steps_per_epoch=1, vae_batch_size=4, unet_base_channels=8, unet_channel_mults=[1, 2],
        unet_num_res_blocks=1, unet_attention_resolutions=[2], unet_head_channels=8, unet_norm_groups=4,
        num_timesteps=20, sampler_steps=3, batch_size=4, eval_batch_size=4, epochs=2, steps_per_epoch=2,
        lr=1e-3, warmup_steps=1, grad_clip=1.0, val_every=1, fid=False, fid_batch_size=4,
        cache_dir=str(tmp_path / "cache"), device="cpu",
    )  # fmt: skip
    return SlotDiffusionConfig(**(values | changes))


def test_end_to_end_writes_every_score_trains_its_own_vae_and_reports(tmp_path):
    config = tiny_config(tmp_path, fid=True, figure_images=2)
    report = diffusion_report(config, tmp_path)  # trains <out>/diffusion, then draws its figures
    run = tmp_path / "diffusion"
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("ari", "fg_ari", "miou", "mse", "fid", "val_loss"):
        assert isinstance(saved[key], float) and saved[key] == saved[key], key
    assert -1 <= saved["ari"] <= 1 and saved["mse"] >= 0 and saved["fid"] >= 0
    assert saved["sampler"] == "ddim" and saved["sampler_steps"] == 3
    assert saved["fid_images"] == 4 and len(list((run / GENERATED_DIR).glob("*.png"))) == 4
    # No --vae: one was trained into <out>/vae first and used.
    assert (run / "vae" / "vae.pt").is_file()
    assert saved["vae_file"] == str(run / "vae" / "vae.pt")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]
    assert all({"train/loss", "val/loss", "val/ari", "val/fg_ari", "lr"} <= set(r) for r in history)
    # The report: its numbers are the run's, every figure exists, and the comparison table takes both decoders.
    summary = json.loads((tmp_path / "diffusion-summary.json").read_text())
    assert {k: summary[k] for k in ("ari", "fg_ari", "mse", "fid")} == {k: saved[k] for k in ("ari", "fg_ari", "mse", "fid")}
    comparison_table(report, {"spatial broadcast": {"ari": 0.5, "fg_ari": 0.25, "mse": 0.01, "fid": 90.0},
                              "latent diffusion": summary})
    report.write(tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"| latent diffusion | {100 * saved['ari']:.1f} | {100 * saved['fg_ari']:.1f} |" in text
    assert "| spatial broadcast | 50.0 | 25.0 | 0.01 | 90 |" in text
    figures = [line for line in text.splitlines() if line.startswith("![")]
    assert len(figures) == 5  # loss, ARI, reconstructions, attention masks, generated scenes
    assert all((tmp_path / "report" / line.split("](")[1].rstrip(")")).is_file() for line in figures)


def test_the_given_vae_is_frozen_through_training(tmp_path, vae_path):
    config = tiny_config(tmp_path, vae=str(vae_path))
    train_diffusion(config, tmp_path / "run")
    given = torch.load(vae_path, weights_only=True)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    model_state = checkpoint["objects"]["model"]
    for key, value in given.items():
        assert torch.equal(model_state[f"vae.{key}"], value), key
    # ...while the UNet trained: its zero-initialised output conv has moved.
    assert model_state["unet.out.2.weight"].abs().sum() > 0
    assert float(model_state["latent_scale"]) > 0
    assert not (tmp_path / "run" / "vae").exists()


def test_a_nan_loss_stops_the_run_with_a_clear_error(tmp_path, vae_path, monkeypatch):
    monkeypatch.setattr(SlotDiffusion, "loss", lambda self, images, t=None, noise=None: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        train_diffusion(tiny_config(tmp_path, vae=str(vae_path)), tmp_path / "run")


def test_an_interrupted_run_resumes_to_the_same_history(tmp_path, vae_path, monkeypatch):
    config = tiny_config(tmp_path, vae=str(vae_path), epochs=3, steps_per_epoch=1, slot_init="learned")
    straight = train_diffusion(config, tmp_path / "straight")
    real_epoch = train_module.train_epoch

    def dies_in_epoch_two(model, batches, optimizer, scheduler, config, device, epoch, total):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(model, batches, optimizer, scheduler, config, device, epoch, total)

    monkeypatch.setattr(train_module, "train_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(config, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    resumed = train_diffusion(config, tmp_path / "resumed")

    def history(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert [r["epoch"] for r in history("resumed")] == [0, 1, 2]
    for a, b in zip(history("straight"), history("resumed")):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-5)
    assert resumed["mse"] == pytest.approx(straight["mse"], rel=1e-5)


def test_cli_parses_every_field_and_reports_a_missing_vae(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_diffusion(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-diffusion", "--out", str(tmp_path / "run"), "--vae", str(tmp_path / "nope.pt"),
                              "--sampler", "ancestral", "--unet-channel-mults", "1,2", "--image-size", "16",
                              "--cache-dir", str(tmp_path / "cache"), "--n-train", "4", "--n-val", "2"])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        args.handler(args)


def test_study_config_shares_the_spatial_broadcast_runs_data_and_encoder():
    sbd = load_config(SlotsConfig, "slots", "demo", {"num_slots": 6, "seed": 3})
    config = diffusion_config_from(sbd, "diffusion-demo")
    shared = ("image_size", "n_train", "num_slots", "slot_dim", "encoder_channels", "encoder_strides", "seed", "fid")
    assert all(getattr(config, name) == getattr(sbd, name) for name in shared)
    assert config.decoder == "diffusion" and config.vae_arch == "tiny" and config.unet_channel_mults == [1, 2]
