"""`col775 resnet evaluate`: a trained run scored on its own splits and on a new folder of class folders."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from col775.cli import main
from col775.resnet.train import train
from tests.resnet.test_train import assert_scores_match, class_files, reference_scores, tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evaluate")
    config = tiny(tmp_path, epochs=1)
    metrics = train(config, tmp_path / "run")
    return tmp_path, config, metrics


def evaluate_cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["resnet", "evaluate", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_its_own_data_reproduces_metrics_json(trained, capsys):
    tmp_path, _, metrics = trained
    run, root = tmp_path / "run", metrics["data"]["root"]
    for split in ("train", "val", "test"):
        code, printed, _ = evaluate_cli(capsys, str(run), "--data", root, "--split", split)
        assert code == 0 and printed == metrics[split], split


def test_a_new_folder_with_some_classes_is_scored_and_detailed(trained, capsys):
    tmp_path, config, metrics = trained
    classes = metrics["data"]["classes"]
    source = Path(metrics["data"]["root"]) / "test"
    new = tmp_path / "new-birds"  # class folders directly, no split folders, 3 of the 25 classes
    for name in ("Cattle-Egret", "Indian-Peacock", "Sarus-Crane"):
        shutil.copytree(source / name, new / name)
    out = tmp_path / "scores" / "new.json"
    code, printed, _ = evaluate_cli(capsys, str(tmp_path / "run"), "--data", str(new), "--out", str(out))
    assert code == 0
    files, labels = class_files(new, classes)
    assert_scores_match(printed, reference_scores(tmp_path / "run", files, labels, config))
    written = json.loads(out.read_text())
    assert {k: written[k] for k in printed} == printed
    assert {name: entry["n"] for name, entry in written["per_class_accuracy"].items()} == {
        "Cattle-Egret": 2, "Indian-Peacock": 2, "Sarus-Crane": 2,
    }
    correct = sum(entry["accuracy"] * entry["n"] for entry in written["per_class_accuracy"].values())
    assert correct / printed["n"] == pytest.approx(printed["accuracy"])
    assert sum(map(sum, written["confusion_matrix"])) == printed["n"]
    assert (tmp_path / "scores" / "new_confusion.png").stat().st_size > 0


def test_a_class_the_run_does_not_know_is_an_error_naming_it(trained, capsys):
    tmp_path, _, metrics = trained
    strange = tmp_path / "strange" / "test"
    shutil.copytree(Path(metrics["data"]["root"]) / "test" / "Cattle-Egret", strange / "Cattle-Egret")
    shutil.copytree(Path(metrics["data"]["root"]) / "test" / "Cattle-Egret", strange / "Dodo")
    code, _, err = evaluate_cli(capsys, str(tmp_path / "run"), "--data", str(tmp_path / "strange"))
    assert code == 2 and err.startswith("col775: error:") and "Dodo" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- exported weights


def test_an_exported_file_alone_scores_as_its_run_folder(trained, capsys):
    """`col775 resnet export` writes tensors and plain data only (it loads with weights_only=True) and
    `evaluate FILE` gives the run's own numbers, and the PIL/sklearn reference on a new folder."""
    tmp_path, config, metrics = trained
    file = tmp_path / "exported" / "best.pt"
    assert main(["resnet", "export", str(tmp_path / "run"), str(file)]) == 0
    capsys.readouterr()
    content = torch.load(file, weights_only=True)
    assert content["classes"] == metrics["data"]["classes"] and content["config"]["norm"] == config.norm
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)["objects"]["model"]
    assert content["model"].keys() == best.keys()
    assert all(torch.equal(content["model"][k], best[k].float()) for k in best)
    assert file.stat().st_size < 1.1 * sum(t.numel() * t.element_size() for t in best.values()) + 20_000

    for split in ("train", "val", "test"):
        code, printed, _ = evaluate_cli(capsys, str(file), "--data", metrics["data"]["root"], "--split", split)
        assert code == 0 and printed == metrics[split], split
    source = Path(metrics["data"]["root"]) / "test"
    files, labels = class_files(source, metrics["data"]["classes"])
    code, printed, _ = evaluate_cli(capsys, str(file), "--data", str(source))
    assert_scores_match(printed, reference_scores(tmp_path / "run", files, labels, config))


def test_a_carved_test_split_is_drawn_again_from_a_copy_of_the_data(tmp_path, capsys):
    """Data with train/ and val/ only: the run carves its test split from train; scoring the exported file
    on a copy of that folder elsewhere draws the same test images and reproduces metrics.json."""
    trained_run = tmp_path / "first"
    config = tiny(trained_run, epochs=1, synthetic_train_per_class=6)
    metrics = train(config, trained_run / "run")
    data = tmp_path / "birds"
    for split in ("train", "val"):
        shutil.copytree(Path(metrics["data"]["root"]) / split, data / split)
    config = tiny(tmp_path, epochs=1, data=str(data), test_fraction=0.2)
    metrics = train(config, tmp_path / "run")
    assert metrics["data"]["test_carved"]
    file = tmp_path / "best.pt"
    assert main(["resnet", "export", str(tmp_path / "run"), str(file)]) == 0
    capsys.readouterr()
    moved = tmp_path / "elsewhere" / "birds"
    shutil.copytree(data, moved)
    shutil.rmtree(data)
    code, printed, _ = evaluate_cli(capsys, str(file), "--data", str(moved), "--split", "test")
    assert code == 0 and printed == metrics["test"]


def test_a_file_that_is_not_an_export_is_one_clear_error(tmp_path, capsys):
    other = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, other)
    code, _, err = evaluate_cli(capsys, str(other), "--data", str(tmp_path))
    assert code == 2 and "col775 resnet export" in err and len(err.splitlines()) == 1
