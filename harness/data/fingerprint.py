"""Fingerprinting: a content hash of each split, part of a run's identity."""

from __future__ import annotations

import hashlib

import pandas as pd
from datasets import DatasetDict


def fingerprint(splits: DatasetDict) -> dict[str, str]:
    """SHA-256 of each split's rows, so records can prove two runs saw identical data.

    The run_id hashes the config; this hashes the content, which also changes
    when a generator, a Hub revision or a local file changes under the same config.
    """
    digests = {}
    for name, split in splits.items():
        rows = pd.util.hash_pandas_object(split.to_pandas(), index=False).to_numpy()
        digests[name] = hashlib.sha256(rows.tobytes()).hexdigest()
    return digests
