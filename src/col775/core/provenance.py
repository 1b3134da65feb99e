"""What produced a run: code version, libraries, hardware, parallelism and the command line.

A run folder's `provenance.json` is a list with one record per time training started or resumed in it
(a resumed run may have continued on another machine or after a code change), so its numbers can be
traced to the code and command that made them. `--force` starts the list over with the run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import col775
from col775.core.distributed import world_size

FILE = "provenance.json"


def _git(*args: str) -> str | None:
    """Output of a git command run in the package's source folder; None when git or a checkout is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(col775.__file__).parent, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit the package's source is at and whether tracked files differ from it."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "note": "not run from a git checkout (or git is not installed)"}
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "uncommitted_changes": bool(changes)}


def device_names() -> dict[str, Any]:
    """The CPU and every CUDA device this process can see."""
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": platform.processor() or platform.machine(), "cuda_devices": cuda}


def provenance() -> dict[str, Any]:
    """One record of what is producing a run right now."""
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": col775.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "pid": os.getpid(),
        **device_names(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size(),
        "command": [sys.executable, *sys.argv],
    }


def read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run folder, oldest first; empty for a run made before provenance was kept."""
    path = Path(run_dir) / FILE
    return json.loads(path.read_text()) if path.is_file() else []
