"""Data loaders: generated scenes cached once, a missing folder, seeded epochs, the data's image size."""

import json
import os

import numpy as np
import pytest
import torch.multiprocessing as mp
from PIL import Image

import col775.slots.loaders as loaders_module
import col775.slots.scene_cache as scene_cache_module
from col775.core.distributed import init_distributed
from col775.slots.loaders import data_image_size, epoch_batches, make_loaders, scene_root
from tests.slots.test_train_torchrun import free_port
from tests.slots.tiny import tiny_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_generated_scenes_are_cached(cache, monkeypatch):
    root = scene_root(tiny_config(cache))
    assert (root / "scenes.json").is_file()
    assert len(list((root / "images" / "train").glob("*.png"))) == 24
    monkeypatch.setattr(loaders_module, "write_scene_folder", lambda *a, **k: pytest.fail("scenes generated twice"))
    assert scene_root(tiny_config(cache)) == root


def test_each_scene_style_has_its_own_cached_scenes(cache):
    textured, simple = (scene_root(tiny_config(cache, scene_style=style)) for style in ("textured", "simple"))
    assert textured != simple
    assert json.loads((simple / "scenes.json").read_text())["style"] == "simple"
    image = lambda root: np.asarray(Image.open(root / "images" / "train" / "000000.png"))  # noqa: E731
    assert not np.array_equal(image(textured), image(simple))


def test_missing_data_folder_is_a_clear_error(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scene_root(tiny_config(cache, data=str(tmp_path / "nowhere")))


def test_epoch_batches_are_seeded_by_epoch_and_cycle(cache):
    loaders = make_loaders(tiny_config(cache))
    indices = lambda epoch, steps: [b["index"].tolist() for b in epoch_batches(loaders.train, 0, epoch, steps)]  # noqa: E731
    assert indices(1, 5) == indices(1, 5)
    assert indices(1, 5) != indices(2, 5)
    assert len(indices(0, 5)) == 5  # 24 images at batch 8 (drop_last) give 3 batches a pass: it cycles
    one_pass = indices(0, 0)
    assert sorted(i for batch in one_pass for i in batch) == list(range(24))


def test_the_image_size_is_read_from_the_data(tmp_path):
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "scenes.json").write_text(json.dumps({"size": 48}))
    assert data_image_size(tmp_path / "scenes") == 48
    for name, size, expected in (("square", (40, 40), 40), ("frames", (320, 240), None)):
        folder = tmp_path / name / "images" / "train"
        folder.mkdir(parents=True)
        Image.new("RGB", size).save(folder / "a.png")
        assert data_image_size(tmp_path / name) == expected


def _loaders_main(rank: int, port: int, config, folder: str) -> None:
    """A torchrun worker's view of the loaders: its batches of epoch 0, its val images, and what it generated
    or decoded."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("cpu")
    built = []
    for module, name in ((loaders_module, "write_scene_folder"), (scene_cache_module, "_build")):
        real = getattr(module, name)
        setattr(module, name, lambda *a, real=real, name=name, **k: built.append(name) or real(*a, **k))
    loaders = make_loaders(config)
    shares = [batch["index"].tolist() for batch in epoch_batches(loaders.train, config.seed, 0, 0)]
    val = [index for batch in loaders.val for index in batch["index"].tolist()]
    with open(f"{folder}/rank{rank}.json", "w") as handle:
        json.dump({"shares": shares, "val": val, "built": built}, handle)


def test_two_ranks_share_out_one_processs_batches_and_val_and_rank0_alone_builds_the_cache(tmp_path):
    # 21 training images: global batches of 8 (2 ranks x 4) drop the last 5, as one process of batch 8 does
    config = tiny_config(tmp_path / "cache", n_train=21, n_val=7, batch_size=4)
    mp.start_processes(_loaders_main, args=(free_port(), config, str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["built"] == ["write_scene_folder", "_build", "_build"]  # scenes, then train and val arrays
    assert ranks[1]["built"] == []  # it waited, then read rank 0's cache
    assert [r["val"] for r in ranks] == [[0, 2, 4, 6], [1, 3, 5]]
    whole = make_loaders(tiny_config(tmp_path / "cache", n_train=21, n_val=7, batch_size=8))
    batches = [batch["index"].tolist() for batch in epoch_batches(whole.train, config.seed, 0, 0)]
    assert len(batches) == 2
    assert [r["shares"] for r in ranks] == [[batch[rank::2] for batch in batches] for rank in range(2)]
