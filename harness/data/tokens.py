"""Tokenisation of classification splits (the generative objectives format and tokenize their own)."""

from __future__ import annotations

from datasets import DatasetDict


def tokenize(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Tokenize without padding (the collator pads per batch, so padding is never trained on)."""
    pair = "text_pair" in splits["train"].column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        args = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    text_columns = ["text", "text_pair"] if pair else ["text"]
    return splits.map(encode, batched=True, remove_columns=text_columns, desc="tokenize")
