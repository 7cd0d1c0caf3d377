"""Task stage: load a task's data, fix its splits, check its columns, tokenize.

A task spec (conf/task/*.yaml) names one source: an embedded generator
(``generator._target_``), local files (``data_files`` / ``data_dir``), or a
Hub dataset (``hub_id``). Whatever the source, the result is the same
three-split DatasetDict with integer labels, so that the rest of the run never
knows where the data came from. Column and label problems surface here as
ConfigErrors, before any model is loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from datasets import ClassLabel, DatasetDict
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError

FILE_FORMATS = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Names a split's file may have in a data_dir (GLUE ships dev.tsv for validation).
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}


def _file_format(task: DictConfig, path: str) -> tuple[str, dict[str, Any]]:
    suffix = Path(path).suffix.lower()
    builder = task.get("file_format") or FILE_FORMATS.get(suffix)
    if builder is None:
        raise ConfigError(
            "task.file_format", f"cannot infer from {path!r}; allowed: {', '.join(sorted(set(FILE_FORMATS.values())))}"
        )
    kwargs = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    return builder, kwargs


def _data_dir_files(data_dir: str) -> dict[str, str]:
    """Map split names to files in a folder such as GLUE's (train.tsv, dev.tsv)."""
    found = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            matches = sorted(p for p in Path(data_dir).expanduser().glob(f"{stem}.*") if p.suffix in FILE_FORMATS)
            if matches:
                found[split] = str(matches[0])
                break
    if not found:
        raise ConfigError(
            "task.data_dir",
            f"no train/dev/validation/test file with a known extension ({', '.join(FILE_FORMATS)}) in {data_dir}",
        )
    return found


def _load_files(task: DictConfig) -> DatasetDict:
    files = task.get("data_files")
    if files is None:
        files = _data_dir_files(task.data_dir)
    elif isinstance(files, str):
        files = {"train": files}
    else:
        files = OmegaConf.to_container(files)
    first = next(iter(files.values()))
    builder, kwargs = _file_format(task, first if isinstance(first, str) else first[0])
    try:
        return datasets.load_dataset(builder, data_files=files, **kwargs)
    except Exception as error:  # a parse error from pyarrow/pandas, reported as one line
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError("task.data_files", f"cannot read {files}: {message}") from None


def _load_raw(task: DictConfig) -> DatasetDict:
    if task.get("data_files") or task.get("data_dir"):
        return _load_files(task)
    if task.get("generator"):
        return instantiate(task.generator)
    try:
        return datasets.load_dataset(task.hub_id, task.get("hub_config"))
    except Exception as error:  # offline without a cached copy, unknown id, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            "task.hub_id", f"cannot load {task.hub_id!r} (offline? use task.data_dir=... for local files): {first}"
        ) from None


def _select_splits(task: DictConfig, raw: DatasetDict) -> DatasetDict:
    """Pick train/validation/test; carve validation out of train when asked.

    The carve is seeded by ``task.validation_seed`` (not the run seed) so
    that every method and every seed is scored on the same examples.
    """

    def pick(key: str) -> datasets.Dataset:
        name = task.get(key)
        if name not in raw:
            raise ConfigError(f"task.{key}", f"split {name!r} not in the data; available: {', '.join(raw)}")
        return raw[name]

    train = pick("train_split")
    if task.get("validation_split"):
        validation = pick("validation_split")
    else:
        size = task.get("validation_size")
        if not isinstance(size, int) or not 0 < size < len(train):
            raise ConfigError(
                "task.validation_size",
                f"must be an integer in (0, {len(train)}) when task.validation_split is null (got {size!r})",
            )
        carved = train.train_test_split(test_size=size, seed=task.get("validation_seed", 0), shuffle=True)
        train, validation = carved["train"], carved["test"]
    return DatasetDict(train=train, validation=validation, test=pick("test_split"))


def _normalise_columns(task: DictConfig, splits: DatasetDict) -> DatasetDict:
    """Rename to text/text_pair/label and make labels integer ids in label_names order."""
    wanted = {"text": task.text_column, "text_pair": task.get("text_pair_column"), "label": task.label_column}
    wanted = {new: old for new, old in wanted.items() if old}
    label_names = list(task.label_names)
    out = {}
    for split, data in splits.items():
        for new, old in wanted.items():
            if old not in data.column_names:
                key = {"text": "task.text_column", "text_pair": "task.text_pair_column", "label": "task.label_column"}[
                    new
                ]
                raise ConfigError(
                    key, f"column {old!r} not in the {split} data; available: {', '.join(data.column_names)}"
                )
        data = data.select_columns(list(wanted.values()))
        data = data.rename_columns({old: new for new, old in wanted.items() if old != new})
        out[split] = _encode_labels(data, label_names, split)
    return DatasetDict(out)


def _encode_labels(data: datasets.Dataset, label_names: list[str], split: str) -> datasets.Dataset:
    feature = data.features["label"]
    if isinstance(feature, ClassLabel):
        if feature.num_classes != len(label_names):
            raise ConfigError(
                "task.label_names",
                f"{len(label_names)} names but the {split} data has {feature.num_classes} classes: {', '.join(feature.names)}",
            )
        return data
    values = set(data.unique("label"))
    if values <= set(label_names):  # string labels, as in RTE's TSV files
        return data.map(lambda row: {"label": label_names.index(row["label"])}).cast_column(
            "label", ClassLabel(names=label_names)
        )
    ids = {int(v) for v in values if str(v).lstrip("-").isdigit()}
    if len(ids) == len(values) and ids <= set(range(len(label_names))):
        data = data.map(lambda row: {"label": int(row["label"])})
        return data.cast_column("label", ClassLabel(names=label_names))
    shown = ", ".join(map(str, sorted(values, key=str)[:10]))
    raise ConfigError(
        "task.label_names",
        f"the {split} labels ({shown}) are neither ids below {len(label_names)} nor in {label_names}",
    )


def load_task(task: DictConfig) -> DatasetDict:
    """The task's train/validation/test splits with columns text[, text_pair], label."""
    return _normalise_columns(task, _select_splits(task, _load_raw(task)))


def tokenize(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Tokenize without padding (the collator pads per batch, so padding is never trained on)."""
    pair = "text_pair" in splits["train"].column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        args = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    text_columns = ["text", "text_pair"] if pair else ["text"]
    return splits.map(encode, batched=True, remove_columns=text_columns, desc="tokenize")


def cap_eval(split: datasets.Dataset, max_samples: int | None) -> datasets.Dataset:
    """The first max_samples examples: the same subset for every method."""
    return split if max_samples is None or len(split) <= max_samples else split.select(range(max_samples))


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
