"""The task spec: every key a task YAML (``tasks/<name>.yaml``) may set, its default, and its checks.

A task YAML states what differs from these defaults (usually through a base:
``_glue``, ``_instruction_hub``, ``_preference_hub``, ``_local_classification``,
``_local_instruction``, ``_local_preference``); :meth:`TaskSpec.from_config`
reads the composed ``task`` node into this dataclass, refusing keys it does
not define, and :meth:`TaskSpec.check` runs the checks that need no data.
The data stage (``harness.data.load``) reads the spec, never the raw node.

Paths (``data_files``, ``data_dir``, ``local.root``) are the project's when
relative (``harness.paths.project_path``: the source checkout's, or for an
installed package the folder the run was started in), never a job's working
directory, which differs between a shell, a Hydra job and a SLURM worker.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.config import ConfigError
from harness.metrics import PREFERENCE_METRICS, TRAINER_METRICS, available_metrics, metric_entry
from harness.paths import project_path

TASK_TYPES = ("classification", "instruction", "preference")
# The columns the data stage gives each task type, and the spec key naming each one's source column.
COLUMNS = {
    "classification": {"text": "text_column", "text_pair": "text_pair_column", "label": "label_column"},
    "instruction": {"prompt": "prompt_column", "completion": "completion_column"},
    "preference": {"prompt": "prompt_column", "chosen": "chosen_column", "rejected": "rejected_column"},
}
OPTIONAL_COLUMNS = ("text_pair",)
SOURCES = ("generator", "hub_id", "data_files", "data_dir")
# Tokens a generation may add when the task sets no ``max_new_tokens``: greedy evaluation and RL rollouts alike.
DEFAULT_MAX_NEW_TOKENS = 32


def allowed_metrics(task_type: str) -> list[str]:
    """The metrics a task of this type can be scored by: classification from predicted labels, generative
    tasks from generations, preference pairs or the trainer's held-out loss."""
    trainer = list(TRAINER_METRICS)
    if task_type == "classification":
        return [*(m for m in available_metrics() if m not in (*PREFERENCE_METRICS, "exact_match")), *trainer]
    generative = ["exact_match", *trainer]
    return [*generative, *PREFERENCE_METRICS] if task_type == "preference" else generative


@dataclass(frozen=True)
class Metric:
    """A metric the task is scored by; its direction comes from its module (``harness.metrics``) unless stated."""

    name: str
    higher_is_better: bool | None = None


