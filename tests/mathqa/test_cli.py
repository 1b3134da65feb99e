"""`col775 mathqa train` and `study`: flags over presets, --model, and a tiny run through col775.cli.main."""

import json
import shutil

import pytest
import yaml

from col775.cli import build_parser, main
from col775.core.config import PRESETS, config_from_args, load_config, preset_path
from col775.mathqa import score, synthetic
from col775.mathqa.models import KINDS
from col775.mathqa.study import study_settings
from col775.mathqa.train import MathqaConfig, epochs_within_budget


pytestmark = pytest.mark.usefixtures("one_thread")


def parse(*argv: str):
    return build_parser().parse_args(["mathqa", *argv])


def test_train_flags_override_the_preset():
    args = parse("train", "--preset", "demo", "--model", "bert_frozen", "--epochs", "3", "--lr", "0.01",
                 "--teacher-forcing", "0.9", "--grammar", "--max-minutes", "2.5", "--out", "somewhere")
    config = config_from_args(MathqaConfig, args, "mathqa", sections=KINDS, section_field="model")
    assert config.model == "bert_frozen"
    assert (config.epochs, config.lr, config.teacher_forcing) == (3, 0.01, 0.9)
    assert config.max_wordpieces == 64  # the demo's bert_frozen section
    assert (config.grammar, config.max_minutes) == (True, 2.5)
    demo = yaml.safe_load(preset_path("mathqa", "demo").read_text())
    assert (config.hidden_size, config.synthetic_train) == (demo["hidden_size"], demo["synthetic_train"])  # not overridden
    assert args.out == "somewhere" and callable(args.handler)


def test_train_without_flags_keeps_preset_and_defaults():
    config = config_from_args(MathqaConfig, parse("train", "--preset", "course"), "mathqa")
    assert config.model == "lstm_attn" and config.beam_size == 10 and config.teacher_forcing == 0.6
    assert config_from_args(MathqaConfig, parse("train"), "mathqa") == MathqaConfig()


