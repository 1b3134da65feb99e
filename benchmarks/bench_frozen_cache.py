"""Training examples/s of ``bert_frozen`` with the frozen encoder's outputs cached, against running it.

Claim: caching the frozen MiniLM's outputs (``mathqa/encoder_cache.py``) makes a ``bert_frozen``
training step several times faster on a CPU, for an up-front cost of one encoder pass over the
problems (forward only, no gradient, no decoder), which a run pays once instead of every epoch.

Both paths train the same model from the same start on the same batches of MathQA's training
problems (the first ``--examples`` of them, in the training loader's order) with the README's
recipe of model (b) (teacher forcing 0.9, lr 0.002, no dropout, label smoothing 0.1, ``--amp``
unless ``--no-amp``), one thread by default. Times are CPU seconds of this process
(``time.process_time``), so other work on a shared machine slows the wall clock but not the
figure; with one thread they are what an idle core would take. Wall seconds are printed beside.

    .venv/bin/python benchmarks/bench_frozen_cache.py --data /path/mathqa [--examples 960] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from col775.mathqa import train
from col775.mathqa.encoder_cache import cache_hidden
from col775.mathqa.train import MathqaConfig


def timed(work) -> tuple[object, float, float]:
    """``work()``'s result, its CPU seconds and its wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with MathQA's train.json and dev.json")
    parser.add_argument("--examples", type=int, default=960, help="training problems per path")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = MathqaConfig(data=args.data, model="bert_frozen", batch_size=args.batch_size, teacher_forcing=0.9,
                          lr=0.002, dropout=0.0, label_smoothing=0.1, amp=args.amp, device="cpu")
    train.seed_everything(0)
    prepared = train.prepare(config)
    start = train.make_model(config, prepared, torch.device("cpu"))
    examples = prepared.splits["train"][: args.examples]
    cached, cache_cpu, cache_wall = timed(lambda: cache_hidden(start.encoder, examples, config.eval_batch_size,
                                                               prepared.wordpiece_pad_id, torch.device("cpu"), args.amp))
    print(f"{len(examples)} training problems, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
          f"amp {'on' if args.amp else 'off'}")
    print(f"building the cache: {cache_cpu:.1f} CPU s ({len(examples) / cache_cpu:.0f} problems/s; wall {cache_wall:.1f} s)")

    speed = {}
    for name, rows in (("running the encoder", examples), ("cached", cached)):
        model = copy.deepcopy(start)
        loader = train.make_train_loader(rows, config.batch_size, 0, prepared.wordpiece_pad_id)
        optimizer = torch.optim.Adam(model.param_groups(config.lr))
        scheduler = train.build_scheduler(config, optimizer, len(loader))
        torch.manual_seed(1)
        (loss, seen), cpu, wall = timed(lambda: train.train_epoch(model, loader, optimizer, scheduler, config,
                                                                   torch.device("cpu"), 0))
        speed[name] = seen / cpu
        print(f"{name:>20}: {speed[name]:6.1f} examples/s (CPU time; wall {seen / wall:.1f}), train loss {loss:.4f}")
    ratio = speed["cached"] / speed["running the encoder"]
    epoch = len(prepared.splits["train"])
    print(f"cached / running the encoder: {ratio:.2f}x the training examples/s; a {epoch}-problem epoch "
          f"{epoch / speed['running the encoder'] / 60:.1f} -> {epoch / speed['cached'] / 60:.1f} CPU minutes, "
          f"after a cache of train+dev built once in about "
          f"{(epoch + len(prepared.splits['dev'])) / (len(examples) / cache_cpu) / 60:.1f} CPU minutes")


if __name__ == "__main__":
    main()
