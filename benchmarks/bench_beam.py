"""Batched beam search (k = 10) vs the same search one example at a time, and vs greedy decoding.

Claims (targets): at batch 64, batching the beam search over batch x beam is at least 10x
faster than running it example by example, and costs at most 4x greedy decoding of the
same batch. By default the model is the project's own attention LSTM
(``models.build_model("lstm_attn")``, random weights, hidden 256 or ``--hidden``, target
vocabulary of about 100 tokens, source length 40); with random weights hypotheses rarely end
early, so every search runs close to max_len, the worst case for beam search. ``--run DIR``
times a trained run's model on its first 64 dev problems instead, where programs end and
examples leave the batch as in real use. Times are the best of a few repeats on this CPU.

What bounds the first ratio: both searches advance the same hypotheses through the same
decoder steps; batching saves only the per-call overhead of the small ones. The script also
times the decoder step alone at full width (batch x beam rows) and prints one-by-one divided
by the batched search's rows at that cost: no batched search can beat that bound. On a CPU,
where a full-width step is compute-bound matrix products, the bound is a few x, not 10x; on a
GPU, where the single example's steps are launch-bound, it is far larger.

Each is timed twice: with ``models.DecoderState`` as it is, whose ``select_beams`` (see
``beam.py``) leaves the per-example attention keys and memory in place when following
back-pointers, and with a wrapper that hides ``select_beams``, so that every step copies
them for all B*k rows.

``--device cuda`` runs the same comparison on a GPU (the timed regions end with a
synchronisation), where the one-example steps are bound by kernel launches rather than arithmetic.

    .venv/bin/python benchmarks/bench_beam.py [--quick] [--threads N] [--device D] [--hidden H | --run DIR]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from col775.mathqa import data, programs
from col775.mathqa.beam import beam_search, greedy_search
from col775.mathqa.data import Batch, Vocab
from col775.mathqa.grammar import ProgramGrammar
from col775.mathqa.models import ModelConfig, Seq2Seq, build_model
from col775.mathqa.train import load_trained, number_counts


@dataclass
class GatherAllState:
    """A decoder state without ``select_beams``: back-pointers copy the attention keys and memory too."""

    inner: Any

    def index_select(self, idx: torch.Tensor) -> GatherAllState:
        return GatherAllState(self.inner.index_select(idx))


class GatherAllModel:
    """The same model, handing out ``GatherAllState``s (the baseline for ``select_beams``)."""

    def __init__(self, model: Seq2Seq) -> None:
        self.model, self.tgt_vocab = model, model.tgt_vocab

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def start(self, batch: Batch) -> GatherAllState:
        return GatherAllState(self.model.start(batch))

    def step(self, prev: torch.Tensor, state: GatherAllState) -> tuple[torch.Tensor, GatherAllState]:
        logits, inner = self.model.step(prev, state.inner)
        return logits, GatherAllState(inner)


class RowCounter:
    """The same model, recording how many hypotheses each decoder step advances."""

    def __init__(self, model: Seq2Seq) -> None:
        self.model, self.tgt_vocab, self.rows = model, model.tgt_vocab, []

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def start(self, batch: Batch) -> Any:
        return self.model.start(batch)

    def step(self, prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self.rows.append(len(prev))
        return self.model.step(prev, state)


def decoder_floor(model: Seq2Seq, batch: Batch, beam_size: int, max_len: int, repeats: int) -> float:
    """Seconds the batched search spends in decoder steps alone: the rows it advances, at the
    full-width step's cost per row. Any search order must do this work; the one-at-a-time search
    adds only its per-call overhead to it, so one_by_one / floor bounds what batching can gain."""
    counter = RowCounter(model)
    beam_search(counter, batch, beam_size, max_len)
    width = len(batch) * beam_size
    device = batch.src.device
    state = model.start(batch).index_select(torch.arange(len(batch), device=device).repeat_interleave(beam_size))
    prev = torch.randint(4, len(model.tgt_vocab), (width,), generator=torch.Generator().manual_seed(3)).to(device)
    steps = 20
    wall, _ = best_time(lambda: [model.step(prev, state) for _ in range(steps)], repeats)
    return wall / (steps * width) * sum(counter.rows)


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall-clock and best process CPU time (user + system, all threads) over ``repeats`` runs.

    CPU time is the steadier of the two when other processes share the cores.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def describe(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize() -> None:
    """Wait for queued GPU work, so that a timed region holds its kernels (a no-op on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def make_batch(batch_size: int, src_len: int, src_vocab_size: int, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, src_vocab_size, (batch_size, src_len), generator=generator)
    lengths = torch.full((batch_size,), src_len)
    return Batch(src=src, src_lengths=lengths, tgt=torch.zeros(batch_size, 2, dtype=torch.long),
                 tgt_lengths=torch.full((batch_size,), 2))


def make_batch_row(batch: Batch, i: int) -> Batch:
    return Batch(src=batch.src[i : i + 1], src_lengths=batch.src_lengths[i : i + 1],
                 tgt=batch.tgt[i : i + 1], tgt_lengths=batch.tgt_lengths[i : i + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, max_len 20, one repeat")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--hidden", type=int, default=256, help="decoder size (256: the course preset, 128: the demo)")
    parser.add_argument("--run", type=Path, help="a trained MathQA run folder: time its model on its first dev problems "
                        "(hypotheses then end and examples stop early, as in real use) instead of random weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batch_size, max_len, repeats = (16, 20, 1) if args.quick else (64, 40, 3)
    beam_size, src_len = 10, 40

    if args.run is not None:
        model, config, prepared = load_trained(args.run, args.device)
        model.eval()
        tgt_vocab, max_len = model.tgt_vocab, config.max_decode_len
        examples = prepared.splits["dev"][:batch_size]
        batch = data.collate(examples, wordpiece_pad_id=prepared.wordpiece_pad_id).to(device)
        num_numbers = number_counts(batch.records)
        described = f"trained {config.model} from {args.run} (hidden {config.hidden_size}), its first {len(batch)} dev problems"
    else:
        torch.manual_seed(0)
        tgt_itos = [*Vocab.specials, *programs.OPERATIONS, "|", *programs.CONSTANTS[:20],
                    *(f"n{k}" for k in range(12)), *(f"#{k}" for k in range(10))]
        tgt_vocab = Vocab(tgt_itos)
        src_vocab = Vocab([*Vocab.specials, *(f"w{i}" for i in range(2000))])
        model = build_model("lstm_attn", src_vocab, tgt_vocab, ModelConfig(glove="random", hidden_size=args.hidden))
        model.eval().to(device)
        batch = make_batch(batch_size, src_len, len(src_vocab), seed=1).to(device)
        num_numbers = torch.randint(1, 8, (batch_size,), generator=torch.Generator().manual_seed(2))
        described = f"attention LSTM (hidden {args.hidden}, random weights), source length {src_len}"
    grammar = ProgramGrammar(tgt_vocab.itos, tgt_vocab.eos_id, tgt_vocab.pad_id, tgt_vocab.bos_id)
    singles = [data.collate([example], wordpiece_pad_id=prepared.wordpiece_pad_id).to(device) for example in examples] \
        if args.run is not None else [make_batch_row(batch, i) for i in range(len(batch))]

    with torch.inference_mode():
        same = [[h.tokens for h in hs] for hs in beam_search(model, batch, beam_size, max_len)] == [
            [h.tokens for h in hs] for hs in beam_search(GatherAllModel(model), batch, beam_size, max_len)]
    if not same:
        raise RuntimeError("select_beams changed the beam search result")
    print(f"{described}, target vocab {len(tgt_vocab)}, "
          f"batch {len(batch)}, beam {beam_size}, max_len {max_len}, device {describe(device)}, "
          f"torch threads {torch.get_num_threads()}")
    for name, decoder in (("models.Seq2Seq", model), ("same, state without select_beams", GatherAllModel(model))):
        with torch.inference_mode():
            greedy = best_time(lambda: greedy_search(decoder, batch, max_len), repeats)
            batched = best_time(lambda: beam_search(decoder, batch, beam_size, max_len), repeats)
            constrained = best_time(lambda: beam_search(decoder, batch, beam_size, max_len, grammar=grammar,
                                                        num_numbers=num_numbers), repeats)
            one_by_one = best_time(lambda: [beam_search(decoder, one, beam_size, max_len) for one in singles], 1)
            floor = decoder_floor(model, batch, beam_size, max_len, repeats)
        print(f"\n{'[' + name + ']':<36}{'wall ms':>9}{'CPU ms':>10}")
        for label, (wall, cpu) in (("greedy, batched", greedy), ("beam, batched", batched),
                                   ("beam + grammar, batched", constrained),
                                   ("beam, one example at a time", one_by_one)):
            print(f"{label:<36}{wall * 1e3:9.1f}{cpu * 1e3:10.1f}")
        for label, (num, den), target in (("speed-up of batching the beam", (one_by_one, batched), ">= 10x"),
                                          ("beam time / greedy time", (batched, greedy), "<= 4x"),
                                          ("grammar cost on the beam", (constrained, batched), "")):
            print(f"{label:<36}{num[0] / den[0]:8.2f}x{num[1] / den[1]:9.2f}x  {target and '(target ' + target + ')'}")
        print(f"{'decoder steps alone, batched rows':<36}{floor * 1e3:9.1f}   (the work any search order repeats)")
        print(f"{'bound on batching: one-by-one/that':<36}{one_by_one[0] / floor:8.2f}x")

if __name__ == "__main__":
    main()
