"""Fill .devcarry/ with what benchmarks/device/gpu_session.sh needs on a bare GPU machine.

A lent GPU machine has PyTorch and transformers but neither the project's data nor the GloVe
package, and what travels with the working tree is capped at 64 MiB: the 400,000-word GloVe
matrix (80 MB) does not fit. So this writes the course's MathQA files and a GloVe text file
holding only the words of the MathQA problems (about 9,200 of 10,500), which the training reads
through ``--glove PATH``. Vectors are the package's own; the one difference is the scale of the
random vectors for words GloVe lacks (the std of the file's values, 0.677, instead of the whole
matrix's, 0.644).

    .venv/bin/python benchmarks/device/prepare_carry.py [--data ../shared/data/mathqa] [--out .devcarry]

Add ``/.devcarry/`` to .git/info/exclude and name ``.devcarry`` in the run's ``carry``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from col775.mathqa.embeddings import _package_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mathqa"))
    parser.add_argument("--out", type=Path, default=Path(".devcarry"))
    args = parser.parse_args()
    (args.out / "mathqa").mkdir(parents=True, exist_ok=True)
    words: set[str] = set()
    for split in ("train", "dev", "test"):
        source = args.data / f"{split}.json"
        if source.is_file():
            shutil.copyfile(source, args.out / "mathqa" / source.name)
            words.update(w for record in json.loads(source.read_text()) for w in record["Problem"].split())
    index, vectors, _ = _package_index()
    found = sorted(w for w in words if w in index)
    with (args.out / "glove.mathqa.50d.txt").open("w") as out:
        for word in found:
            out.write(word + " " + " ".join(f"{v:.6f}" for v in vectors[index[word]]) + "\n")
    print(f"{args.out}: MathQA files and GloVe vectors of {len(found)} of the problems' {len(words)} words")


if __name__ == "__main__":
    main()
