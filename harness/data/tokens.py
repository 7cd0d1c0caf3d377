"""Tokenisation of classification splits (the generative objectives format and tokenize their own).

Tokenised splits are cached on disk, keyed by what determines them: the
data's content hash, the tokenizer (its name, class and full serialised
vocabulary and rules) and the settings. The runs of a sweep share a task,
tokenizer and length, so only the first one tokenizes; a changed file, a
retrained tokenizer or another length is another key. The cache lives under
``$FT_HARNESS_CACHE`` (default ``~/.cache/ft-harness``); ``FT_HARNESS_CACHE=off``
disables it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from harness.data.fingerprint import fingerprint

CACHE_ENV = "FT_HARNESS_CACHE"


def tokenize(splits: DatasetDict, tokenizer, max_length: int, data_sha256: dict[str, str] | None = None) -> DatasetDict:
    """Tokenize without padding (the collator pads per batch, so padding is never trained on); from the cache
    when these splits were tokenized so before."""
    folder = _cache_folder(splits, tokenizer, max_length, data_sha256)
    if folder is not None and (folder / "dataset_dict.json").is_file():
        return load_from_disk(str(folder), keep_in_memory=True)
    tokenized = _tokenize(splits, tokenizer, max_length)
    if folder is not None:
        _store(tokenized, folder)
    return tokenized


def _tokenize(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    pair = "text_pair" in splits["train"].column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        args = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    text_columns = ["text", "text_pair"] if pair else ["text"]
    return splits.map(encode, batched=True, remove_columns=text_columns, desc="tokenize")


def cache_root() -> Path | None:
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() == "off":
        return None
    return Path(setting).expanduser() if setting else Path.home() / ".cache" / "ft-harness"


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer as it tokenizes: for a fast tokenizer its serialised model, normaliser and rules, less the
    truncation and padding state a previous call left on it (this call sets its own)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialised = json.loads(backend.to_str())
        serialised.pop("truncation", None)
        serialised.pop("padding", None)
        content = json.dumps(serialised, sort_keys=True)
    else:
        content = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    described = f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{content}"
    return hashlib.sha256(described.encode()).hexdigest()


def _cache_folder(splits: DatasetDict, tokenizer, max_length: int, data_sha256: dict[str, str] | None) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    key = {
        "data": data_sha256 if data_sha256 is not None else fingerprint(splits),
        "columns": {name: split.column_names for name, split in splits.items()},
        "tokenizer": tokenizer_digest(tokenizer),
        "max_length": max_length,
        # the same rules run by another release may split text differently
        "libraries": {name: _version(name) for name in ("tokenizers", "transformers", "datasets")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root / "tokenized" / digest


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _store(tokenized: DatasetDict, folder: Path) -> None:
    """Write beside the final place, then rename: a reader sees a whole cache entry or none (parallel workers)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        tokenized.save_to_disk(str(staging))
        try:
            staging.rename(folder)
        except OSError:  # another worker stored it first: theirs is the same content
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        pass  # a read-only or full disk costs the cache, never the run
