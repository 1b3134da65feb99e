"""Training the SBD autoencoder: metrics.json, resume after a crash, scene caching, NaN guard,
seeded epochs, and the evaluation scores against scikit-learn."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch.utils.data import DataLoader

import col775.slots.train as train_module
from col775.core.training import NonFiniteLossError
from col775.slots.config import SlotsConfig
from col775.slots.evaluate import evaluate_segmentation
from col775.slots.train import epoch_batches, make_loaders, scene_root, train_sbd


def tiny_config(cache_dir, **overrides) -> SlotsConfig:
    values = dict(
        cache_dir=str(cache_dir), image_size=16, n_train=24, n_val=6, max_objects=2, num_slots=3, slot_dim=8,
        slot_hidden_dim=16, encoder_channels=[8, 8], encoder_strides=[2, 1], decoder_broadcast=4,
        decoder_channels=[8, 8], decoder_strides=[2, 2], batch_size=8, eval_batch_size=8, epochs=3,
        steps_per_epoch=2, warmup_steps=2, decay_steps=100, val_every=1, device="cpu",
    )  # fmt: skip
    return SlotsConfig(**(values | overrides))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One scene cache for the module: the scenes are generated once."""
    return tmp_path_factory.mktemp("cache")


class Crash(RuntimeError):
    pass


def test_training_writes_metrics_and_a_finished_run_is_not_retrained(cache, tmp_path, monkeypatch):
    metrics = train_sbd(tiny_config(cache), tmp_path / "run")
    for key in ("ari", "fg_ari", "miou", "mse"):
        assert np.isfinite(metrics[key]), key
    assert -1.0 <= metrics["ari"] <= 1.0 and metrics["mse"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["ari"] == pytest.approx(metrics["ari"]) and saved["val_images"] == 6
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["val/loss"]) for r in history)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()

    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("a finished run trained again"))
    assert train_sbd(tiny_config(cache), tmp_path / "run") == saved


def test_a_crashed_run_resumes_and_matches_an_uninterrupted_one(cache, tmp_path, monkeypatch):
    config = tiny_config(cache)
    straight = train_sbd(config, tmp_path / "straight")

    real_epoch = train_module.train_epoch

    def crash_in_second_epoch(*args, **kwargs):
        if args[6] == 1:  # the epoch argument
            raise Crash("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", crash_in_second_epoch)
    with pytest.raises(Crash):
        train_sbd(config, tmp_path / "resumed")
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0]

    calls = []
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: calls.append(a[6]) or real_epoch(*a, **k))
    resumed = train_sbd(config, tmp_path / "resumed")
    assert calls == [1, 2]  # epoch 0 came from the checkpoint
    read = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read("straight"), read("resumed")
    assert [r["epoch"] for r in b] == [0, 1, 2]
    for key in ("train/loss", "val/loss", "lr", "step"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, err_msg=key)
    assert resumed["mse"] == pytest.approx(straight["mse"], rel=1e-5)


def test_generated_scenes_are_cached(cache, monkeypatch):
    root = scene_root(tiny_config(cache))
    assert (root / "scenes.json").is_file()
    assert len(list((root / "images" / "train").glob("*.png"))) == 24
    monkeypatch.setattr(train_module, "write_scene_folder", lambda *a, **k: pytest.fail("scenes generated twice"))
    assert scene_root(tiny_config(cache)) == root


def test_missing_data_folder_is_a_clear_error(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scene_root(tiny_config(cache, data=str(tmp_path / "nowhere")))


def test_nan_loss_stops_the_run(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "reconstruction_loss", lambda recon, images: (recon * float("nan")).mean())
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        train_sbd(tiny_config(cache), tmp_path / "nan")


def test_epoch_batches_are_seeded_by_epoch_and_cycle(cache):
    loaders = make_loaders(tiny_config(cache))
    indices = lambda epoch, steps: [b["index"].tolist() for b in epoch_batches(loaders.train, 0, epoch, steps)]  # noqa: E731
    assert indices(1, 5) == indices(1, 5)
    assert indices(1, 5) != indices(2, 5)
    assert len(indices(0, 5)) == 5  # 24 images at batch 8 (drop_last) give 3 batches a pass: it cycles
    one_pass = indices(0, 0)
    assert sorted(i for batch in one_pass for i in batch) == list(range(24))


def test_evaluation_scores_match_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (5, 8, 8), generator=generator)
    labels = torch.where(torch.rand(5, 8, 8, generator=generator) < 0.7, masks, torch.randint(0, 4, (5, 8, 8), generator=generator))
    images = torch.rand(5, 3, 8, 8, generator=generator) * 2 - 1
    recon = images + 0.1
    data = [{"image": images[i], "mask": masks[i], "index": i} for i in range(5)]
    lookup = {float(images[i].sum()): i for i in range(5)}

    def predict(batch_images):
        rows = [lookup[float(image.sum())] for image in batch_images]
        return labels[rows], recon[rows]

    scores = evaluate_segmentation(predict, DataLoader(data, batch_size=2), torch.device("cpu"))
    expected_ari = np.mean([adjusted_rand_score(masks[i].ravel(), labels[i].ravel()) for i in range(5)])
    fg = [masks[i].ravel() != 0 for i in range(5)]
    expected_fg = np.mean([adjusted_rand_score(masks[i].ravel()[fg[i]], labels[i].ravel()[fg[i]]) for i in range(5)])
    assert scores["ari"] == pytest.approx(expected_ari)
    assert scores["fg_ari"] == pytest.approx(expected_fg)
    assert scores["mse"] == pytest.approx(0.01, rel=1e-4)
    assert scores["images"] == 5


def test_evaluation_without_masks_or_reconstructions_reports_none():
    data = [{"image": torch.zeros(3, 4, 4), "index": i} for i in range(3)]
    scores = evaluate_segmentation(lambda x: (torch.zeros(len(x), 4, 4, dtype=torch.long), None),
                                   DataLoader(data, batch_size=2), torch.device("cpu"))  # fmt: skip
    assert scores["ari"] is None and scores["fg_ari"] is None and scores["mse"] is None and scores["images"] == 3
