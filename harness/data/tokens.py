"""Tokenisation of classification splits (the generative objectives format and tokenize their own).

Tokenised splits are cached on disk (:mod:`harness.data.cache`), keyed by what
determines them: the data's content hash, the tokenizer (its name, class and
full serialised vocabulary and rules) and the settings. The runs of a sweep
share a task, tokenizer and length, so only the first one tokenizes; a changed
file, a retrained tokenizer or another length is another key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import DatasetDict

from harness import versions
from harness.data import cache
from harness.data.fingerprint import fingerprint


def tokenize(splits: DatasetDict, tokenizer, max_length: int, data_sha256: dict[str, str] | None = None) -> DatasetDict:
    """Tokenize without padding (the collator pads per batch, so padding is never trained on); from the cache
    when these splits were tokenized so before."""
    folder = _cache_folder(splits, tokenizer, max_length, data_sha256)
    cached = cache.read(folder)
    if cached is not None:
        return cached
    tokenized = _tokenize(splits, tokenizer, max_length)
    cache.store(tokenized, folder)
    return tokenized


def _tokenize(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    pair = "text_pair" in splits["train"].column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        args = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    text_columns = ["text", "text_pair"] if pair else ["text"]
    return splits.map(encode, batched=True, remove_columns=text_columns, desc="tokenize")


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer as it tokenizes: for a fast tokenizer its serialised model, normaliser and rules, less the
    truncation and padding state a previous call left on it (each call sets its own)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = (
        _rules_without_call_state(backend) if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    described = f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{content}"
    return hashlib.sha256(described.encode()).hexdigest()


def _rules_without_call_state(backend) -> str:
    """``to_str`` with truncation and padding cleared, then restored: serialising without them this way costs a
    few milliseconds, where parsing and re-dumping the JSON cost fifty (it runs in every run of a sweep)."""
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        return backend.to_str()
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


def _cache_folder(splits: DatasetDict, tokenizer, max_length: int, data_sha256: dict[str, str] | None) -> Path | None:
    key = {
        "data": data_sha256 if data_sha256 is not None else fingerprint(splits),
        "columns": {name: split.column_names for name, split in splits.items()},
        "tokenizer": tokenizer_digest(tokenizer),
        "max_length": max_length,
        "libraries": versions.package_versions("tokenizers", "transformers", "datasets"),
    }
    return cache.entry_folder("tokenized", key)
