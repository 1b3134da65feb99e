import re
import shutil
import subprocess

import numpy as np
import pytest

from col775.core.plots import image_grid, line_plot
from col775.core.report import Report, runs_report
from col775.core.runs import RunDir


def _report(tmp_path):
    report = Report("A study")
    report.heading("Numbers")
    report.text("Accuracy is **high**, see `metrics.json`.")
    report.table(["run", "accuracy"], [["bn", 0.91234], ["gn", 0.5]])
    curve = line_plot({"bn": ([0, 1, 2], [1.0, 0.5, 0.2])}, tmp_path / "p" / "loss.png", title="loss")
    grid = image_grid([np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 3.0)], tmp_path / "p" / "grid.png", titles=["a", "b"])
    report.figure(curve, "loss curve")
    report.figure(grid, "a grid")
    report.settings("bn", {"lr": 0.1, "norm": "bn"})
    return report


def test_markdown_and_html_hold_every_block(tmp_path):
    html_path = _report(tmp_path).write(tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| bn | 0.9123 |" in md
    for name in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (tmp_path / "out" / name).is_file()
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "<b>high</b>" in page and "<code>metrics.json</code>" in page and "norm: bn" in page


def test_missing_figure_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        Report("x").figure(tmp_path / "nope.png", "c")


def test_runs_report_covers_finished_and_unfinished_runs(tmp_path):
    for name, finished in (("a", True), ("b", False)):
        run = RunDir(tmp_path / name, {"lr": 0.1, "name": name})
        for epoch in range(3):
            run.log_epoch({"epoch": epoch, "train/loss": 1.0 / (epoch + 1)})
        if finished:
            run.finish({"val": {"accuracy": 0.75}})
        run.close()
    report = runs_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out" / "figures")
    report.write(tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| a | 0.75 |" in md and "Not finished (curves only): b." in md and "train/loss per epoch" in md


CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', images.length + ':' + ok);
});
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_renders_in_headless_chromium_with_every_image_loaded(tmp_path):
    html_path = _report(tmp_path).write(tmp_path / "out")
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", CHECK + "</body>"))
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r'data-images="(\d+):(\d+)"', result.stdout)
    assert found, result.stderr[-2000:]
    assert found.group(1) == "2" and found.group(2) == "2"
