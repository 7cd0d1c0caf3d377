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
import os
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


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str) -> Path:
    """A user path: absolute as given, relative to the project root otherwise (never to the working directory,
    which differs between a shell, a Hydra job and a SLURM worker)."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else PROJECT_ROOT / expanded


def local_folder(task: DictConfig) -> Path | None:
    """The task's folder under ``data_root`` when that is set and the task has a local copy (``local.folder``)."""
    local = task.get("local")
    if local is None or not local.get("root") or not local.get("folder"):
        return None
    return project_path(local.root) / local.folder


def _read_original_file(path: Path, local: DictConfig) -> datasets.Dataset:
    """One file as its original distribution writes it: GLUE's TSVs are unquoted (sentences hold ``"``), CoLA's
    have no header, MRPC's start with a byte-order mark; every field is text, none is read as missing."""
    if path.suffix.lower() not in (".tsv", ".txt"):
        builder, _ = _file_format(DictConfig({}), str(path))
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    names = list(local.column_names) if local.get("column_names") else None
    frame = pd.read_csv(
        path, sep="\t", quoting=3, header=0 if names is None else None, names=names, dtype=str,
        keep_default_na=False, encoding="utf-8-sig",
    )
    renames = OmegaConf.to_container(local.columns) if local.get("columns") else {}
    return datasets.Dataset.from_pandas(frame.rename(columns=renames), preserve_index=False)


def _load_local_copy(task: DictConfig, folder: Path) -> DatasetDict:
    """The task's files under ``data_root``, renamed to the Hub's columns, so the rest of the spec applies unchanged."""
    if not folder.is_dir():
        raise ConfigError("data_root", f"no folder {folder} for task {task.name} (its local copy); set data_root=null for the Hub")
    local = task.local
    files = OmegaConf.to_container(local.files) if local.get("files") else _data_dir_files(str(folder))
    splits = {}
    for split, name in files.items():
        path = folder / name
        if not path.is_file():
            raise ConfigError("data_root", f"{path} not found (task.local.files.{split})")
        try:
            splits[split] = _read_original_file(path, local)
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
            raise ConfigError("data_root", f"cannot read {path}: {str(error).splitlines()[0]}") from None
    return DatasetDict(splits)


