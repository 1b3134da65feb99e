"""`train-vae`: a plain strict-loading vae.pt, codebook upkeep, resume after an interruption, the CLI."""

import argparse
import json

import pytest
import torch

from col775.slots import cli
from col775.slots import train_vae as train_vae_module
from col775.slots.config import SlotsConfig, load_slots_config
from col775.slots.diffusion.vae import VQVAE
from col775.slots.train_vae import CodeCounter, train_vae, vae_file
from tests.slots.tiny import tiny_config as tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(cache, **changes) -> SlotsConfig:
    values = dict(n_train=12, n_val=4, vae_epochs=2, vae_steps_per_epoch=3, vae_lr=1e-3, vae_restart_every=2,
                  eval_batch_size=4)  # fmt: skip
    return tiny(cache, "diffusion", **(values | changes))


def test_vae_pt_is_a_plain_state_dict_loading_strictly_and_usage_is_logged(tmp_path):
    config = tiny_config(tmp_path / "cache")
    metrics = train_vae(config, tmp_path / "run")
    state = torch.load(vae_file(tmp_path / "run"), map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    vae = VQVAE.small(num_codes=16)
    vae.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError):
        VQVAE.small(num_codes=32).load_state_dict(state, strict=True)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]
    for record in history:
        assert 1.0 <= record["train/perplexity"] <= 16 and 0 < record["val/codes_used"] <= 1
    # The first codebook is a tiny uniform one most latents ignore: its unused rows are restarted.
    assert history[0]["train/codes_restarted"] > 0
    assert metrics["recon_mse"] == pytest.approx(min(r["val/recon_mse"] for r in history))
    # vae.pt holds the best epoch's weights: its val MSE is the logged best.
    again = train_vae_module.evaluate_vae(vae, _val_loader(config), torch.device("cpu"), 16)
    assert again["recon_mse"] == pytest.approx(metrics["recon_mse"], rel=1e-5)


def _val_loader(config):
    from col775.slots.loaders import make_loaders

    return make_loaders(config).val


def test_code_counter_restarts_at_the_same_steps_across_epochs():
    counter = CodeCounter(4)
    counter.add(torch.tensor([[0, 0], [1, 1]]))
    assert counter.counts.tolist() == [2, 2, 0, 0] and counter.steps == 1
    restored = CodeCounter(4)
    restored.load_state_dict(counter.state_dict())
    assert restored.counts.tolist() == [2, 2, 0, 0] and restored.steps == 1
    restored.reset()
    assert restored.counts.sum() == 0 and restored.steps == 0 and counter.steps == 1


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "cache", vae_epochs=3, vae_steps_per_epoch=2)
    train_vae(config, tmp_path / "straight")
    expected = torch.load(vae_file(tmp_path / "straight"), weights_only=True)

    real_epoch = train_vae_module.train_vae_epoch

    def dies_in_epoch_two(vae, batches, optimizer, counter, config, device, epoch, total):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(vae, batches, optimizer, counter, config, device, epoch, total)

    monkeypatch.setattr(train_vae_module, "train_vae_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_vae(config, tmp_path / "resumed")
    assert not vae_file(tmp_path / "resumed").exists()
    monkeypatch.setattr(train_vae_module, "train_vae_epoch", real_epoch)
    train_vae(config, tmp_path / "resumed")
    resumed = torch.load(vae_file(tmp_path / "resumed"), weights_only=True)
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_cli_flags_override_the_demo_preset_and_a_finished_run_is_reused(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "slots", "train-vae", "--out", str(tmp_path / "run"), "--image-size", "16", "--n-train", "8", "--n-val", "4",
        "--vae-epochs", "1", "--vae-steps-per-epoch", "1", "--vae-batch-size", "4", "--eval-batch-size", "4",
        "--vae-num-codes", "8", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
    ])  # fmt: skip
    config = load_slots_config("demo", cli._overrides(args), "diffusion")
    assert config.vae_arch == "tiny" and config.image_size == 16 and config.vae_num_codes == 8
    assert args.handler(args) == 0
    assert vae_file(tmp_path / "run").is_file()
    # A second call finds the finished run and does not train again.
    monkeypatch.setattr(train_vae_module, "train_vae_epoch", pytest.fail)
    assert args.handler(args) == 0
