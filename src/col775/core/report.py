"""Reports: a list of blocks (headings, paragraphs, tables, figures, settings) written twice, as
report.md beside its figures and as a self-contained report.html with the figures embedded.

Studies build a `Report` from their runs; `runs_report` builds a generic one from any run folders.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from col775.core.plots import line_plot
from col775.core.provenance import read_provenance
from col775.core.runs import read_run


@dataclass
class _Block:
    kind: str
    payload: Any


class Report:
    """An ordered document; `write` renders it to Markdown and HTML."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[_Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(_Block("heading", (text, level)))

    def text(self, paragraph: str) -> None:
        self.blocks.append(_Block("text", paragraph))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(_Block("table", ([str(h) for h in headers], [[_cell(c) for c in r] for r in rows])))

    def figure(self, png: str | Path, caption: str) -> None:
        png = Path(png)
        if not png.is_file():
            raise FileNotFoundError(f"figure {png} does not exist")
        self.blocks.append(_Block("figure", (png, caption)))

    def settings(self, name: str, config: dict[str, Any], provenance: list[dict[str, Any]] | None = None) -> None:
        """A run's settings, and below them what trained it (its provenance.json records), when given."""
        text = yaml.safe_dump(config, sort_keys=False).strip()
        if provenance:
            text += "\n# what trained it (provenance.json)\n" + yaml.safe_dump(provenance, sort_keys=False).strip()
        self.blocks.append(_Block("settings", (name, text)))

    def extend(self, other: "Report", level_shift: int = 1) -> None:
        """Append another report's blocks, its title becoming a heading (for `col775 demo`)."""
        self.heading(other.title, 2)
        for block in other.blocks:
            if block.kind == "heading":
                text, level = block.payload
                block = _Block("heading", (text, min(level + level_shift, 6)))
            self.blocks.append(block)

    # -- rendering ----------------------------------------------------------------------------------------
    def write(self, out_dir: str | Path) -> Path:
        """Write report.md (figures copied to figures/) and report.html; returns the HTML path."""
        out_dir = Path(out_dir)
        figures = out_dir / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        md = [f"# {self.title}", "", f"_Written {_dt.datetime.now():%Y-%m-%d %H:%M} by col775._", ""]
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        used_names: set[str] = set()
        for block in self.blocks:
            if block.kind == "heading":
                text, level = block.payload
                md += ["#" * level + " " + text, ""]
                body.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif block.kind == "text":
                md += [block.payload, ""]
                body.append(f"<p>{_inline_html(block.payload)}</p>")
            elif block.kind == "table":
                headers, rows = block.payload
                md += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                md += ["| " + " | ".join(row) + " |" for row in rows]
                md.append("")
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                cells = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif block.kind == "figure":
                png, caption = block.payload
                name = _unique_name(png, used_names)
                if png.resolve() != (figures / name).resolve():
                    shutil.copyfile(png, figures / name)
                md += [f"![{caption}](figures/{name})", "", f"*{caption}*", ""]
                data = base64.b64encode(png.read_bytes()).decode()
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            elif block.kind == "settings":
                name, text = block.payload
                md += [f"<details><summary>Settings: {name}</summary>", "", "```yaml", text, "```", "", "</details>", ""]
                body.append(
                    f"<details><summary>Settings: {html.escape(name)}</summary><pre>{html.escape(text)}</pre></details>"
                )
        (out_dir / "report.md").write_text("\n".join(md))
        page = _HTML.format(title=html.escape(self.title), body="\n".join(body))
        (out_dir / "report.html").write_text(page)
        return out_dir / "report.html"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return "" if value is None else str(value)


def _unique_name(png: Path, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{png.parent.parent.name}_{png.parent.name}_{png.stem}").strip("_")
    name, index = f"{stem}.png", 1
    while name in used:
        index += 1
        name = f"{stem}_{index}.png"
    used.add(name)
    return name


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ font-size: 0.85em; color: #555; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }}
</style></head>
<body>
{body}
</body></html>
"""


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"val": {"accuracy": 0.9}} -> {"val/accuracy": 0.9}."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def history_series(runs: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[list, list]]:
    """Per run, the (epochs, values) of one metrics.jsonl key, for runs that logged it."""
    series = {}
    for run in runs:
        points = [(r["epoch"], r[key]) for r in run["history"] if isinstance(r.get(key), (int, float))]
        if points:
            series[run["name"]] = ([p[0] for p in points], [p[1] for p in points])
    return series


def runs_report(run_dirs: Sequence[str | Path], plots_dir: str | Path, title: str = "Runs",
                root: str | Path | None = None) -> Report:
    """A generic report of any run folders: final numbers, every logged curve overlaid, every setting.
    Runs are named by their folder, or by their path under `root` (e.g. "model-lstm/seed-1")."""
    runs = [read_run(path) for path in run_dirs]
    if root is not None:
        runs = [run | {"name": str(run["path"].relative_to(root))} for run in runs]
    report = Report(title)
    finished = [run for run in runs if run["metrics"] is not None]
    if finished:
        report.heading("Final numbers")
        keys = sorted({k for run in finished for k, v in flatten(run["metrics"]).items() if isinstance(v, (int, float))})
        report.table(["run"] + keys, [[run["name"]] + [flatten(run["metrics"]).get(k) for k in keys] for run in finished])
    unfinished = [run["name"] for run in runs if run["metrics"] is None]
    if unfinished:
        report.text(f"Not finished (curves only): {', '.join(unfinished)}.")
    keys = sorted({k for run in runs for r in run["history"] for k, v in r.items() if k != "epoch" and isinstance(v, (int, float))})
    if keys:
        report.heading("Curves")
        for key in keys:
            safe = re.sub(r"[^A-Za-z0-9]+", "_", key)
            png = line_plot(history_series(runs, key), Path(plots_dir) / f"{safe}.png", title=key, ylabel=key)
            report.figure(png, f"{key} per epoch")
    report.heading("Settings")
    for run in runs:
        report.settings(run["name"], run["config"], read_provenance(run["path"]))
    return report
