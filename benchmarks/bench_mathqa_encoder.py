"""MathQA training steps with the encoder run in length groups vs over the whole padded batch.

Claim: ``models.LSTMEncoder`` running each training batch as a few groups of similar problem
length (``models.length_groups``) makes a training step of the attention model faster than one
padded run over the batch, with the same results (tested in tests/mathqa/test_models.py). The
training batches are the real loader's (grouped by program length, train.make_train_loader).
The script prints the padded source positions of the timed batches relative to the real ones
for both, then trains two copies of one model (same start, dropout 0.2, teacher forcing 0.9,
bf16 autocast) on the same batches, alternating in rounds so that a change in machine load
hits both, and prints examples per second and their ratio.

    .venv/bin/python benchmarks/bench_mathqa_encoder.py [--data DIR] [--batches N] [--threads N] [--no-amp]

Without ``--data`` it uses the generated problems, whose lengths vary little (so the gain is
small); the claim is about the course's data: ``--data ../shared/data/mathqa``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from col775.core.training import optimise
from col775.mathqa import train as mathqa_train
from col775.mathqa.models import length_groups

ONE_GROUP = float("inf")  # a group costs more than any padding: the whole batch is one run


def padded_positions(batches, group_cost: float) -> int:
    total = 0
    for batch in batches:
        lengths = batch.src_lengths.tolist()
        total += sum(len(g) * max(lengths[i] for i in g) for g in length_groups(lengths, group_cost))
    return total


def train_on(model, optimizer, batches, config: mathqa_train.MathqaConfig) -> tuple[int, float]:
    """Examples trained and seconds taken on ``batches``."""
    model.train()
    count, start = 0, time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp):
            loss = mathqa_train.sequence_loss(model(batch, config.teacher_forcing), batch)
        optimise(loss, optimizer, "benchmark", config.grad_clip, model.parameters())
        count += len(batch)
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a MathQA folder (train.json, dev.json); default: generated problems")
    parser.add_argument("--batches", type=int, default=120, help="training batches timed per variant")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the variants")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-amp", action="store_true", help="float32 training instead of bf16 autocast")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = mathqa_train.MathqaConfig(data=args.data, model="lstm_attn", dropout=0.2, lr=2e-3,
                                       teacher_forcing=0.9, amp=not args.no_amp)
    prepared = mathqa_train.prepare(config)
    loader = mathqa_train.make_train_loader(prepared.splits["train"], config.batch_size, seed=0, wordpiece_pad_id=0)
    batches = [batch for _, batch in zip(range(args.batches + 3), loader)]
    warm_up, batches = batches[:3], batches[3:]
    print(f"{len(prepared.splits['train'])} training problems ({args.data or 'generated'}), {len(batches)} batches "
          f"of {config.batch_size}, {torch.get_num_threads()} threads, amp {config.amp}")

    base = mathqa_train.make_model(config, prepared, torch.device("cpu"))
    real = sum(int(b.src_lengths.sum()) for b in batches)
    variants = {}
    for name, cost in (("one padded run", ONE_GROUP), ("length groups", base.encoder.group_cost)):
        model = copy.deepcopy(base)
        model.encoder.group_cost = cost  # an instance attribute: this copy only
        print(f"  {name:15s} padded/real source positions: {padded_positions(batches, cost) / real:.2f}x")
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        train_on(model, optimizer, warm_up, config)
        variants[name] = [model, optimizer, 0, 0.0]
    per_round = max(len(batches) // args.rounds, 1)
    for r in range(args.rounds):
        for run in variants.values():
            count, seconds = train_on(run[0], run[1], batches[r * per_round:(r + 1) * per_round], config)
            run[2] += count
            run[3] += seconds
    speeds = {name: run[2] / run[3] for name, run in variants.items()}
    for name, run in variants.items():
        print(f"  {name:15s} {speeds[name]:7.1f} examples/s ({run[2]} examples in {run[3]:.1f} s)")
    print(f"length groups vs one padded run: {speeds['length groups'] / speeds['one padded run']:.2f}x examples/s")


if __name__ == "__main__":
    main()
