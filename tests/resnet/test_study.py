"""The study end to end on a tiny generated set: every run, the report, Grad-CAM grids."""

import re

from col775.resnet.study import run_study, study_runs
from col775.resnet.config import ResnetConfig


def tiny_study(tmp_path) -> ResnetConfig:
    return ResnetConfig(
        image_size=16, synthetic_train_per_class=4, synthetic_val_per_class=3, synthetic_test_per_class=2,
        n=1, epochs=2, batch_size=16, eval_batch_size=128, warmup_epochs=0, device="cpu",
        cache_dir=str(tmp_path / "cache"), study_norms=["torch_bn", "bn", "gn"], study_batch_sizes=[8, 32],
        study_batch_patience=1, gradcam_classes=["Cattle-Egret", "Indian-Peacock", "Not-A-Bird"], gradcam_per_kind=2,
    )


def test_runs_cover_every_variant_and_batch_size(tmp_path):
    names = set(study_runs(ResnetConfig()))
    assert names == {f"norm-{k}" for k in ("torch_bn", "bn", "in", "bin", "ln", "gn", "nn")} | {
        "batch-bn-b8", "batch-bn-b128", "batch-gn-b8", "batch-gn-b128"
    }


def test_study_writes_a_report_with_tables_curves_and_gradcam(tmp_path):
    out = tmp_path / "study"
    run_study(tiny_study(tmp_path), out)
    md = (out / "report.md").read_text()
    for name in ("norm-torch_bn", "norm-bn", "norm-gn", "batch-bn-b8", "batch-gn-b32"):
        assert (out / name / "metrics.json").is_file()
    assert "Sanity check: torch BatchNorm2d against our BN" in md
    assert "Batch size: BN and GN" in md
    # each variant: error, accuracy, micro F1 and macro F1, train (eval mode) and val
    caption = "train (eval mode, no augmentation) and val error, accuracy, micro F1 and macro F1"
    assert sum(line.startswith("![") and caption in line for line in md.splitlines()) == 3
    assert "`train_aug/...`" in md
    # the two named classes that exist get a grid; the unknown one is ignored
    assert (out / "gradcam" / "gradcam_Cattle-Egret.png").is_file()
    assert (out / "gradcam" / "gradcam_Indian-Peacock.png").is_file()
    for figure in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (out / figure).is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("](figures/")
