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
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from torchvision.transforms import v2

from col775.core.training import NonFiniteLossError
from col775.resnet import train as train_module
from col775.resnet.config import ResnetConfig
from col775.resnet.data import MEAN, STD
from col775.resnet.evaluate import score_run
from col775.resnet.resnet import ResNet
from col775.resnet.train import make_loaders, train

METRICS = ("loss", "accuracy", "micro_f1", "macro_f1")


def tiny(tmp_path: Path, **changes) -> ResnetConfig:
    values = dict(
        image_size=16, synthetic_train_per_class=4, synthetic_val_per_class=2, synthetic_test_per_class=2,
        n=1, epochs=2, batch_size=16, eval_batch_size=64, lr=0.05, warmup_epochs=0, norm="bn",
        cache_dir=str(tmp_path / "cache"), device="cpu",
    )
    values.update(changes)
    return ResnetConfig(**values)


def class_files(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Every image under ``folder``'s class folders and the index of its class in ``classes``."""
    pairs = [(path, classes.index(path.parent.name)) for path in sorted(folder.glob("*/*.jpg"))]
    return [p for p, _ in pairs], [label for _, label in pairs]


def reference_scores(run: Path, files: list[Path], labels: list[int], config: ResnetConfig,
                     checkpoint: str = "best.pt") -> dict:
    """Independent truth: the checkpoint's weights in eval mode on the image files as PIL decodes them,
    normalised by torchvision, scored by F.cross_entropy and scikit-learn."""
    state = torch.load(run / "checkpoints" / checkpoint, weights_only=False)["objects"]["model"]
    model = ResNet(config.n, 25, config.norm)
    model.load_state_dict(state)
    to_input = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    images = torch.stack([to_input(Image.open(path).convert("RGB")) for path in files])
    with torch.no_grad():
        logits = model.eval()(images)
    targets = torch.tensor(labels)
    predictions = logits.argmax(1).numpy()
    return {
        "loss": F.cross_entropy(logits, targets).item(),
        "accuracy": accuracy_score(labels, predictions),
        "micro_f1": f1_score(labels, predictions, average="micro"),
        "macro_f1": f1_score(labels, predictions, average="macro"),
        "n": len(labels),
    }


def assert_scores_match(got: dict, truth: dict) -> None:
    assert got["n"] == truth["n"]
    for key in ("accuracy", "micro_f1", "macro_f1"):
        assert got[key] == pytest.approx(truth[key], abs=1e-12), key
    assert got["loss"] == pytest.approx(truth["loss"], rel=1e-5)


def test_metrics_shape_and_history(tmp_path):
    metrics = train(tiny(tmp_path), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert set(on_disk[split]) == {*METRICS, "n"}
        # single-label classification: micro F1 is accuracy (sklearn computes it independently)
        assert on_disk[split]["micro_f1"] == pytest.approx(on_disk[split]["accuracy"])
    assert metrics["data"]["split_sizes"] == {"train": 100, "val": 50, "test": 50}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]
    for line in lines:
        assert {f"{split}/{key}" for split in ("train_aug", "train", "val") for key in METRICS} <= set(json.loads(line))
    assert list((tmp_path / "run" / "tb").iterdir())
    assert (tmp_path / "run" / "plots" / "curves.png").is_file()


def test_final_train_numbers_are_eval_mode_on_unaugmented_images(tmp_path):
    config = tiny(tmp_path, epochs=1)
    metrics = train(config, tmp_path / "run")
    files, labels = class_files(Path(metrics["data"]["root"]) / "train", metrics["data"]["classes"])
    assert_scores_match(metrics["train"], reference_scores(tmp_path / "run", files, labels, config))
    root = metrics["data"]["root"]
    first, second = (score_run(tmp_path / "run", root, "train")[0].summary() for _ in range(2))
    assert first == second == metrics["train"]  # deterministic, and what metrics.json holds


def test_each_epoch_scores_a_fixed_train_sample_in_eval_mode(tmp_path):
    config = tiny(tmp_path, epochs=2, train_eval_size=30)
    metrics = train(config, tmp_path / "run")
    sample = make_loaders(config).train_sample.dataset
    files = [Path(f) for f in sample.files]
    assert metrics["train_sample_size"] == len(set(files)) == 30
    assert all(f.parent.parent.name == "train" for f in files)
    assert make_loaders(config).train_sample.dataset.files == sample.files  # fixed: the same every time
    assert len(make_loaders(tiny(tmp_path)).train_sample.dataset) == 100  # default 2000: all of a smaller set
    history = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    labels = [metrics["data"]["classes"].index(f.parent.name) for f in files]
    truth = reference_scores(tmp_path / "run", files, labels, config, checkpoint="last.pt")  # after epoch 2
    assert_scores_match({key: history[-1][f"train/{key}"] for key in METRICS} | {"n": 30}, truth)
    assert history[-1]["train_aug/loss"] != pytest.approx(truth["loss"], rel=1e-3)  # the augmented running mean


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
            return output * float("nan") if calls["n"] > 12 else output  # epoch 1: 7 train + 2 train-sample + 1 val batches

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        train(tiny(tmp_path, epochs=3), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["objects"]["model"].values() if t.is_floating_point())


def test_torchrun_ddp_on_cpu_with_two_processes_counts_every_image_once(tmp_path):
    # val 25 and test 75 images, train sample 45: odd splits, uneven shards. Evaluation batches of one
    # image, because CPU convolutions round an image's logits differently in batches of other images.
    config = tiny(tmp_path, epochs=1, norm="bn", batch_size=8, eval_batch_size=1, synthetic_val_per_class=1,
                  synthetic_test_per_class=3, train_eval_size=45)
    make_loaders(config)  # generate the data and caches once, outside the timed DDP part
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
        "-m", "col775", "resnet", "train", "--out", str(out), "--norm", "bn", "--blocks-per-stage", "1", "--epochs", "1",
        "--image-size", "16", "--synthetic-train-per-class", "4", "--synthetic-val-per-class", "1",
        "--synthetic-test-per-class", "3", "--batch-size", "8", "--eval-batch-size", "1", "--train-eval-size", "45",
        "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--warmup-epochs", "0",
    ]
    env = dict(os.environ, COL775_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {split: metrics[split]["n"] for split in ("train", "val", "test")} == {"train": 100, "val": 25, "test": 75}
    # the same checkpoint scored by one process gives the same numbers, to the last bit
    root = metrics["data"]["root"]
    for split in ("train", "val", "test"):
        assert score_run(out, root, split)[0].summary() == metrics[split], split
    (record,) = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    model = ResNet(1, 25, "bn")  # BN: the running statistics must be rank 0's on every rank
    model.load_state_dict(torch.load(out / "checkpoints" / "last.pt", weights_only=False)["objects"]["model"])
    sample = train_module.evaluate(model, make_loaders(config).train_sample, torch.device("cpu"), False, "sample")
    assert {f"train/{key}": value for key, value in sample.numbers().items()} == {
        f"train/{key}": record[f"train/{key}"] for key in METRICS
    }


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


def test_every_compiled_run_of_a_process_is_compiled(tmp_path, monkeypatch):
    """A study worker trains run after run in one process: each run's model is compiled afresh, not sent to
    eager because earlier runs' models used up dynamo's recompile limit (set to 1 here to reach it at once;
    dynamo's "eager" backend traces without generating code)."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module: real_compile(module, backend="eager"))
    graphs = []
    with torch._dynamo.config.patch(recompile_limit=1):  # dynamo's own way back: its config is no plain module
        for name in ("first", "second"):
            before = counters["stats"]["unique_graphs"]
            train(tiny(tmp_path, epochs=1, compile=True), tmp_path / name)
            graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs[0] > 0 and graphs[1] > 0, graphs
