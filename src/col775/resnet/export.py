"""A trained run's best weights as one small, safe file: `col775 resnet export RUN FILE`.

The file holds the model's tensors (float32, no optimiser, no RNG state) and, as plain data, the run's
settings, its class names, the epoch of the checkpoint and where it came from. Everything in it loads
with ``torch.load(weights_only=True)``, so scoring someone else's file never unpickles code, and
`col775 resnet evaluate FILE --data DIR` works on the file alone, as it does on the run folder.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from col775.core.config import from_dict
from col775.core.provenance import read_provenance
from col775.core.runs import RunDir, atomic_write_bytes, read_run
from col775.resnet.config import ResnetConfig, run_fields
from col775.resnet.train import build_model

FORMAT = "col775-resnet-weights/1"


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the best checkpoint of the finished run in ``run_dir`` to ``out``; returns the metadata."""
    run = read_run(run_dir)
    if run["metrics"] is None:
        raise FileNotFoundError(f"{run_dir} has not finished training (no metrics.json); train it first")
    config = from_dict(ResnetConfig, run["config"], str(Path(run_dir) / "config.yaml"))
    classes = list(run["metrics"]["data"]["classes"])
    model = build_model(config, len(classes))
    best = RunDir(run_dir, run["config"], rank=1).load_best({"model": model})  # rank 1: reads only
    history = read_provenance(Path(run_dir))
    meta = {
        "format": FORMAT,
        "config": run_fields(config),
        "classes": classes,
        "epoch": int(best["epoch"]),
        "data_root": run["metrics"]["data"]["root"],
        "source_run": str(Path(run_dir).resolve().name),
        "source_git": history[-1].get("git") if history else None,
        "val_accuracy": run["metrics"].get("val", {}).get("accuracy"),
        "test_accuracy": run["metrics"].get("test", {}).get("accuracy"),
    }
    weights = {name: tensor.detach().float().contiguous().clone() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(meta | {"model": weights}, buffer)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), buffer.getvalue())
    return meta


def read_export(path: str | Path) -> tuple[ResnetConfig, list[str], dict[str, Any], dict[str, torch.Tensor]]:
    """(settings, class names, metadata, model weights) of an exported file, refusing anything else."""
    path = Path(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable weights file ({error}); write one with "
                         "`col775 resnet export RUN FILE`") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"{path} is not a `col775 resnet export` file (format {FORMAT} expected); "
                         "give a run folder or write the file with `col775 resnet export RUN FILE`")
    meta = {k: v for k, v in content.items() if k != "model"}
    config = from_dict(ResnetConfig, meta["config"], str(path))
    return config, list(meta["classes"]), meta, content["model"]
