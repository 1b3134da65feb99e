"""Decoded data cached on disk: one folder per (source files, settings), built once, read as memmaps.

Decoding thousands of image files costs more than a small model's epoch, and every run, seed
and process of a study would pay it again. A study therefore decodes its files once into a
folder of flat uint8 files plus ``meta.json``, named by a hash of what the pixels depend on
(each file's path, size and mtime, and the decoding settings), and later loads open those
files as read-only ``numpy.memmap`` arrays, which every process shares through the page cache.

A folder is written under a temporary name and renamed into place only when complete, so a
killed build leaves nothing that looks finished; ``meta.json`` records the folder's ``source``
(what was decoded, without the file stamps), and once a new folder is in place the older ones
of the same source, which describe files that have since changed, are deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

META = "meta.json"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB chunks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_key(header: str, entries: Iterable[tuple[Path, object]]) -> str:
    """Hash of `header` (the settings) and, for each (file, tag), the file's path, size, mtime and tag."""
    digest = hashlib.sha256(header.encode())
    for path, tag in entries:
        stat = path.stat()
        digest.update(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\t{tag}\n".encode())
    return digest.hexdigest()[:24]


def read_meta(folder: Path) -> dict | None:
    """The ``meta.json`` of a finished cache folder, or None when there is none yet."""
    meta = folder / META
    return json.loads(meta.read_text()) if meta.is_file() else None


@contextmanager
def build_cache_dir(target: Path, source: str) -> Iterator[tuple[Path, dict]]:
    """Yield (a fresh temporary folder beside `target`, its meta dict) to fill; publish both as `target`.

    When the block ends without an error the meta (with `source` added) is written as
    ``meta.json`` and the folder renamed to `target` (a finished `target` left by a parallel
    build of the same files is kept instead); then older caches of `source` are deleted. On
    any error, or an interrupt, the temporary folder is removed and nothing is published.
    """
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta: dict = {"source": source}
    try:
        yield tmp, meta
        (tmp / META).write_text(json.dumps(meta))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / META).is_file():  # not a finished cache from a parallel run
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(target, source)


def _remove_stale(current: Path, source: str) -> None:
    """Delete other caches of the same source: they describe files that have since changed."""
    for other in current.parent.glob(f"{current.name.rsplit('-', 1)[0]}-*"):
        meta = other / META
        if other == current or not meta.is_file():
            continue
        try:
            stale = json.loads(meta.read_text()).get("source") == source
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(other, ignore_errors=True)


class MappedArray:
    """A flat uint8 file read as a (read-only) memmap of `shape`, opened on first use.

    The memmap is not pickled: a DataLoader worker or another process re-opens the file and
    shares its pages instead of receiving a copy of the data. A shape with no elements (an
    empty split) reads as an empty array, since an empty file cannot be mapped.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path = path
        self.shape = tuple(shape)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None and 0 in self.shape:
            self._array = np.zeros(self.shape, np.uint8)
        elif self._array is None:
            self._array = np.memmap(self.path, np.uint8, "r", shape=self.shape)
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}
