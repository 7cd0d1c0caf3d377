"""Loading: a task's data from its source, its three splits fixed, its columns and labels normalised.

A task names one source (:class:`~harness.data.spec.TaskSpec`): an embedded
generator, local files (``data_files`` / ``data_dir``), a local copy under
``data_root`` (``local``), or a Hub dataset (``hub_id``). Whatever the source,
the result is the same three-split DatasetDict in its type's columns, with
integer labels, so that the rest of the run never knows where the data came
from. Column and label problems surface here as ConfigErrors, before any model
is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from datasets import ClassLabel, DatasetDict
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness import versions
from harness.config import ConfigError, root_cause_line
from harness.data import cache
from harness.data.answers import extract_answer
from harness.data.fingerprint import fingerprint
from harness.data.prompts import as_text, fill, split_shared_prompt, template_fields
from harness.data.spec import COLUMNS, LocalCopy, TaskSpec
from harness.paths import project_path

FILE_FORMATS = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Names a split's file may have in a data_dir (GLUE ships dev.tsv for validation).
# The data stage's modules whose code shapes a loaded split: a change to any of them is a new cache key.
LOADER_MODULES = ("load.py", "prompts.py", "answers.py", "spec.py", "fingerprint.py")
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}


def load_task(task: DictConfig | TaskSpec) -> DatasetDict:
    """The task's train/validation/test splits in its type's columns.

    classification: text[, text_pair], label. instruction: prompt, completion
    [, answer]. preference: prompt, chosen, rejected [, answer].
    """
    spec = task if isinstance(task, TaskSpec) else TaskSpec.from_config(task)
    raw = load_raw(spec)
    _check_columns(spec, raw)
    splits = _select_splits(spec, raw)
    if spec.type == "classification":
        return DatasetDict({name: _normalise_classification(spec, split, name) for name, split in splits.items()})
    return DatasetDict({name: _normalise_generative(spec, split, name) for name, split in splits.items()})


def load_fingerprinted(task: DictConfig | TaskSpec) -> tuple[DatasetDict, dict[str, str]]:
    """:func:`load_task` and the splits' content hash (:func:`~harness.data.fingerprint.fingerprint`), from the
    data cache when the same source was loaded by the same code before (see :mod:`harness.data.cache`)."""
    spec = task if isinstance(task, TaskSpec) else TaskSpec.from_config(task)
    source = _source_key(spec)
    folder = cache.entry_folder("loaded", {**source, **_loader_key(spec)}) if source is not None else None
    splits = cache.read(folder)
    if splits is not None:
        stored = cache.read_extra(folder) or {}
        if "data_sha256" not in stored:  # an entry whose fingerprint was lost: repaired, not reloaded every run
            stored = {"data_sha256": fingerprint(splits)}
            cache.write_extra(folder, stored)
        return splits, stored["data_sha256"]
    splits = load_task(spec)
    digests = fingerprint(splits)
    cache.store(splits, folder, {"data_sha256": digests})
    return splits, digests


def _source_key(spec: TaskSpec) -> dict[str, Any] | None:
    """What the loaded data is made of, provably, offline: the bytes of every file read, or the generator's
    config and source code. None for the Hub (the ``datasets`` cache keys it by revision) and for a source
    that cannot be read (loading it reports why)."""
    try:
        if spec.data_files or spec.data_dir:
            return {"files": _digests(_source_files(spec))}
        if spec.local is not None and spec.local.path is not None:
            folder = spec.local.path
            names = dict(spec.local.files) if spec.local.files else _data_dir_files(folder)
            return {"files": _digests({split: str(folder / name) for split, name in names.items()})}
    except (OSError, ConfigError):
        return None
    if spec.generator:
        generator = OmegaConf.to_container(spec.generator, resolve=True)
        code = _generator_code(str(generator.get("_target_", "")))
        return {"generator": generator, "code": code} if code else None
    return None


def _generator_code(target: str) -> dict[str, str] | None:
    """The source of every module in the generator's package folder (a generator may import its neighbours);
    None when it cannot be found (then nothing is cached, and loading reports what is wrong)."""
    module = target
    while module:
        module = module.rpartition(".")[0]
        try:
            found = importlib.util.find_spec(module) if module else None
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and Path(found.origin).is_file():
            folder = Path(found.origin).parent
            return {path.name: cache.file_digest(path) for path in sorted(folder.glob("*.py"))}
    return None


def _loader_key(spec: TaskSpec) -> dict[str, Any]:
    """The spec (splits, columns, labels, prompts: all shape the result) and the code and releases that apply it."""
    described = dataclasses.asdict(dataclasses.replace(spec, generator=None))
    here = Path(__file__).parent
    code = {name: cache.file_digest(here / name) for name in LOADER_MODULES}
    return {"spec": described, "loader": code, "libraries": versions.package_versions("datasets", "pandas", "pyarrow")}


def _source_files(spec: TaskSpec) -> dict[str, str | list[str]]:
    """The task's local files by split, each checked readable (see :func:`check_data_file`)."""
    if spec.data_files is None:
        files = _data_dir_files(project_path(spec.data_dir))
    elif isinstance(spec.data_files, dict):
        files = {split: _absolute(paths) for split, paths in spec.data_files.items()}
    else:
        files = {"train": _absolute(spec.data_files)}
    key = "task.data_files" if spec.data_files is not None else "task.data_dir"
    for paths in files.values():
        for path in [paths] if isinstance(paths, str) else paths:
            check_data_file(Path(path), key)
    return files


