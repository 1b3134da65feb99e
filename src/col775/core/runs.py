"""Run folders: the one place a training run keeps its settings, its history and its checkpoints.

Layout of a run folder:
    config.yaml        the resolved settings the run was started with
    metrics.jsonl      one JSON line per finished epoch
    metrics.json       the final numbers; its presence marks the run finished
    provenance.json    what trained it, one record per start or resume (core/provenance.py)
    checkpoints/       last.pt (every epoch) and best.pt, each written atomically
    tb/                TensorBoard events
    plots/             this run's curves (one PNG per logged quantity), written when it finishes

Checkpoints are written to a temporary file and renamed over the old one, so a run killed at any instant
(SIGKILL included) leaves either the previous or the new checkpoint, never half of one; it loses at most
the epoch it was in.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from col775.core.plots import history_curves
from col775.core.provenance import FILE as PROVENANCE, provenance, read_provenance

log = logging.getLogger(__name__)

class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


class ConfigMismatchError(RuntimeError):
    """The run folder holds a run started with other settings."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers only ever see the old or the complete new file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, so a resumed run continues the same random stream."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunDir:
    """One training run's folder. Only rank 0 of a distributed run writes anything."""

    def __init__(self, path: str | Path, config: dict[str, Any], force: bool = False, rank: int = 0):
        self.path = Path(path)
        self.config = config
        self.rank = rank
        self.writes = rank == 0
        self.checkpoint_dir = self.path / "checkpoints"
        self.plots_dir = self.path / "plots"
        self._tb = None
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            if force:
                self._clear()
            self._check_config()
            self.plots_dir.mkdir(exist_ok=True)
            atomic_write_bytes(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    # -- state of the folder -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return (self.path / "metrics.json").is_file()

    def final_metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    def _clear(self) -> None:
        for name in ("metrics.json", "metrics.jsonl", PROVENANCE):
            (self.path / name).unlink(missing_ok=True)
        for name in ("checkpoints", "tb", "plots"):
            shutil.rmtree(self.path / name, ignore_errors=True)

    def _check_config(self) -> None:
        """Refuse to resume a run under different settings: its numbers would belong to neither."""
        old_path = self.path / "config.yaml"
        has_progress = (self.checkpoint_dir / "last.pt").is_file() or self.finished
        if not old_path.is_file() or not has_progress:
            return
        old = yaml.safe_load(old_path.read_text()) or {}
        new = yaml.safe_load(yaml.safe_dump(self.config))
        added = sorted(set(new) - set(old))
        if added:  # fields introduced after this run started: it ran without them, so resuming is allowed
            log.warning("%s predates the settings %s; resuming with their current values", self.path, added)
        changed = sorted(k for k in set(old) if old.get(k) != new.get(k))
        if changed:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise ConfigMismatchError(
                f"{self.path} holds a run with other settings ({details}). "
                "Pass --force to start it over, or choose another --out."
            )

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(
        self, epoch: int, objects: dict[str, Stateful], best: bool = False, extra: dict | None = None
    ) -> None:
        """Save after `epoch` finished (0-based): a resumed run starts at epoch + 1."""
        if not self.writes:
            return
        self.checkpoint_dir.mkdir(exist_ok=True)
        state = {
            "epoch": epoch,
            "objects": {name: obj.state_dict() for name, obj in objects.items()},
            "rng": rng_state(),
            "extra": extra or {},
        }
        tmp = self.checkpoint_dir / f".last.pt.tmp{os.getpid()}"
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if best:
            best_tmp = self.checkpoint_dir / f".best.pt.tmp{os.getpid()}"
            shutil.copyfile(tmp, best_tmp)
            os.replace(best_tmp, self.checkpoint_dir / "best.pt")
        os.replace(tmp, self.checkpoint_dir / "last.pt")

    def _load(self, name: str) -> dict | None:
        path = self.checkpoint_dir / name
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise RuntimeError(
                f"checkpoint {path} cannot be read ({error}); delete it to restart that run, or pass --force"
            ) from error

    def resume(self, objects: dict[str, Stateful]) -> tuple[int, dict]:
        """Restore the last checkpoint into `objects`; returns (next epoch, the checkpoint's extra).
        Training calls it whenever it starts or resumes, so it also records what is training (provenance.json)."""
        if self.writes:
            atomic_write_json(self.path / PROVENANCE, read_provenance(self.path) + [provenance()])
        state = self._load("last.pt")
        if state is None:
            if self.writes:
                (self.path / "metrics.jsonl").unlink(missing_ok=True)
            return 0, {}
        for name, obj in objects.items():
            obj.load_state_dict(state["objects"][name])
        set_rng_state(state["rng"])
        next_epoch = state["epoch"] + 1
        if self.writes:
            kept = [r for r in self.history() if r.get("epoch", -1) < next_epoch]
            atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())
        return next_epoch, state["extra"]

    def load_best(self, objects: dict[str, Stateful]) -> dict:
        """Load the best checkpoint (the last one when no best was marked) into `objects`."""
        state = self._load("best.pt") or self._load("last.pt")
        if state is None:
            raise FileNotFoundError(f"{self.checkpoint_dir} holds no checkpoint")
        for name, obj in objects.items():
            obj.load_state_dict(state["objects"][name])
        return state["extra"] | {"epoch": state["epoch"]}

    # -- metrics ----------------------------------------------------------------------------------------
    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's numbers (a flat dict with "epoch") and mirror them to TensorBoard."""
        if not self.writes:
            return
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        writer = self._writer()
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, record["epoch"])
        writer.flush()

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._tb

    def history(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        if self.writes:
            atomic_write_json(path, obj)
        return path

    def finish(self, metrics: dict[str, Any]) -> None:
        """Write the final numbers; from now on the same command does not train this run again."""
        if self.writes:
            history_curves(self.history(), self.plots_dir)
            atomic_write_json(self.path / "metrics.json", metrics)
        self.close()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_run(path: str | Path) -> dict[str, Any]:
    """What a report needs of a finished or partial run: its settings, history and final numbers."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
    history_path = path / "metrics.jsonl"
    metrics_path = path / "metrics.json"
    return {
        "path": path,
        "name": path.name,
        "config": yaml.safe_load((path / "config.yaml").read_text()) or {},
        "history": [json.loads(l) for l in history_path.read_text().splitlines() if l.strip()]
        if history_path.is_file()
        else [],
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
    }
