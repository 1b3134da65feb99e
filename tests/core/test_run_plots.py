"""A finished run folder holds its own curves under plots/, as the README says."""

import matplotlib.image

from col775.core.runs import RunDir


def test_finish_writes_one_curve_per_quantity_with_splits_overlaid(tmp_path):
    run = RunDir(tmp_path / "run", {"lr": 0.1})
    for epoch in range(3):
        run.log_epoch({"epoch": epoch, "train/loss": 1.0 / (epoch + 1), "val/loss": 1.2 / (epoch + 1),
                       "val/accuracy": 0.1 * epoch, "lr": 0.1, "note": "text is not plotted"})
    assert not any((tmp_path / "run" / "plots").iterdir())
    run.finish({"val": {"accuracy": 0.2}})

    written = sorted(p.name for p in (tmp_path / "run" / "plots").iterdir())
    assert written == ["accuracy.png", "loss.png", "lr.png"]
    image = matplotlib.image.imread(tmp_path / "run" / "plots" / "loss.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_curves_overlay_the_splits_of_one_quantity(tmp_path, monkeypatch):
    from col775.core import plots

    drawn = {}
    monkeypatch.setattr(plots, "line_plot", lambda series, path, **_: drawn.setdefault(path.name, series))
    history = [{"epoch": e, "train/loss": 3.0 - e, "val/loss": 4.0 - e, "lr": 0.5} for e in range(2)]
    plots.history_curves(history, tmp_path)
    assert drawn["loss.png"] == {"train": ([0, 1], [3.0, 2.0]), "val": ([0, 1], [4.0, 3.0])}
    assert drawn["lr.png"] == {"lr": ([0, 1], [0.5, 0.5])}