# Formats read as text: their bytes must decode as UTF-8 (a byte-order mark is allowed).
TEXT_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".txt")


def check_data_file(path: Path, key: str, fields: int | None = None) -> None:
    """A data file exists, is not empty, and a text one is UTF-8; a TSV's rows have as many fields as its
    header (or ``fields`` names): said in one line naming the file, where ``datasets`` would report "An error
    occurred while generating the dataset" or pandas would take a row's extra field for an index."""
    if path.is_dir():
        raise ConfigError(key, f"{path} is a folder, not a file (a folder of split files is task.data_dir)")
    if not path.is_file():
        raise ConfigError(key, f"{path} not found")
    if path.stat().st_size == 0:
        raise ConfigError(key, f"{path} is empty")
    if path.suffix.lower() in TEXT_SUFFIXES:
        _check_utf8(path, key)
    if path.suffix.lower() == ".tsv":
        _check_tsv_fields(path, key, fields)


def _check_tsv_fields(path: Path, key: str, expected: int | None) -> None:
    """Unquoted TSV (GLUE's): a quote is text, so a row with a tab too many is a broken row, not a quoted field."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            count = line.count("\t") + 1
            if expected is None:
                expected = count
            elif count != expected:
                raise ConfigError(
                    key,
                    f"{path} line {number} has {count} tab-separated fields where the header has {expected} "
                    "(a stray tab or quote?)",
                )


def _check_utf8(path: Path, key: str) -> None:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                where = line + chunk[: error.start].count(b"\n")
                raise ConfigError(
                    key, f"{path} is not UTF-8 text (byte 0x{chunk[error.start]:02x} on line {where}); save it as UTF-8"
                ) from None
            line += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text (it ends inside a character); save it as UTF-8") from None


def _absolute(paths: str | list[str]) -> str | list[str]:
    return str(project_path(paths)) if isinstance(paths, str) else [str(project_path(p)) for p in paths]


def _digests(files: dict[str, str | list[str]]) -> dict[str, list[str]]:
    return {
        split: [cache.file_digest(Path(p)) for p in ([paths] if isinstance(paths, str) else paths)]
        for split, paths in files.items()
    }


def load_raw(task: DictConfig | TaskSpec) -> DatasetDict:
    """The data as its source gives it: every split, the source's own columns."""
    spec = task if isinstance(task, TaskSpec) else TaskSpec.from_config(task)
    if spec.data_files or spec.data_dir:
        return _load_files(spec)
    if spec.local is not None and spec.local.path is not None:
        return _load_local_copy(spec, spec.local)
    if spec.generator:
        return instantiate(spec.generator)
    try:
        return datasets.load_dataset(spec.hub_id, spec.hub_config)
    except Exception as error:  # offline without a cached copy, unknown id, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            "task.hub_id",
            f"cannot load {spec.hub_id!r} (offline? use data_root=... or task.data_dir=... for local files): {first}",
        ) from None


def cap_eval(split: datasets.Dataset, max_samples: int | None) -> datasets.Dataset:
    """The first max_samples examples: the same subset for every method."""
    return split if max_samples is None or len(split) <= max_samples else split.select(range(max_samples))


def _file_format(file_format: str | None, path: str) -> tuple[str, dict[str, Any]]:
    suffix = Path(path).suffix.lower()
    builder = file_format or FILE_FORMATS.get(suffix)
    if builder is None:
        raise ConfigError(
            "task.file_format", f"cannot infer from {path!r}; allowed: {', '.join(sorted(set(FILE_FORMATS.values())))}"
        )
    kwargs = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    return builder, kwargs


def _data_dir_files(data_dir: Path) -> dict[str, str]:
    """Map split names to files in a folder such as GLUE's (train.tsv, dev.tsv)."""
    found = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            matches = sorted(p for p in data_dir.glob(f"{stem}.*") if p.suffix in FILE_FORMATS)
            if matches:
                found[split] = str(matches[0])
                break
    if not found:
        raise ConfigError(
            "task.data_dir",
            f"no train/dev/validation/test file with a known extension ({', '.join(FILE_FORMATS)}) in {data_dir}",
        )
    return found