def test_bad_model_and_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse("train", "--model", "transformer")
    assert "invalid choice" in capsys.readouterr().err
    assert main(["mathqa", "train", "--epochs", "many", "--out", "unused"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_study_has_config_flags_but_no_model():
    args = parse("study", "--preset", "demo", "--hidden-size", "32", "--data", "/some/folder")
    config, sections = study_settings(args.preset, {"hidden_size": args.hidden_size, "data": args.data})
    assert (config.hidden_size, config.data) == (32, "/some/folder")
    assert sections["bert_frozen"]["max_wordpieces"] == 64 and sections["lstm"] == {}
    with pytest.raises(SystemExit):
        parse("study", "--model", "lstm")


SECTIONED = """
lr: 0.001
teacher_forcing: 0.6
lstm_attn:
  lr: 0.002
  teacher_forcing: 0.9
bert_frozen:
  lr: 0.003
  batch_size: 64
bert_finetune:
  encoder_lr: 0.00005
"""


def test_a_presets_model_sections_reach_train_and_every_study_run_under_the_flags(tmp_path, capsys):
    preset = tmp_path / "sections.yaml"
    preset.write_text(SECTIONED)

    def train_config(*flags):
        args = parse("train", "--preset", str(preset), *flags)
        return config_from_args(MathqaConfig, args, "mathqa", sections=KINDS, section_field="model")

    assert (train_config("--model", "bert_frozen").lr, train_config("--model", "bert_frozen").batch_size) == (0.003, 64)
    assert (train_config("--model", "bert_frozen", "--lr", "0.01").lr, train_config().teacher_forcing) == (0.01, 0.9)
    assert (train_config("--model", "lstm").lr, train_config("--model", "lstm").teacher_forcing) == (0.001, 0.6)

    plan = tmp_path / "plan.sh"
    assert main(["mathqa", "study", "--preset", str(preset), "--out", str(tmp_path / "study"), "--plan", str(plan),
                 "--batch-size", "16"]) == 0
    runs = {path.stem: yaml.safe_load(path.read_text()) for path in (tmp_path / "study" / "plan").glob("*.yaml")}
    expected = {  # run: (model, lr, teacher forcing, encoder lr); the main lstm_attn run is the tf-0.9 one
        "model-lstm": ("lstm", 0.001, 0.6, 2e-5), "model-lstm_attn": ("lstm_attn", 0.002, 0.9, 2e-5),
        "tf-0.3": ("lstm_attn", 0.002, 0.3, 2e-5), "tf-0.6": ("lstm_attn", 0.002, 0.6, 2e-5),
        "model-bert_frozen": ("bert_frozen", 0.003, 0.6, 2e-5), "model-bert_finetune": ("bert_finetune", 0.001, 0.6, 5e-5),
    }
    assert {name: (r["model"], r["lr"], r["teacher_forcing"], r["encoder_lr"]) for name, r in runs.items()} == expected
    assert {r["batch_size"] for r in runs.values()} == {16}  # the flag beats bert_frozen's section
    assert len([line for line in plan.read_text().splitlines() if not line.startswith("#")]) == len(expected)

    preset.write_text(SECTIONED + "  learning_rate: 0.1\n")
    assert main(["mathqa", "train", "--preset", str(preset), "--out", str(tmp_path / "x")]) == 2
    assert "sections.yaml, section 'bert_finetune:'" in capsys.readouterr().err
    assert main(["mathqa", "study", "--preset", str(preset), "--out", str(tmp_path / "y"), "--plan", str(plan)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_every_packaged_preset_loads_for_every_model():
    names = sorted(p.name.removesuffix(".yaml") for p in (PRESETS / "mathqa").iterdir() if p.name.endswith(".yaml"))
    assert {"course", "cpu", "demo"} <= set(names)
    for name in names:  # a typo in any section is an error naming the file
        for kind in KINDS:
            assert load_config(MathqaConfig, "mathqa", name, {"model": kind}, KINDS, "model").model == kind


def test_tiny_train_through_main(tmp_path, capsys):
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=48, n_dev=10, n_test=8, seed=2)
    out = tmp_path / "run"
    argv = ["mathqa", "train", "--model", "lstm", "--data", str(folder), "--out", str(out), "--glove", "random",
            "--embedding-dim", "8", "--hidden-size", "16", "--target-embedding-dim", "8", "--epochs", "1",
            "--batch-size", "16", "--beam-size", "2", "--max-decode-len", "16", "--device", "cpu"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == {"dev": metrics["dev"], "test": metrics["test"]}
    assert set(metrics["dev"]) == {"exact_match", "execution_accuracy", "token_accuracy"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model"], saved["hidden_size"], saved["epochs"]) == ("lstm", 16, 1)
    assert main(argv + ["--epochs", "2"]) == 2  # other settings in a finished run folder: a clear error
    assert "--force" in capsys.readouterr().err
    assert main(["mathqa", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_decode_a_split_added_after_training_and_any_file_with_the_runs_own_settings(tmp_path, capsys):
    generated = synthetic.write_synthetic(tmp_path / "generated", n_train=48, n_dev=10, n_test=8, seed=2)
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "dev"):  # no test split while training
        shutil.copy(generated / f"{split}.json", folder / f"{split}.json")
    run = tmp_path / "run"
    assert main(["mathqa", "train", "--model", "lstm", "--data", str(folder), "--out", str(run), "--glove", "random",
                 "--embedding-dim", "8", "--hidden-size", "16", "--target-embedding-dim", "8", "--epochs", "1",
                 "--batch-size", "16", "--beam-size", "2", "--max-decode-len", "16", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["mathqa", "decode", str(run), "--split", "test"]) == 2  # no test.json yet: one clear line
    assert "test.json does not exist" in capsys.readouterr().err
    shutil.copy(generated / "test.json", folder / "test.json")

    def decode(*flags: str) -> dict:
        assert main(["mathqa", "decode", str(run), *flags]) == 0
        return json.loads(capsys.readouterr().out)

    def scored(name: str) -> tuple[list[dict], dict]:
        records = score.load_submission(run / "predictions" / name)
        return records, score.score_records(records)[0]

    split = decode("--split", "test")  # the run's own beam (2) and grammar setting (off)
    records, summary = scored("test_beam2_free.json")
    assert split["n"] == 8 and all(split[key] == pytest.approx(summary[key]) for key in summary)
    assert decode("--split", "train")["n"] == 48
    # new records in train.json would change a rebuilt vocabulary: --file must use the run's own
    train = json.loads((folder / "train.json").read_text())
    (folder / "train.json").write_text(json.dumps([{"Problem": "zz " * 5 + "2 and 3", "linear_formula": "lcm(n0,n1)",
                                                    "answer": 6}] * 3 + train))
    from_file = decode("--file", str(generated / "test.json"))
    file_records, file_summary = scored("file-test_beam2_free.json")
    assert file_records == records and from_file == split | {"truncated": 0}
    out = tmp_path / "mine.json"
    assert decode("--file", str(generated / "test.json"), "--beam-size", "1", "--out", str(out))["n"] == 8
    assert [r["Problem"] for r in score.load_submission(out)] == [r["Problem"] for r in records]


def test_time_budget_stops_between_epochs(tmp_path):
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=32, n_dev=8, n_test=8, seed=4)
    out = tmp_path / "run"
    argv = ["mathqa", "train", "--model", "lstm_attn", "--data", str(folder), "--out", str(out), "--glove", "random",
            "--embedding-dim", "8", "--hidden-size", "8", "--target-embedding-dim", "8", "--epochs", "50",
            "--beam-size", "1", "--max-decode-len", "12", "--device", "cpu", "--max-minutes", "0.000001"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["stopped_for_time"] and not metrics["stopped_early"]


def test_epochs_within_budget():
    history = [{"seconds": 60.0}, {"seconds": 90.0}]  # 75 s per epoch so far
    budget = MathqaConfig(epochs=10, max_minutes=6.0)  # 360 s: 210 s left, two more 75 s epochs
    assert epochs_within_budget(budget, history) == 4
    assert epochs_within_budget(MathqaConfig(epochs=3, max_minutes=6.0), history) == 3
    assert epochs_within_budget(MathqaConfig(epochs=10, max_minutes=1.0), history) == 2  # over budget: stop
    assert epochs_within_budget(MathqaConfig(epochs=10), history) == 10  # no budget
    assert epochs_within_budget(budget, []) == 10  # nothing measured yet
