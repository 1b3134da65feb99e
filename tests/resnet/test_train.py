"""End-to-end behaviour of one training run: metrics, resuming, finished runs, NaN guard, DDP."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from col775.core.training import NonFiniteLossError
from col775.resnet import train as train_module
from col775.resnet.config import ResnetConfig
from col775.resnet.train import train


def tiny(tmp_path: Path, **changes) -> ResnetConfig:
    values = dict(
        image_size=16, synthetic_train_per_class=4, synthetic_val_per_class=2, synthetic_test_per_class=2,
        n=1, epochs=2, batch_size=16, eval_batch_size=64, lr=0.05, warmup_epochs=0, norm="bn",
        cache_dir=str(tmp_path / "cache"), device="cpu",
    )
    values.update(changes)
    return ResnetConfig(**values)


def test_metrics_shape_and_history(tmp_path):
    metrics = train(tiny(tmp_path), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert set(on_disk[split]) == {"loss", "accuracy", "micro_f1", "macro_f1"}
        # single-label classification: micro F1 is accuracy (sklearn computes it independently)
        assert on_disk[split]["micro_f1"] == pytest.approx(on_disk[split]["accuracy"])
    assert metrics["data"]["split_sizes"] == {"train": 100, "val": 50, "test": 50}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]
    assert {"train/loss", "val/accuracy", "val/macro_f1"} <= set(json.loads(lines[0]))
    assert list((tmp_path / "run" / "tb").iterdir())


def test_a_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    config = tiny(tmp_path, epochs=3)
    straight = train(config, tmp_path / "straight")

    real_epoch = train_module.train_epoch

    def dies_in_third_epoch(*args, **kwargs):
        if kwargs.get("epoch", args[-1]) == 2:
            raise KeyboardInterrupt  # stands in for a kill mid-epoch
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", dies_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    resumed = train(config, tmp_path / "resumed")
    history = [json.loads(l) for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    for split in ("train", "val", "test"):
        assert resumed[split]["loss"] == pytest.approx(straight[split]["loss"], rel=1e-5)


def test_finished_run_is_not_trained_again_unless_forced(tmp_path, monkeypatch):
    config = tiny(tmp_path, epochs=1)
    first = train(config, tmp_path / "run")
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("trained a finished run"))
    assert train(config, tmp_path / "run") == first
    with pytest.raises(pytest.fail.Exception):
        train(config, tmp_path / "run", force=True)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_build = train_module.build_model

    def poisoned(config, num_classes):
        model = real_build(config, num_classes)
        calls = {"n": 0}

        def hook(_module, _inputs, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] > 12 else output  # epoch 1: 7 train + 1 val batches

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        train(tiny(tmp_path, epochs=3), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["objects"]["model"].values() if t.is_floating_point())


def test_torchrun_ddp_on_cpu_with_two_processes(tmp_path):
    config = tiny(tmp_path, epochs=1)
    train(config, tmp_path / "warm")  # generate the data and caches once, outside the timed DDP part
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
        "-m", "col775", "resnet", "train", "--out", str(out), "--norm", "gn", "--blocks-per-stage", "1", "--epochs", "1",
        "--image-size", "16", "--synthetic-train-per-class", "4", "--synthetic-val-per-class", "2",
        "--synthetic-test-per-class", "2", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"),
        "--device", "cpu", "--warmup-epochs", "0",
    ]
    env = dict(os.environ, COL775_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # predictions of both ranks are gathered: every val image is counted once or (padding) at most twice
    history = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and metrics["data"]["split_sizes"]["val"] == 50
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0


def test_device_augmentation_reads_uint8_batches_and_trains(tmp_path, monkeypatch):
    calls = []
    original = train_module.BatchAugment.__call__
    monkeypatch.setattr(train_module.BatchAugment, "__call__",
                        lambda self, images: calls.append(images.dtype) or original(self, images))
    metrics = train(tiny(tmp_path, augment="device"), tmp_path / "run")
    assert calls and set(calls) == {torch.uint8}  # loaders hand out raw cached pixels
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0 and metrics["epochs_run"] == 2
    loaders = train_module.make_loaders(tiny(tmp_path, augment="device"))
    images, _ = next(iter(loaders.val))
    assert images.dtype == torch.uint8


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler (g++)")
def test_compile_trains_to_the_same_losses_as_eager(tmp_path, monkeypatch):
    """`--compile` runs the whole model as compiled graphs (no breaks at the norms), with eager's losses."""
    from torch._dynamo.utils import counters

    compiled_models = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compiled_models.append(model) or real_compile(model))
    config = tiny(tmp_path, norm="gn", epochs=1, max_steps_per_epoch=2, synthetic_train_per_class=2)
    eager = train(config, tmp_path / "eager")
    assert not compiled_models
    torch._dynamo.reset()
    counters.clear()
    compiled = train(replace(config, compile=True), tmp_path / "compiled")
    assert len(compiled_models) == 1 and counters["stats"]["unique_graphs"] >= 1
    assert not counters["graph_break"]
    for split in ("train", "val", "test"):
        assert compiled[split]["loss"] == pytest.approx(eager[split]["loss"], rel=1e-4)
    losses = [[json.loads(line)["train/loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("eager", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_cpu_bf16_trains_in_bf16_and_channels_last_only_when_asked(tmp_path, monkeypatch, cpu_bf16):
    seen = []
    real_build = train_module.build_model

    def spied(config, num_classes):
        model = real_build(config, num_classes)
        model.stem.conv.register_forward_hook(
            lambda _m, _i, out: seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)))
        )
        return model

    monkeypatch.setattr(train_module, "build_model", spied)
    train(tiny(tmp_path, epochs=1, max_steps_per_epoch=1, cpu_bf16=cpu_bf16), tmp_path / "run")
    assert seen and set(seen) == {(torch.bfloat16, True) if cpu_bf16 else (torch.float32, False)}
