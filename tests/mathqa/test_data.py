"""Loading, number linking, vocabularies and batching of MathQA data."""

import json
import logging
from pathlib import Path

import pytest
import torch

from col775.mathqa import data, programs

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mathqa"
RECORDS = [
    {"Problem": "what is 20 % of 1,500 ?", "linear_formula": "multiply(n0,n1)|divide(#0,const_100)|", "answer": 300},
    {"Problem": "a train 150 m long passes a pole in 15 sec . find its speed .",
     "linear_formula": "divide(n0,n1)|multiply(#0,const_3_6)|", "answer": 36},
    {"Problem": "the 3rd term is 2.5 and 6,12 are given", "linear_formula": "add(n0,n1)", "answer": 5.5},
]


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_load_mathqa_reads_splits_and_optional_test(tmp_path):
    write(tmp_path / "train.json", RECORDS)
    write(tmp_path / "dev.json", RECORDS[:1])
    splits = data.load_mathqa(tmp_path)
    assert set(splits) == {"train", "dev"} and splits["train"] == RECORDS
    write(tmp_path / "test.json", RECORDS[1:])
    assert len(data.load_mathqa(tmp_path)["test"]) == 2


def test_malformed_record_names_file_and_index(tmp_path):
    bad = [RECORDS[0], {"Problem": "x", "answer": 1}]
    path = write(tmp_path / "train.json", bad)
    with pytest.raises(ValueError, match=r"train\.json, record 1: field 'linear_formula'"):
        data.load_split(path)
    with pytest.raises(ValueError, match="JSON list"):
        data.load_split(write(tmp_path / "obj.json", {"a": 1}))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        data.load_split(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="train.json and dev.json"):
        data.load_mathqa(tmp_path / "nowhere")


def test_number_spans_follow_the_scorer_on_its_quirks():
    problem = "pay 1,234,567 for 3rd item , - 3 and -2.5 or -2 , 1 / 2 and .5"
    spans = data.number_spans(problem)
    assert [problem[s:e] for s, e in spans] == ["1,234,567", "3", "3", "-2.5", "2", "1", "2", ".5"]
    assert [float(problem[s:e].replace(",", "")) for s, e in spans] == programs.extract_numbers(problem)


def test_source_tokens_replace_each_number_by_its_placeholder():
    assert data.source_tokens("the 3rd term is 2.5 and 6,12 are given") == [
        "the", "n0", "rd", "term", "is", "n1", "and", "n2", ",", "n3", "are", "given"]
    assert data.source_tokens("what is 20 % of 1,500 ?") == ["what", "is", "n0", "%", "of", "n1", "?"]


@pytest.mark.skipif(not DATA.is_dir(), reason="course MathQA data not present at ../shared/data/mathqa")
def test_number_linking_agrees_with_scorer_on_all_dev_problems():
    for record in data.load_split(DATA / "dev.json"):
        problem = record["Problem"]
        spans = data.number_spans(problem)
        assert [float(problem[s:e].replace(",", "")) for s, e in spans] == programs.extract_numbers(problem)
        placeholders = [t for t in data.source_tokens(problem) if t in {f"n{k}" for k in range(len(spans))}]
        assert placeholders == [f"n{k}" for k in range(len(spans))]


def test_wordpiece_numbers_mark_overlapping_pieces():
    # "a 1,500 b 3rd": pieces [CLS] a 1 , 500 b 3rd [SEP]
    offsets = [(0, 0), (0, 1), (2, 3), (3, 4), (4, 7), (8, 9), (10, 13), (0, 0)]
    spans = data.number_spans("a 1,500 b 3rd")
    assert data.wordpiece_numbers(offsets, spans) == [0, 0, 1, 1, 1, 0, 2, 0]
    assert data.wordpiece_numbers(offsets, spans, max_numbers=1) == [0, 0, 1, 1, 1, 0, 0, 0]


def test_vocab_build_encode_save_load(tmp_path):
    vocab = data.Vocab.build([["a", "b", "a"], ["c", "a", "b"]], min_freq=2, always=["n0"])
    assert vocab.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    assert vocab.itos[4:] == ["n0", "a", "b"]  # c occurs once
    assert vocab.encode(["a", "c"]) == [5, vocab.unk_id]
    assert vocab.decode([6, 4]) == ["b", "n0"]
    vocab.save(tmp_path / "v.json")
    assert data.Vocab.load(tmp_path / "v.json") == vocab
    with pytest.raises(ValueError, match="saved Vocab"):
        data.Vocab.load(write(tmp_path / "bad.json", [1, 2]))
    with pytest.raises(ValueError, match="must start with"):
        data.Vocab(["a", "b"])


def test_build_vocabs_from_train_only():
    src, tgt = data.build_vocabs(RECORDS[:2], max_numbers=5)
    assert all(f"n{k}" in src.stoi for k in range(5))
    assert "rd" not in src.stoi  # only in the third record
    assert "multiply" in tgt.stoi and "|" in tgt.stoi and "add" not in tgt.stoi