def _load_files(spec: TaskSpec) -> DatasetDict:
    files = _source_files(spec)  # one path or a list stands for the train split
    first = next(iter(files.values()))
    builder, kwargs = _file_format(spec.file_format, first if isinstance(first, str) else first[0])
    # Only the splits the task reads (GLUE's unlabelled test.tsv beside dev.tsv is not), each file's header checked
    # for the named columns: a file without one is reported as that, not as a failed cast or carve.
    used = {spec.train_split, spec.validation_split, spec.test_split}
    files = {split: paths for split, paths in files.items() if split in used} or files
    _check_file_columns(spec, files, builder)
    # A parse error from pyarrow/pandas is reported as one line: the parser's, not the wrapper's.
    try:
        return datasets.load_dataset(builder, data_files=files, **kwargs)
    except Exception as error:  # noqa: BLE001
        shown = ", ".join(f"{split}: {paths}" for split, paths in files.items())
        raise ConfigError("task.data_files", f"cannot read {shown}: {root_cause_line(error)}") from None


def _read_original_file(path: Path, local: LocalCopy) -> datasets.Dataset:
    """One file as its original distribution writes it: GLUE's TSVs are unquoted (sentences hold ``"``), CoLA's
    have no header, MRPC's start with a byte-order mark; every field is text, none is read as missing."""
    if path.suffix.lower() not in (".tsv", ".txt"):
        builder, _ = _file_format(None, str(path))
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    names = list(local.column_names) if local.column_names else None
    frame = pd.read_csv(
        path,
        sep="\t",
        quoting=3,
        header=0 if names is None else None,
        names=names,
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    return datasets.Dataset.from_pandas(frame.rename(columns=local.columns or {}), preserve_index=False)


def _load_local_copy(spec: TaskSpec, local: LocalCopy) -> DatasetDict:
    """The task's files under ``data_root``, renamed to the Hub's columns, so the rest of the spec applies unchanged."""
    folder = local.path
    if not folder.is_dir():
        raise ConfigError(
            "data_root", f"no folder {folder} for task {spec.name} (its local copy); set data_root=null for the Hub"
        )
    files = dict(local.files) if local.files else _data_dir_files(folder)
    splits = {}
    for split, name in files.items():
        path = folder / name
        check_data_file(path, "data_root", len(local.column_names) if local.column_names else None)
        try:
            splits[split] = _read_original_file(path, local)
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
            raise ConfigError("data_root", f"cannot read {path}: {str(error).splitlines()[0]}") from None
    return DatasetDict(splits)


def _select_splits(spec: TaskSpec, raw: DatasetDict) -> DatasetDict:
    """Pick train/validation/test; carve validation (and test) out of train when the spec names no such split.

    The carve is seeded by ``validation_seed`` (not the run seed) so that every
    method and every seed is scored on the same examples.
    """

    def pick(key: str) -> datasets.Dataset:
        name = getattr(spec, key)
        if name not in raw:
            raise ConfigError(f"task.{key}", f"split {name!r} not in the data; available: {', '.join(raw)}")
        return raw[name]

    def carve(train: datasets.Dataset, split: str, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        size = getattr(spec, f"{split}_size")
        if not isinstance(size, int) or not 0 < size < len(train):
            raise ConfigError(
                f"task.{split}_size",
                f"must be an integer in (0, {len(train)}) when task.{split}_split is null (got {size!r})",
            )
        carved = train.train_test_split(test_size=size, seed=seed, shuffle=True)
        return carved["train"], carved["test"]

    train = pick("train_split")
    seed = spec.validation_seed
    # A dataset with one split (Dolly) gives its test split first, then validation, each with its own fixed carve.
    test = pick("test_split") if spec.test_split else None
    if test is None:
        train, test = carve(train, "test", seed + 1)
    validation = pick("validation_split") if spec.validation_split else None
    if validation is None:
        train, validation = carve(train, "validation", seed)
    return DatasetDict(train=train, validation=validation, test=test)


def _check_file_columns(spec: TaskSpec, files: dict[str, str | list[str]], builder: str) -> None:
    """The named columns are in each local file's header (CSV/TSV first line, JSON Lines first object, Parquet
    schema), read before ``datasets`` loads and casts the files together."""
    named = _named_columns(spec)
    for split, paths in files.items():
        for path in [paths] if isinstance(paths, str) else paths:
            columns = _file_columns(Path(path), builder)
            for key, column in named if columns is not None else ():
                if column not in columns:
                    raise ConfigError(
                        key, f"column {column!r} not in {path} ({split}); available: {', '.join(columns)}"
                    )


def _file_columns(path: Path, builder: str) -> list[str] | None:
    """A file's column names from its first line or schema; None where that cannot tell (a JSON array, a
    compressed file: ``datasets`` reads those, and reports what is missing after loading)."""
    import json

    suffix = path.suffix.lower()
    if builder == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        with path.open(encoding="utf-8-sig") as handle:
            first = handle.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        return None
    if builder == "csv" and suffix in (".tsv", ".csv"):
        import csv

        return next(
            csv.reader(
                [first],
                delimiter="\t" if suffix == ".tsv" else ",",
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            )
        )
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return None
    return list(row) if isinstance(row, dict) else None


def _named_columns(spec: TaskSpec) -> list[tuple[str, str]]:
    """(key, source column) for every column the spec names."""
    if spec.type == "classification":
        return [(f"task.{key}", spec.columns[new]) for new, key in COLUMNS[spec.type].items() if new in spec.columns]
    templated = bool(spec.prompt_template or spec.shared_prompt_marker)  # the prompt is built, not read
    named = [
        (f"task.{key}", getattr(spec, key))
        for new, key in COLUMNS[spec.type].items()
        if getattr(spec, key) and not (new == "prompt" and templated)
    ]
    named += [("task.answer_column", spec.answer_column)] if spec.answer_column else []
    return named + [("task.prompt_template", field) for field in template_fields(spec.prompt_template)]


def _check_columns(spec: TaskSpec, raw: DatasetDict) -> None:
    """Every column the spec names is in every split it reads, before any split is carved: a file without the
    named columns is reported as that, not as a split too small to carve."""
    named = _named_columns(spec)
    wanted = dict.fromkeys(s for s in (spec.train_split, spec.validation_split, spec.test_split) if s in raw)
    for split in wanted:
        for key, column in named:
            if column not in raw[split].column_names:
                raise _missing_column(key, column, raw[split], split)


def _missing_column(key: str, column: str, data: datasets.Dataset, split: str) -> ConfigError:
    return ConfigError(key, f"column {column!r} not in the {split} data; available: {', '.join(data.column_names)}")


def _normalise_classification(spec: TaskSpec, data: datasets.Dataset, split: str) -> datasets.Dataset:
    """Rename to text/text_pair/label and make labels integer ids in label_names order."""
    wanted = spec.columns
    keys = COLUMNS[spec.type]
    for new, old in wanted.items():
        if old not in data.column_names:
            raise _missing_column(f"task.{keys[new]}", old, data, split)
    data = data.select_columns(list(wanted.values()))
    data = data.rename_columns({old: new for new, old in wanted.items() if old != new})
    empty = [i for i, text in enumerate(data["text"]) if text is None or not str(text).strip()]
    if empty:
        raise ConfigError(
            f"task.{keys['text']}",
            f"{len(empty)} rows of the {split} data have an empty text (first: row {empty[0]}); remove or fill them",
        )
    return _encode_labels(data, list(spec.label_names), split)


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


def _normalise_generative(spec: TaskSpec, data: datasets.Dataset, split: str) -> datasets.Dataset:
    """Rename to the type's columns; build the prompt from a template; extract reference answers.

    ``prompt_template`` (``"{instruction}\n\n{input}"``) joins several source
    columns into the prompt, dropping a blank line where a column is empty.
    ``answer_column`` with ``reference_answer_pattern`` (a regex with one
    group, e.g. GSM8K's ``#### (\\S+)``) gives the answer exact match scores against.
    """
    keys = {new: f"task.{key}" for new, key in COLUMNS[spec.type].items()}
    wanted = {new: getattr(spec, key) for new, key in COLUMNS[spec.type].items()}
    if spec.prompt_template or spec.shared_prompt_marker:
        wanted.pop("prompt")
    if spec.answer_column:
        wanted["answer"], keys["answer"] = spec.answer_column, "task.answer_column"
    fields = template_fields(spec.prompt_template)
    for new, old in wanted.items():
        if old not in data.column_names:
            raise _missing_column(keys[new], old, data, split)
    for column in fields:
        if column not in data.column_names:
            raise _missing_column("task.prompt_template", column, data, split)
    template, marker, pattern = spec.prompt_template, spec.shared_prompt_marker, spec.reference_answer_pattern

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = {new: as_text(row[old]) for new, old in wanted.items()}
        if template:
            out["prompt"] = fill(template, row)
        if marker:
            out.update(split_shared_prompt(out["chosen"], out["rejected"], marker))
        if "answer" in out and pattern:
            out["answer"] = extract_answer(str(out["answer"]), pattern)
        return out

    return data.map(convert, remove_columns=data.column_names)
