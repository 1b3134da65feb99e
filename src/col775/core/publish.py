"""A study's results as a small folder for the repository: `col775 <study> study ... --publish DIR`.

The study's own output holds checkpoints, logs and every figure; DIR gets only what a reader of the
results needs: report.md (its first line the one command that regenerates DIR), summary.json and the
figures report.md shows, under a size budget. Figures that show the data's own photographs (the
course's images, which are not ours to redistribute) are left out by name, and the report says so.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
from pathlib import Path
from typing import Sequence

BUDGET_BYTES = 2_000_000
_FIGURE = re.compile(r"!\[([^\]]*)\]\((figures/[^)]+)\)")


def regenerating_command(argv: Sequence[str]) -> str:
    """The study command as the user typed it (after `col775`), without the flags that only read results:
    run again, it trains whatever is missing and writes the same folder."""
    kept = [arg for arg in argv if arg != "--report-only"]
    return shlex.join(["col775", *kept])


def publish(out: Path, dest: Path, command: str, leave_out: Sequence[str] = (), budget: int = BUDGET_BYTES) -> list[str]:
    """Copy ``out``'s report.md, summary.json and shown figures to ``dest``; returns the figures left out.

    ``leave_out`` are file-name patterns of figures not to publish (photographs of the data). Figures are
    kept in report order while they fit in ``budget`` bytes with the text; the others are left out and
    report.md says which, instead of showing a broken link.
    """
    out, dest = Path(out), Path(dest)
    report = out / "report.md"
    if not report.is_file():
        raise FileNotFoundError(f"{report} does not exist: the study has not written its report")
    if dest.resolve() == out.resolve():
        raise ValueError(f"--publish {dest} is the study's own folder; choose another (e.g. results/<study>)")
    if (figures := dest / "figures").is_dir():
        shutil.rmtree(figures)  # figures of an earlier publish that this report no longer shows
    figures.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    used = len(report.read_bytes()) + (summary.stat().st_size if summary.is_file() else 0)
    left_out: list[str] = []

    def copy(match: re.Match) -> str:
        nonlocal used
        caption, relative = match.groups()
        source = out / relative
        name = Path(relative).name
        photo = any(fnmatch.fnmatch(name, pattern) for pattern in leave_out)
        if photo or not source.is_file() or used + source.stat().st_size > budget:
            left_out.append(name)
            why = "it shows the data's own photographs" if photo else "the results folder's size budget"
            return f"*(figure `{name}`, {caption}, is in the study's own folder; left out here: {why})*"
        used += source.stat().st_size
        shutil.copyfile(source, figures / name)
        return match.group(0)

    text = _FIGURE.sub(copy, report.read_text())
    header = f"Regenerate this folder: `{command}`\n\n"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "report.md").write_text(header + text)
    (dest / "command.txt").write_text(command + "\n")
    if summary.is_file():
        shutil.copyfile(summary, dest / "summary.json")
    return left_out