@dataclass(frozen=True)
class LocalCopy:
    """Where a Hub task's local copy lies under ``data_root`` and how its files are written."""

    root: str | None = None  # ${data_root}: null reads the Hub
    folder: str | None = None  # this task's folder under root
    files: dict[str, str] | None = None  # split -> file name; null: found by name (train.*, dev.*, ...)
    column_names: list[str] | None = None  # names for a TSV without a header row (CoLA)
    columns: dict[str, str] | None = None  # the distribution's column names -> the Hub's

    @property
    def path(self) -> Path | None:
        return project_path(self.root) / self.folder if self.root and self.folder else None


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its data comes from, which splits serve as what, which columns mean what, how it is scored."""

    name: str
    type: str  # classification | instruction | preference
    # The data source, exactly one of: an embedded generator (a _target_ returning a DatasetDict), local files
    # (one path, a list, or {split: path}; or a folder with train.* and dev.*/validation.*/test.*), a Hub dataset.
    generator: Any = None
    data_files: Any = None
    data_dir: str | None = None
    file_format: str | None = None  # csv | json | parquet; inferred from the extension when null
    hub_id: str | None = None
    hub_config: str | None = None
    local: LocalCopy | None = None  # a Hub task's copy under data_root, read instead of the Hub when that is set
    # Splits: a null validation or test split is a fixed carve of train (seeded by validation_seed, not the run seed).
    train_split: str = "train"
    validation_split: str | None = None
    validation_size: int | None = None
    validation_seed: int = 0
    test_split: str | None = None
    test_size: int | None = None
    # Classification: source columns and the class names in label order.
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: list[str] | None = None
    # Generative: source columns (the prompt may be a template of several), the reference answer and how
    # answers are found in references and generations.
    prompt_column: str | None = None
    prompt_template: str | None = (
        None  # e.g. "{instruction}\n\n{input}"; a paragraph whose fields are empty is left out
    )
    completion_column: str | None = None
    chosen_column: str | None = None
    rejected_column: str | None = None
    shared_prompt_marker: str | None = None  # dialogues stored whole: the prompt ends at the last marker both share
    answer_column: str | None = None  # the reference exact match compares with
    reference_answer_pattern: str | None = None  # regex whose last match (group 1) is the reference answer
    answer_pattern: str | None = None  # regex whose last match is the answer in a generation (null: its first line)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    # Strings that end a greedy evaluation generation besides EOS; the text from the first one on is dropped.
    stop_strings: list[str] | None = None
    max_seq_length: int | None = None  # tokens per example; replaces the budget's when set
    # Scoring: metrics by name (a direction stated here overrides the module's); the primary one is tuned and
    # reported first (null: the first listed).
    metrics: tuple[Metric, ...] = ()
    primary_metric: str | None = None

    @classmethod
    def from_config(cls, task: DictConfig | dict[str, Any]) -> TaskSpec:
        """The spec of a composed ``task`` node (interpolations resolved); a key the spec does not define is an error."""
        plain = OmegaConf.to_container(task, resolve=True) if isinstance(task, DictConfig) else dict(task)
        _refuse_unknown("task", plain, cls)
        for required in ("name", "type"):
            if plain.get(required) is None:
                raise ConfigError(f"task.{required}", "must be set")
        if plain.get("generator") is not None and isinstance(task, DictConfig):
            plain["generator"] = task.generator  # instantiated as written
        local = plain.get("local")
        if local is not None:
            _refuse_unknown("task.local", local, LocalCopy)
            plain["local"] = LocalCopy(**local)
        plain["metrics"] = tuple(Metric(**metric_entry(m)) for m in plain.get("metrics") or ())
        return cls(**plain)

    @property
    def columns(self) -> dict[str, str]:
        """The data stage's column -> the source column, for the columns this task names."""
        return {new: getattr(self, key) for new, key in COLUMNS[self.type].items() if getattr(self, key)}

    @property
    def primary(self) -> Metric:
        name = self.primary_metric or self.metrics[0].name
        return next(m for m in self.metrics if m.name == name)

    def check(self) -> None:
        """Shape, metric names and directions, columns, patterns, and that any local data file can be read."""
        if self.type not in TASK_TYPES:
            raise ConfigError("task.type", f"got {self.type!r}; allowed: {', '.join(TASK_TYPES)}")
        if not any(getattr(self, key) for key in SOURCES):
            raise ConfigError("task", "has no data source; set one of " + ", ".join(f"task.{k}" for k in SOURCES))
        self._check_metrics()
        for new, key in COLUMNS[self.type].items():
            if new in OPTIONAL_COLUMNS or (new == "prompt" and (self.prompt_template or self.shared_prompt_marker)):
                continue
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"task.{key}", f"must name a column of the data for a {self.type} task")
        if self.type == "classification" and not self.label_names:
            raise ConfigError("task.label_names", "must list the class names in label order")
        for key in ("max_seq_length", "max_new_tokens", "validation_size", "test_size"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"task.{key}", f"must be a positive integer or null (got {value!r})")
        self._check_stop_strings()
        if "exact_match" in [m.name for m in self.metrics] and not self.answer_column:
            raise ConfigError(
                "task.answer_column", "must name the reference-answer column when exact_match is a metric"
            )
        for key in ("answer_pattern", "reference_answer_pattern"):
            if getattr(self, key):
                try:
                    re.compile(getattr(self, key))
                except re.error as error:
                    raise ConfigError(f"task.{key}", f"is not a valid regular expression: {error}") from None
        self._check_files()

    def _check_metrics(self) -> None:
        names = [m.name for m in self.metrics]
        if not names:
            raise ConfigError("task.metrics", "must name at least one metric")
        allowed = allowed_metrics(self.type)
        for i, metric in enumerate(self.metrics):
            if metric.name not in allowed:
                raise ConfigError(f"task.metrics[{i}].name", f"got {metric.name!r}; allowed: {', '.join(allowed)}")
            if metric.higher_is_better is None:
                raise ConfigError(
                    f"task.metrics[{i}].higher_is_better", f"{metric.name} declares no direction; state it"
                )
        if self.primary_metric is not None and self.primary_metric not in names:
            raise ConfigError("task.primary_metric", f"got {self.primary_metric!r}; allowed: {', '.join(names)}")

    def _check_stop_strings(self) -> None:
        """A bare string would be read letter by letter, and an empty one would stop every generation at once."""
        value = self.stop_strings
        if value is not None and not (
            isinstance(value, list) and value and all(isinstance(s, str) and s for s in value)
        ):
            raise ConfigError(
                "task.stop_strings", f"must be a non-empty list of non-empty strings or null (got {value!r})"
            )

    def _check_files(self) -> None:
        if self.data_files is not None:
            items = self.data_files.items() if isinstance(self.data_files, dict) else [(None, self.data_files)]
            for split, paths in items:
                for one in [paths] if isinstance(paths, str) else paths:
                    _check_readable("task.data_files" + (f".{split}" if split else ""), one)
        if self.data_dir is not None and not project_path(self.data_dir).is_dir():
            raise ConfigError("task.data_dir", f"not a folder: {self.data_dir}")


def _refuse_unknown(prefix: str, values: dict[str, Any], schema: type) -> None:
    known = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", f"is not a task key; allowed: {', '.join(known)}")


def _check_readable(key: str, path: str) -> None:
    p = project_path(path)
    if not p.exists():
        raise ConfigError(key, f"file not found: {path}")
    if not os.access(p, os.R_OK):
        raise ConfigError(key, f"file is not readable: {path}")


def metric_entries(metrics: ListConfig | list[Any] | None) -> list[dict[str, Any]]:
    """A task's metrics as ``{name, higher_is_better}`` mappings, the direction from each module unless stated."""
    return [metric_entry(m) for m in metrics or ()]
