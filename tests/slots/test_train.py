"""The one training loop, with either decoder: metrics, resume after a crash, NaN guard, the VAE of a
diffusion run (given or trained), the learning-rate schedule, and evaluation cached per sampler and
per checkpoint."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import col775.slots.train as train_module
import col775.slots.train_vae as train_vae_module
from col775.core.training import NonFiniteLossError
from col775.slots.diffusion.ddpm import GaussianDiffusion
from col775.slots.diffusion.model import SlotDiffusion
from col775.slots.diffusion.vae import VQVAE
from col775.slots.sbd import SlotAutoencoder
from col775.slots.train import learning_rate, mask_entropy_weight, train
from tests.slots.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
DECODERS = ("sbd", "diffusion")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One scene cache for the module: the scenes are generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def vae_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "given-vae.pt"
    torch.save(VQVAE.small(num_codes=16).state_dict(), path)
    return path


class Crash(RuntimeError):
    pass


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("decoder", DECODERS)
def test_both_decoders_train_through_the_one_loop_and_a_finished_run_is_not_retrained(decoder, cache, tmp_path, monkeypatch):
    epochs = []
    real_epoch = train_module.train_epoch
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: epochs.append(a[6]) or real_epoch(*a, **k))
    metrics = train(tiny_config(cache, decoder), tmp_path / "run")
    assert epochs == [0, 1, 2]
    for key in ("ari", "fg_ari", "miou", "mse", "val_loss"):
        assert np.isfinite(metrics[key]), key
    assert -1.0 <= metrics["ari"] <= 1.0 and metrics["mse"] > 0 and metrics["decoder"] == decoder
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["ari"] == pytest.approx(metrics["ari"]) and saved["val_images"] == 6
    records = history(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all({"train/loss", "val/loss", "val/ari", "val/fg_ari", "lr"} <= set(r) for r in records)
    assert metrics["val_loss"] == pytest.approx(min(r["val/loss"] for r in records))
    if decoder == "diffusion":  # no --vae: one was trained into <out>/vae first and used
        assert metrics["vae_file"] == str(tmp_path / "run" / "vae" / "vae.pt") and metrics["latent_scale"] > 0

    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("a finished run trained again"))
    assert train(tiny_config(cache, decoder), tmp_path / "run") == saved


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_crashed_run_resumes_and_matches_an_uninterrupted_one(decoder, cache, tmp_path, monkeypatch, vae_path):
    config = tiny_config(cache, decoder, vae=str(vae_path), slot_init="learned")
    straight = train(config, tmp_path / "straight")

    real_epoch = train_module.train_epoch

    def crash_in_second_epoch(*args, **kwargs):
        if args[6] == 1:  # the epoch argument
            raise Crash("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", crash_in_second_epoch)
    with pytest.raises(Crash):
        train(config, tmp_path / "resumed")
    assert [r["epoch"] for r in history(tmp_path / "resumed")] == [0]
    assert not (tmp_path / "resumed" / "metrics.json").exists()

    calls = []
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: calls.append(a[6]) or real_epoch(*a, **k))
    resumed = train(config, tmp_path / "resumed")
    assert calls == [1, 2]  # epoch 0 came from the checkpoint
    a, b = history(tmp_path / "straight"), history(tmp_path / "resumed")
    assert [r["epoch"] for r in b] == [0, 1, 2]
    for key in ("train/loss", "val/loss", "lr", "step"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, err_msg=key)
    assert resumed["mse"] == pytest.approx(straight["mse"], rel=1e-5)


@pytest.mark.parametrize("model_class", [SlotAutoencoder, SlotDiffusion])
def test_nan_loss_stops_the_run(model_class, cache, tmp_path, monkeypatch, vae_path):
    decoder = "sbd" if model_class is SlotAutoencoder else "diffusion"
    monkeypatch.setattr(model_class, "loss", lambda self, images, generator=None: (images * float("nan")).mean())
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        train(tiny_config(cache, decoder, vae=str(vae_path)), tmp_path / "nan")


def test_a_given_vae_is_not_trained_and_stays_frozen_through_training(cache, tmp_path, vae_path, monkeypatch):
    monkeypatch.setattr(train_vae_module, "train_vae", lambda *a, **k: pytest.fail("a VAE was trained"))
    metrics = train(tiny_config(cache, "diffusion", vae=str(vae_path)), tmp_path / "run")
    assert metrics["vae_file"] == str(vae_path) and not (tmp_path / "run" / "vae").exists()
    given = torch.load(vae_path, weights_only=True)
    model_state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["objects"]["model"]
    for key, value in given.items():
        assert torch.equal(model_state[f"vae.{key}"], value), key
    # ...while the UNet trained: its zero-initialised output conv has moved.
    assert model_state["unet.out.2.weight"].abs().sum() > 0
    assert float(model_state["latent_scale"]) == pytest.approx(metrics["latent_scale"])


def test_ancestral_sampling_is_the_default_and_every_number_names_its_sampler(cache, tmp_path, vae_path, monkeypatch):
    config = tiny_config(cache, "diffusion", vae=str(vae_path), epochs=1)
    config = dataclasses.replace(config, sampler=type(config)().sampler)  # the dataclass default
    calls = []
    real_loop = GaussianDiffusion.p_sample_loop
    monkeypatch.setattr(GaussianDiffusion, "p_sample_loop", lambda *a, **k: calls.append(1) or real_loop(*a, **k))
    monkeypatch.setattr(GaussianDiffusion, "ddim_sample", lambda *a, **k: pytest.fail("DDIM used by default"))
    metrics = train(config, tmp_path / "run")
    assert calls and metrics["sampler"] == "ancestral, 20 steps"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["sampler"] == "ancestral, 20 steps"


def test_another_sampler_is_evaluated_again_without_training(cache, tmp_path, vae_path, monkeypatch):
    config = tiny_config(cache, "diffusion", vae=str(vae_path), epochs=1)
    ancestral = train(config, tmp_path / "run")
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    ddim = train(dataclasses.replace(config, sampler="ddim", sampler_steps=3), tmp_path / "run")
    assert ddim["sampler"] == "DDIM, 3 steps" and ancestral["sampler"] == "ancestral, 20 steps"
    assert ddim["mse"] != ancestral["mse"]
    # Both evaluations are kept; asking for the first sampler again gives its numbers without evaluating.
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: pytest.fail("evaluated twice"))
    again = train(config, tmp_path / "run")
    assert (again["sampler"], again["mse"]) == (ancestral["sampler"], ancestral["mse"])


def test_a_retrained_run_is_evaluated_again(cache, tmp_path, monkeypatch):
    config = tiny_config(cache, epochs=1)
    first = train(config, tmp_path / "run")
    calls = []
    real_evaluate = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: calls.append(a[3]) or real_evaluate(*a, **k))
    retrained = train(dataclasses.replace(config, lr=0.05), tmp_path / "run", force=True)
    assert calls.count("final val") == 1
    assert retrained["checkpoint"] != first["checkpoint"] and retrained["mse"] != first["mse"]


def test_lr_schedule_warms_up_then_decays():
    config = tiny_config("unused", lr=4e-4, warmup_steps=10_000, decay_rate=0.5, decay_steps=100_000)
    assert learning_rate(config, 0) == 0.0
    assert learning_rate(config, 5_000) == pytest.approx(4e-4 * 0.5 * 0.5**0.05)
    assert learning_rate(config, 110_000) == pytest.approx(4e-4 * 0.5**1.1)
    assert learning_rate(dataclasses.replace(config, warmup_steps=0), 0) == 4e-4


@pytest.mark.parametrize("decoder", DECODERS)
def test_compile_trains_the_trainable_parts_compiled_to_the_same_losses_as_eager(decoder, cache, tmp_path,
                                                                                monkeypatch, vae_path):
    """`--compile` compiles the slot encoder and the decoder (or UNet), not the frozen VAE, each as whole
    graphs, and trains to eager's losses. The graphs run through AOT autograd without inductor's C++ code
    generation (minutes on this CPU); benchmarks/bench_compile.py runs the real thing."""
    from torch._dynamo.utils import counters

    compiled = []
    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self: compiled.append(type(self).__name__) or real_compile(self, backend="aot_eager"))
    config = tiny_config(cache, decoder, vae=str(vae_path) if decoder == "diffusion" else None, epochs=1,
                         steps_per_epoch=2, val_every=1)
    eager = train(config, tmp_path / "eager")
    assert not compiled
    torch._dynamo.reset()
    counters.clear()
    fast = train(dataclasses.replace(config, compile=True), tmp_path / "compiled")
    assert compiled == (["SlotEncoder", "SpatialBroadcastDecoder"] if decoder == "sbd" else ["SlotEncoder", "UNet"])
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"]
    history = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("eager", "compiled")]
    for key in ("train/loss", "val/loss"):
        assert [r[key] for r in history[1]] == pytest.approx([r[key] for r in history[0]], rel=1e-4), key
    assert fast["mse"] == pytest.approx(eager["mse"], rel=1e-4)


@pytest.mark.parametrize("decoder", DECODERS)
def test_bf16_trains_under_autocast_and_scores_in_float32(decoder, cache, tmp_path, monkeypatch, vae_path):
    """`--bf16` runs each training step's forward under bf16 autocast (the decoder's or UNet's output comes
    out in bfloat16 there), its loss in float32 and close to float32 training's; validation and the final
    scores run in float32 (every output float32)."""
    seen = []  # (training, dtype) of each output of the part that decodes
    part = SlotAutoencoder if decoder == "sbd" else SlotDiffusion
    real_init = part.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        decoding = self.decoder if decoder == "sbd" else self.unet
        decoding.register_forward_hook(lambda module, inputs, out: seen.append((module.training, out.dtype)))

    monkeypatch.setattr(part, "__init__", init)
    config = tiny_config(cache, decoder, vae=str(vae_path) if decoder == "diffusion" else None, epochs=1,
                         steps_per_epoch=2, val_every=1)
    plain = train(config, tmp_path / "float32")
    assert {dtype for _, dtype in seen} == {torch.float32}
    seen.clear()
    fast = train(dataclasses.replace(config, bf16=True), tmp_path / "bf16")
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    losses = [[r["train/loss"] for r in history(tmp_path / run)] for run in ("float32", "bf16")]
    assert losses[1] == pytest.approx(losses[0], rel=0.05)
    assert np.isfinite(fast["mse"]) and fast["mse"] == pytest.approx(plain["mse"], rel=0.05)


def test_mask_entropy_weight_is_off_then_ramps_linearly_then_holds():
    config = tiny_config("unused", mask_entropy_weight=0.04, mask_entropy_start=100, mask_entropy_full=300)
    weights = [mask_entropy_weight(config, step) for step in (0, 99, 100, 200, 300, 10_000)]
    assert weights == pytest.approx([0.0, 0.0, 0.0, 0.02, 0.04, 0.04])
    at_once = dataclasses.replace(config, mask_entropy_full=100)
    assert [mask_entropy_weight(at_once, s) for s in (99, 100)] == [0.0, 0.04]
    with pytest.raises(ValueError, match="mask entropy"):
        tiny_config("unused", mask_entropy_start=10, mask_entropy_full=5)


def test_each_training_step_of_the_sbd_takes_the_scheduled_mask_entropy_weight(cache, tmp_path, monkeypatch):
    seen = []
    real_loss = SlotAutoencoder.loss

    def spy(model, images, generator=None):
        if model.training:
            seen.append(model.mask_entropy_weight)
        return real_loss(model, images, generator)

    monkeypatch.setattr(SlotAutoencoder, "loss", spy)
    config = tiny_config(cache, mask_entropy_weight=0.3, mask_entropy_start=1, mask_entropy_full=4)
    train(config, tmp_path / "run")
    assert seen == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3, 0.3])  # 3 epochs of 2 steps
