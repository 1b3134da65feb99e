"""Fill .devcarry/ with what benchmarks/device/gpu_session.sh needs on a bare GPU machine.

A lent GPU machine has PyTorch and transformers but neither the project's data, the GloVe package nor
the MiniLM package, and what travels with the working tree is capped at 64 MiB: the 400,000-word GloVe
matrix (80 MB) and MiniLM's weights (91 MB) do not fit. The session measures speed only, so this writes:
  mathqa/        the course's train.json and the first --dev-problems of dev.json (the end-of-run decode
                 of a speed run needs no more);
  glove.mathqa.50d.txt   GloVe vectors of the MathQA problems' words only (about 9,200 of 10,500),
                 which the training reads through ``--glove PATH``;
  minilm/        MiniLM's configuration and tokenizer without its weights: the session builds the same
                 architecture with random weights, as fast as the trained one.
Without the course's data (no --data folder), the session trains on generated problems.

    .venv/bin/python benchmarks/device/prepare_carry.py [--data ../shared/data/mathqa] [--out .devcarry]

Add ``/.devcarry/`` to .git/info/exclude and name ``.devcarry`` in the run's ``carry``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from col775.mathqa.embeddings import _package_index
from col775.mathqa.models import default_encoder_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mathqa"))
    parser.add_argument("--out", type=Path, default=Path(".devcarry"))
    parser.add_argument("--dev-problems", type=int, default=300)
    args = parser.parse_args()
    (args.out / "mathqa").mkdir(parents=True, exist_ok=True)
    words: set[str] = set()
    for split, keep in (("train", None), ("dev", args.dev_problems)):
        source = args.data / f"{split}.json"
        if source.is_file():
            records = json.loads(source.read_text())[:keep]
            (args.out / "mathqa" / source.name).write_text(json.dumps(records))
            words.update(w for record in records for w in record["Problem"].split())
    index, vectors, _ = _package_index()
    found = sorted(w for w in words if w in index)
    with (args.out / "glove.mathqa.50d.txt").open("w") as out:
        for word in found:
            out.write(word + " " + " ".join(f"{v:.6f}" for v in vectors[index[word]]) + "\n")
    minilm = args.out / "minilm"
    minilm.mkdir(exist_ok=True)
    for path in default_encoder_path().iterdir():
        if path.is_file() and path.suffix in (".json", ".txt"):
            shutil.copyfile(path, minilm / path.name)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: MathQA files, GloVe vectors of {len(found)} of the problems' {len(words)} words, "
          f"MiniLM's configuration and tokenizer; {size / 2**20:.1f} MiB (the carry's cap is 64 MiB)")


if __name__ == "__main__":
    main()
