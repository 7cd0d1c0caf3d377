"""The data stage's disk cache: loaded and tokenised splits, reused by the later runs of a sweep.

A sweep's runs share a task, a tokenizer and a length, so everything the
data stage derives from them is computed once. Each entry is keyed by what
determines it, never by a name: the bytes of the files read (or the
generator's config and source), the task spec, the data stage's own code and
the library releases. A changed file, spec, generator or loader is another
key, so a stale entry is never read. Data from the Hub is left to the
``datasets`` cache, which keys it by revision; the project keys only what it
can prove unchanged offline.

The cache lives under ``$FT_HARNESS_CACHE`` (default ``~/.cache/ft-harness``);
``FT_HARNESS_CACHE=off`` disables it. A read-only or full disk costs the
cache, never the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_from_disk

CACHE_ENV = "FT_HARNESS_CACHE"
ENTRY_MARKER = "dataset_dict.json"  # written last by save_to_disk: its presence means a whole entry


def cache_root() -> Path | None:
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() == "off":
        return None
    return Path(setting).expanduser() if setting else Path.home() / ".cache" / "ft-harness"


def entry_folder(kind: str, key: dict[str, Any]) -> Path | None:
    """Where the entry of ``kind`` keyed by ``key`` (JSON-able) lives; None when the cache is off."""
    root = cache_root()
    if root is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return root / kind / digest


def read(folder: Path | None) -> DatasetDict | None:
    """The entry held in memory (a later run may delete or replace the folder), or None if there is none."""
    if folder is None or not (folder / ENTRY_MARKER).is_file():
        return None
    return load_from_disk(str(folder), keep_in_memory=True)


def store(splits: DatasetDict, folder: Path | None, extra: dict[str, Any] | None = None) -> None:
    """Write beside the final place, then rename: a reader sees a whole entry or none (parallel workers).
    ``extra`` is kept as ``extra.json`` in the entry (what was computed alongside, e.g. its fingerprint)."""
    if folder is None:
        return
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        splits.save_to_disk(str(staging))
        if extra is not None:
            (staging / "extra.json").write_text(json.dumps(extra, sort_keys=True))
        try:
            staging.rename(folder)
        except OSError:  # another worker stored it first: theirs is the same content
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        pass


def write_extra(folder: Path, extra: dict[str, Any]) -> None:
    """Replace an entry's ``extra.json`` whole (written beside it, then renamed over it)."""
    try:
        staging = folder / f"extra.json.{os.getpid()}"
        staging.write_text(json.dumps(extra, sort_keys=True))
        staging.replace(folder / "extra.json")
    except OSError:
        pass


def read_extra(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "extra.json").read_text())
    except (OSError, ValueError):
        return None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
