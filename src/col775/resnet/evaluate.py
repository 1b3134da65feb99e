"""Score a trained run's best checkpoint on any folder of images: `col775 resnet evaluate`.

The folder is read as ``DIR/<split>/<Class>/<image>`` when ``DIR/<split>`` exists, otherwise ``DIR``
itself holds the class folders. Class folders are matched to the run's classes by name: a folder the run
does not know is an error naming it, while classes the folder lacks are fine (their images are simply
absent). When ``DIR`` is the run's own data folder the run's own splits are used, its carved test
split included, so `--split train` reproduces metrics.json's train numbers. The same holds for a copy of
that folder elsewhere (one with ``train/`` and without the split's folder: the carved test split is drawn
again exactly as the run drew it). The weights come from a run folder or from the file `col775 resnet export`
writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from col775.core.config import from_dict
from col775.core.plots import confusion_plot
from col775.core.runs import RunDir, atomic_write_json, read_run
from col775.core.training import pick_device
from col775.resnet.config import ResnetConfig
from col775.resnet.data import CachedImageDataset, _class_folders, eval_loader, load_split
from col775.resnet.export import read_export
from col775.resnet.train import (Evaluation, amp_enabled, build_model, cache_root, evaluate, fast_formats,
                                 make_loaders)

_OWN_SPLITS = {"train": "train_eval", "val": "val", "test": "test"}


def _split_folder(data: Path, split: str) -> Path:
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist; give a folder of class folders")
    return data / split if (data / split).is_dir() else data


def folder_dataset(folder: Path, classes: list[str], config: ResnetConfig) -> CachedImageDataset:
    """The images under ``folder``'s class folders, labelled with their index in ``classes``."""
    found = _class_folders(folder)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise ValueError(
            f"class folders {unknown} in {folder} are not classes of the run (it knows {classes}); "
            "remove or rename them, or, for a folder of split folders, pass --split with one of them"
        )
    cache = load_split(folder, found, config.image_size, cache_root(config) / "images")
    cache.labels = np.asarray([classes.index(name) for name in found])[cache.labels]  # folder's -> run's
    return CachedImageDataset(cache)


def _trained(source: Path) -> tuple[ResnetConfig, list[str], str, Callable[[torch.nn.Module], None]]:
    """(settings, class names, the data root it trained on, a loader of its weights) of a run folder or of
    a file written by `col775 resnet export`."""
    if source.is_file():
        config, classes, meta, weights = read_export(source)
        return config, classes, meta["data_root"], lambda model: model.load_state_dict(weights)
    run = read_run(source)
    if run["metrics"] is None:
        raise FileNotFoundError(f"{source} has not finished training (no metrics.json); train it first")
    config = from_dict(ResnetConfig, run["config"], str(source / "config.yaml"))

    def load(model: torch.nn.Module) -> None:
        RunDir(source, run["config"], rank=1).load_best({"model": model})  # rank 1: reads, writes nothing

    return config, run["metrics"]["data"]["classes"], run["metrics"]["data"]["root"], load


def _own_splits(data: Path, trained_on: str, split: str) -> bool:
    """Whether ``split`` of ``data`` means the run's own split: ``data`` is the folder it trained on, or a
    copy of it elsewhere (a ``train/`` folder and no ``<split>/`` folder, as when the test split was
    carved from train), so that the split is drawn exactly as the run drew it."""
    if split not in _OWN_SPLITS:
        return False
    if data.resolve() == Path(trained_on).resolve():
        return True
    return not (data / split).is_dir() and (data / "train").is_dir()


def score_run(source: str | Path, data: str | Path, split: str = "test", device: str | None = None) -> tuple[Evaluation, list[str]]:
    """The best checkpoint of the run folder (or exported file) ``source`` scored on ``split`` of ``data``;
    returns the evaluation and the run's class names (indices of the predictions and labels)."""
    config, classes, trained_on, load_weights = _trained(Path(source))
    data = Path(data).expanduser()
    if _own_splits(data, trained_on, split):
        loader = getattr(make_loaders(dataclasses.replace(config, data=str(data))), _OWN_SPLITS[split])
    else:
        loader = eval_loader(folder_dataset(_split_folder(data, split), classes, config), config.eval_batch_size)
    target = pick_device(device or config.device)
    model = build_model(config, len(classes)).to(target)
    if config.channels_last and fast_formats(config, target):  # as in training, so the numbers are the same
        model = model.to(memory_format=torch.channels_last)
    load_weights(model)
    return evaluate(model, loader, target, amp_enabled(config, target), f"evaluate {split}"), classes


def write_details(evaluation: Evaluation, classes: list[str], out: str | Path) -> dict:
    """``out`` (JSON): the evaluation's numbers, per-class accuracy and the confusion matrix; beside it
    ``<out stem>_confusion.png``, the matrix drawn. Returns what was written."""
    out = Path(out)
    matrix = confusion_matrix(evaluation.labels, evaluation.predictions, labels=list(range(len(classes))))
    counts = matrix.sum(axis=1)
    figure = confusion_plot(matrix, classes, out.with_name(f"{out.stem}_confusion.png"), title=out.stem)
    details = evaluation.summary() | {
        "per_class_accuracy": {
            name: {"accuracy": float(matrix[i, i] / counts[i]), "n": int(counts[i])}
            for i, name in enumerate(classes) if counts[i]
        },
        "classes": classes,
        "confusion_matrix": matrix.tolist(),
        "confusion_figure": str(figure),
    }
    atomic_write_json(out, details)
    return details