def _load_raw(task: DictConfig) -> DatasetDict:
    if task.get("data_files") or task.get("data_dir"):
        return _load_files(task)
    folder = local_folder(task)
    if folder is not None:
        return _load_local_copy(task, folder)
    if task.get("generator"):
        return instantiate(task.generator)
    try:
        return datasets.load_dataset(task.hub_id, task.get("hub_config"))
    except Exception as error:  # offline without a cached copy, unknown id, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            "task.hub_id",
            f"cannot load {task.hub_id!r} (offline? use data_root=... or task.data_dir=... for local files): {first}",
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

    def carve(train: datasets.Dataset, split: str, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        size = task.get(f"{split}_size")
        if not isinstance(size, int) or not 0 < size < len(train):
            raise ConfigError(
                f"task.{split}_size",
                f"must be an integer in (0, {len(train)}) when task.{split}_split is null (got {size!r})",
            )
        carved = train.train_test_split(test_size=size, seed=seed, shuffle=True)
        return carved["train"], carved["test"]

    train = pick("train_split")
    seed = task.get("validation_seed", 0)
    # A dataset with one split (Dolly) gives its test split first, then validation, each with its own fixed carve.
    test = pick("test_split") if task.get("test_split") else None
    if test is None:
        train, test = carve(train, "test", seed + 1)
    validation = pick("validation_split") if task.get("validation_split") else None
    if validation is None:
        train, validation = carve(train, "validation", seed)
    return DatasetDict(train=train, validation=validation, test=test)


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


# The columns each generative task type is normalised to, and the task keys naming their source columns.
GENERATIVE_COLUMNS = {
    "instruction": {"prompt": "prompt_column", "completion": "completion_column"},
    "preference": {"prompt": "prompt_column", "chosen": "chosen_column", "rejected": "rejected_column"},
}


def load_task(task: DictConfig) -> DatasetDict:
    """The task's train/validation/test splits in its type's columns.

    classification: text[, text_pair], label. instruction: prompt, completion
    [, answer]. preference: prompt, chosen, rejected [, answer].
    """
    splits = _select_splits(task, _load_raw(task))
    if task.type == "classification":
        return _normalise_columns(task, splits)
    return DatasetDict({name: _normalise_generative(task, split, name) for name, split in splits.items()})


def _normalise_generative(task: DictConfig, data: datasets.Dataset, split: str) -> datasets.Dataset:
    """Rename to the type's columns; build the prompt from a template; extract reference answers.

    ``prompt_template`` (``"{instruction}\n\n{input}"``) joins several source
    columns into the prompt, dropping a blank line where a column is empty.
    ``answer_column`` with ``reference_answer_pattern`` (a regex with one
    group, e.g. GSM8K's ``#### (\\S+)``) gives the answer exact match scores against.
    """
    wanted = {new: task.get(key) for new, key in GENERATIVE_COLUMNS[task.type].items()}
    template = task.get("prompt_template")
    if template:
        wanted.pop("prompt")
    answer_source = task.get("answer_column")
    if answer_source:
        wanted["answer"] = answer_source
    if task.get("shared_prompt_marker"):
        wanted.pop("prompt", None)
    needed = set(wanted.values()) | set(_template_fields(template))
    missing = sorted(c for c in needed if c not in data.column_names)
    if missing:
        key = next((f"task.{k}" for new, k in GENERATIVE_COLUMNS[task.type].items() if task.get(k) == missing[0]), None)
        key = key or ("task.answer_column" if missing[0] == answer_source else "task.prompt_template")
        raise ConfigError(key, f"column {missing[0]!r} not in the {split} data; available: {', '.join(data.column_names)}")
    pattern = task.get("reference_answer_pattern")
    marker = task.get("shared_prompt_marker")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = {new: _as_text(row[old]) for new, old in wanted.items()}
        if template:
            out["prompt"] = _fill(template, row)
        if marker:
            out.update(split_shared_prompt(out["chosen"], out["rejected"], marker))
        if "answer" in out and pattern:
            out["answer"] = extract_answer(str(out["answer"]), pattern)
        return out

    return data.map(convert, remove_columns=data.column_names)


def _as_text(value: Any) -> Any:
    """A completion given as a conversation (UltraFeedback) becomes its last assistant message."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return next((m["content"] for m in reversed(value) if m.get("role") == "assistant"), value[-1]["content"])
    return value


def split_shared_prompt(chosen: str, rejected: str, marker: str) -> dict[str, str]:
    """Dialogues stored whole (Anthropic HH: ``...\n\nAssistant: answer``) split into the shared
    prompt, up to and including the last ``marker`` both share, and the two answers after it."""
    common = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(marker, 0, common + 1)
    if cut < 0:
        return {"prompt": "", "chosen": chosen, "rejected": rejected}
    end = cut + len(marker)
    return {"prompt": chosen[:end].strip(), "chosen": chosen[end:].strip(), "rejected": rejected[end:].strip()}


def _template_fields(template: str | None) -> list[str]:
    import string

    return [field for _, field, _, _ in string.Formatter().parse(template or "") if field]


def _fill(template: str, row: dict[str, Any]) -> str:
    """The template with each field filled; a paragraph whose fields are all empty is left out."""
    paragraphs = []
    for paragraph in template.split("\n\n"):
        fields = _template_fields(paragraph)
        if fields and all(not str(row.get(f) or "").strip() for f in fields):
            continue
        paragraphs.append(paragraph.format(**{f: row.get(f) or "" for f in fields}))
    return "\n\n".join(paragraphs)


def extract_answer(text: str, pattern: str | None) -> str:
    """The answer inside a generation or reference: the pattern's last match (group 1 if any), else the first line."""
    import re

    if pattern:
        matches = list(re.finditer(pattern, text))
        if not matches:
            return ""
        last = matches[-1]
        value = (last.group(1) if last.groups() else last.group(0)).strip()
        return value.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", value) else value
    lines = text.strip().splitlines()
    return lines[0].strip().strip(".'\"` ") if lines else ""


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
