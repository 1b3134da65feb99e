"""`--publish DIR`: a study's report as a small results folder, headed by the command that regenerates it."""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from col775.core.publish import publish, regenerating_command  # noqa: E402
from col775.core.report import Report  # noqa: E402
from col775.core.study import publish_results  # noqa: E402


def png(path, pixels: int) -> None:
    """A PNG of about ``pixels`` x ``pixels`` random pixels (noise does not compress: its size is predictable)."""
    plt.imsave(path, np.random.default_rng(0).random((pixels, pixels, 3)))


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "study"
    made = tmp_path / "made"
    made.mkdir()
    report = Report("A study")
    report.text("numbers")
    for name, pixels in (("curves.png", 40), ("gradcam_Cattle-Egret.png", 40), ("big.png", 900), ("after.png", 40)):
        png(made / name, pixels)
        report.figure(made / name, f"figure {name}")
    report.write(out)
    (out / "summary.json").write_text(json.dumps({"best_test_accuracy": 0.5}))
    return out


def test_the_report_summary_and_figures_are_copied_and_photographs_and_oversize_left_out(study, tmp_path):
    dest = tmp_path / "results" / "resnet"
    budget = 200_000
    (big,) = (study / "figures").glob("*big.png")  # the report's own name for it
    assert big.stat().st_size > budget  # the big figure alone is over the budget
    left_out = publish(study, dest, "col775 resnet study --preset cpu", leave_out=["*gradcam_*"], budget=budget)
    assert [name.rsplit("_made_", 1)[1] for name in left_out] == ["gradcam_Cattle-Egret.png", "big.png"]
    assert sorted(p.name.rsplit("_made_", 1)[1] for p in (dest / "figures").iterdir()) == ["after.png", "curves.png"]
    md = (dest / "report.md").read_text()
    assert md.splitlines()[0] == "Regenerate this folder: `col775 resnet study --preset cpu`"
    assert "_made_curves.png)" in md and "_made_after.png)" in md
    assert "_made_big.png)" not in md and "_made_big.png`" in md and "size budget" in md
    assert "photographs" in md and "gradcam_Cattle-Egret.png)" not in md
    assert json.loads((dest / "summary.json").read_text()) == {"best_test_accuracy": 0.5}
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) < budget


def test_publishing_again_drops_figures_the_report_no_longer_shows(study, tmp_path):
    dest = tmp_path / "results"
    (dest / "figures").mkdir(parents=True)
    (dest / "figures" / "stale.png").write_bytes(b"old")
    publish(study, dest, "col775 x")
    assert not (dest / "figures" / "stale.png").exists()


def test_the_command_drops_report_only_and_the_cli_path_publishes(study, tmp_path):
    argv = ["resnet", "study", "--preset", "cpu", "--data", "my data", "--report-only", "--publish", "results/resnet"]
    assert regenerating_command(argv) == "col775 resnet study --preset cpu --data 'my data' --publish results/resnet"
    dest = tmp_path / "published"
    args = argparse.Namespace(publish=dest, plan=None, argv=argv)
    publish_results(args, study, leave_out=["*gradcam_*"])
    assert (dest / "report.md").read_text().startswith("Regenerate this folder: `col775 resnet study --preset cpu")
    assert (dest / "command.txt").is_file()
    publish_results(argparse.Namespace(publish=None, plan=None, argv=argv), study)  # no --publish: nothing


def test_a_study_without_a_report_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not written its report"):
        publish(tmp_path, tmp_path / "results", "col775 x")
