"""Run folders: the one place a training run keeps its settings, its history and its checkpoints.

Layout of a run folder:
    config.yaml        the resolved settings the run was started with
    metrics.jsonl      one JSON line per finished epoch
    metrics.json       the final numbers; its presence marks the run finished
    provenance.json    what trained it, one record per start or resume (core/provenance.py)
    checkpoints/       last.pt (every epoch) and best.pt, each written atomically
    tb/                TensorBoard events
    plots/             this run's curves (one PNG per logged quantity), written when it finishes
    .lock              the PID of the process that holds the folder (see below)

Checkpoints are written to a temporary file and renamed over the old one, so a run killed at any instant
(SIGKILL included) leaves either the previous or the new checkpoint, never half of one; it loses at most
the epoch it was in. The temporaries such a kill leaves (`.<name>.tmp<PID>`) are removed the next time
the folder is opened, and a half-written last line of metrics.jsonl is dropped on resume.

One process at a time writes a folder: opening it takes an exclusive POSIX lock on `.lock`, which the
operating system releases when the process ends, however it ends, so a killed run never leaves a stale
lock. It is a `lockf` lock, not `flock`, because forked DataLoader workers would inherit a `flock` and
keep a killed run's folder locked until they noticed their parent was gone; and since closing any
descriptor of the lock file drops a `lockf` lock, each process opens the file once per folder however
many RunDir objects it makes (`_lock_folder` counts them).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

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


class RunFolderError(RuntimeError):
    """A run folder cannot be used: another process holds it, its disk is full, or a file in it is unsafe
    or unreadable. The message names the file or folder and what to do."""


TEMPORARY = re.compile(r"\..+\.tmp(\d+)")  # what atomic writes name their temporaries: .<name>.tmp<PID>


@contextmanager
def _space_checked(path: Path) -> Iterator[None]:
    """Turn a full disk while writing `path` into one line naming its folder and the space left there."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.parent).free
        raise RunFolderError(
            f"no space left on the device writing {path} ({free / 2**20:.1f} MiB free in {path.parent}); "
            "free some space and run the same command again to resume"
        ) from error


@contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """The temporary beside `path` that a write fills before renaming it over `path`; a write that fails
    or is interrupted removes it at once, so a full disk is not kept full by the failed write."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with _space_checked(path):
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers only ever see the old or the complete new file."""
    with _temporary(path) as tmp:
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
    """Every random generator a run draws from, so a resumed run continues the same random stream.
    Only tensors, numbers and None, so a checkpoint loads with `weights_only=True`."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


LOCK_FILE = ".lock"
_held_folders: dict[Path, list] = {}  # resolved folder -> [its open lock file, RunDir objects holding it]


def _lock_folder(folder: Path) -> Path:
    """Take this process's exclusive hold on `folder` (or count one more holder); returns its key."""
    key = folder.resolve()
    if key in _held_folders:
        _held_folders[key][1] += 1
        return key
    handle = open(key / LOCK_FILE, "a+")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(
            f"{folder} is in use by another process (PID {holder}); wait for it to finish or stop it, "
            "or choose another --out"
        ) from error
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_folders[key] = [handle, 1]
    return key


def _unlock_folder(key: Path) -> None:
    entry = _held_folders[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _held_folders[key]
        entry[0].close()


class RunDir:
    """One training run's folder. Only rank 0 of a distributed run writes anything, and it holds the
    folder's lock from here until `close` (or until this object is collected, or the process ends)."""

    def __init__(self, path: str | Path, config: dict[str, Any], force: bool = False, rank: int = 0):
        self.path = Path(path)
        self.config = config
        self.rank = rank
        self.writes = rank == 0
        self.checkpoint_dir = self.path / "checkpoints"
        self.plots_dir = self.path / "plots"
        self._tb = None
        self._unlock = None
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            self._unlock = weakref.finalize(self, _unlock_folder, _lock_folder(self.path))
            if force:
                self._clear()
            self._remove_stale_temporaries()
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

    def _remove_stale_temporaries(self) -> None:
        """Remove what writes killed midway left behind (a disk they filled stays full otherwise).

        Every temporary goes, whatever PID its name carries: only the process holding the lock writes
        here, and this one holds it and is not writing yet. (Checking the PID for life would keep a dead
        writer's file whenever its PID has been reused by an unrelated process.)"""
        for path in self.path.rglob(".*.tmp*"):
            if TEMPORARY.fullmatch(path.name) and path.is_file():
                path.unlink()
                log.info("removed %s, left by a run killed while writing it", path)

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
        buffer = io.BytesIO()  # serialised first, so that every write goes through atomic_write_bytes
        torch.save(state, buffer)
        data = buffer.getvalue()
        if best:
            atomic_write_bytes(self.checkpoint_dir / "best.pt", data)
        atomic_write_bytes(self.checkpoint_dir / "last.pt", data)

    def _load(self, name: str) -> dict | None:
        """The checkpoint `name`, loaded with `weights_only=True`: tensors, numbers, strings, lists and dicts
        load; anything else is refused, because unpickling an object can run any code."""
        path = self.checkpoint_dir / name
        if not path.is_file():
            return None
        fix = "delete it to restart that run, or pass --force"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            raise RunFolderError(
                f"{path} holds pickled objects{f' ({found[1]})' if found else ''}, not only tensors, numbers, "
                f"strings, lists and dicts, and loading those could run code, so it is refused; {fix}"
            ) from error
        except Exception as error:
            raise RunFolderError(f"{path} cannot be read ({error}); {fix}") from error

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
            history = read_history(self.path / "metrics.jsonl", drop_partial_last=True)
            kept = [r for r in history if r.get("epoch", -1) < next_epoch]
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
        path = self.path / "metrics.jsonl"
        with _space_checked(path), open(path, "a") as handle:
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
        return read_history(self.path / "metrics.jsonl")

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
        """Flush TensorBoard and let go of the folder (another process may open it from now on)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._unlock is not None:
            self._unlock()


def read_run(path: str | Path) -> dict[str, Any]:
    """What a report needs of a finished or partial run: its settings, history and final numbers."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
    metrics_path = path / "metrics.json"
    return {
        "path": path,
        "name": path.name,
        "config": yaml.safe_load((path / "config.yaml").read_text()) or {},
        "history": read_history(path / "metrics.jsonl"),
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
    }


def read_history(path: Path, drop_partial_last: bool = False) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (none when it does not exist). A line that is not a JSON object is
    an error naming the file and line, except, with `drop_partial_last`, an unreadable last line: a run
    killed while appending leaves half a line, which belongs to the epoch a resumed run redoes."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if drop_partial_last and number == len(lines):
                log.warning("%s: dropped its half-written last line (the epoch being redone)", path)
                continue
            problem = error.msg
        else:
            if isinstance(record, dict):
                records.append(record)
                continue
            problem = "not a JSON object"
        raise ValueError(
            f"{path} line {number} is not an epoch record ({problem}); repair or delete that line, "
            "or pass --force to start the run over"
        )
    return records