def test_encode_and_collate_pad_and_keep_records():
    src, tgt = data.build_vocabs(RECORDS)
    examples = data.encode_records(RECORDS, src, tgt)
    assert examples[0].tgt[0] == tgt.bos_id and examples[0].tgt[-1] == tgt.eos_id
    assert tgt.decode(examples[0].tgt[1:-1]) == programs.program_tokens(RECORDS[0]["linear_formula"])
    batch = data.collate(examples)
    lengths = [len(e.src) for e in examples]
    assert batch.src.shape == (3, max(lengths)) and batch.src_lengths.tolist() == lengths
    for i, example in enumerate(examples):
        assert batch.src[i, : lengths[i]].tolist() == example.src
        assert (batch.src[i, lengths[i]:] == 0).all()
        assert batch.tgt[i, : len(example.tgt)].tolist() == example.tgt
    assert batch.records == RECORDS and batch.wordpieces is None
    assert batch.to("cpu").src.equal(batch.src)


def test_collate_wordpieces():
    examples = [data.Example({}, [4], [2, 3], [101, 7, 102], [0, 1, 0]), data.Example({}, [4], [2, 3], [101, 102], [0, 0])]
    batch = data.collate(examples)
    assert batch.wordpieces.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch.wordpiece_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.wordpiece_numbers.tolist() == [[0, 1, 0], [0, 0, 0]]


def test_bucket_sampler_covers_everything_once_with_similar_lengths():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1000,), generator=generator).tolist()
    sampler = data.BucketBatchSampler(lengths, batch_size=16, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 20  # a random batch of 16 spans about 175
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ordered = list(data.BucketBatchSampler(lengths, 16, shuffle=False))
    flat = [lengths[i] for b in ordered for i in b]
    assert flat == sorted(lengths)


@pytest.mark.parametrize("count", [969, 960, 962])  # a last global batch of 9, none, 2 (fewer than 3 ranks)
def test_bucket_sampler_shares_each_global_batch_out_by_rank(count):
    """3 ranks step through the batches one process takes at their global batch size, each holding every
    third index of each batch; a last batch with fewer indices than ranks is skipped by all."""
    lengths = torch.randint(1, 200, (count,), generator=torch.Generator().manual_seed(0)).tolist()
    whole = list(data.BucketBatchSampler(lengths, batch_size=48, seed=1))
    shards = [list(data.BucketBatchSampler(lengths, batch_size=48, seed=1, ranks=3, rank=r)) for r in range(3)]
    kept = [batch for batch in whole if len(batch) >= 3]
    assert len(kept) == len(whole) - (count % 48 in (1, 2))
    for shard in shards:
        assert len(shard) == len(kept) == len(data.BucketBatchSampler(lengths, 48, ranks=3))
    for step, batch in enumerate(kept):
        assert [shard[step] for shard in shards] == [batch[0::3], batch[1::3], batch[2::3]]


def test_make_loader_yields_batches(tmp_path):
    src, tgt = data.build_vocabs(RECORDS)
    loader = data.make_loader(data.encode_records(RECORDS, src, tgt), batch_size=2, shuffle=True)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 3
    assert sorted(r["answer"] for b in batches for r in b.records) == [5.5, 36, 300]


def test_write_predictions_submission_format(tmp_path):
    path = data.write_predictions(tmp_path / "out" / "dev.json", RECORDS[:2], ["add(n0,n1)", ""])
    rows = json.loads(path.read_text())
    assert rows[0] == {**RECORDS[0], "predicted": "add(n0,n1)"} and rows[1]["predicted"] == ""
    with pytest.raises(ValueError, match="2 records but 1"):
        data.write_predictions(tmp_path / "x.json", RECORDS[:2], ["a"])


def test_training_records_drop_long_records_and_unrunnable_programs_with_one_warning_each(caplog):
    huge = {"Problem": "word " * 20_000 + "7 apples", "linear_formula": "add(n0,const_1)", "answer": 8}  # 20,002 tokens
    long_program = {"Problem": "add 1 and 2", "linear_formula": "add(n0,n1)|" * 30, "answer": 3}  # 120 tokens
    unknown_op = {"Problem": "a square of side 4", "linear_formula": "diagonal(n0)", "answer": 5.66}
    wrong_arity = {"Problem": "3 and 4", "linear_formula": "add(n0)|", "answer": 7}
    records = [RECORDS[0], huge, unknown_op, RECORDS[1], long_program, wrong_arity, RECORDS[2]]
    with caplog.at_level(logging.WARNING, logger="col775.mathqa.data"):
        kept, dropped = data.training_records(records, max_source_len=50, max_target_len=100, where="x/train.json")
    assert kept == RECORDS and dropped == {"too_long": 2, "bad_program": 2}
    too_long, bad = [record.getMessage() for record in caplog.records]
    assert too_long.startswith("x/train.json: 2 training record(s) dropped (too long)")
    assert "record 1 has 20002 source and 4 program tokens" in too_long
    assert bad.startswith("x/train.json: 2 training record(s) dropped (bad program)")
    assert "record 2: step 0: unknown operation 'diagonal'" in bad


def test_encode_records_cuts_sources_and_programs_to_the_caps():
    words = [letter * 2 for letter in "abcdefghijklmnopqrstuvwxyzABCD"]
    long = {"Problem": " ".join(words) + " 5", "linear_formula": "add(n0,n1)|" * 5, "answer": 1}
    src, tgt = data.build_vocabs([long])
    [example] = data.encode_records([long], src, tgt, max_source_len=10, max_target_len=6)
    assert src.decode(example.src) == words[:10]
    assert tgt.decode(example.tgt) == ["<bos>", "add", "n0", "n1", "|", "add", "n0", "<eos>"]
    assert data.count_over([long, *RECORDS], 20, 10) == 1  # 31 source and 20 program tokens; RECORDS: at most 14, 8
    assert data.count_over([long], 31, 20) == 0 and data.count_over([long], 31, 19) == 1
