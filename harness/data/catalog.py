"""The tasks in ``tasks/``, registered as Hydra's ``task`` config group.

A task lives in the top-level ``tasks/`` folder: ``<name>.yaml`` (its spec),
``<name>.md`` (its card) and, when embedded, its generator in
``tasks/generators/``. Hydra finds a config group as a folder named after the
group under a search-path root, which ``tasks/`` is not; so each
``tasks/*.yaml`` (bases ``_*.yaml`` included) is stored in Hydra's ConfigStore
under group ``task``, as the study sweeper stores its own config. The
ConfigStore is a root of every search path (``structured://``), so
``task=sst2`` on the command line, a task's ``defaults: [_glue, _self_]``,
``compose()`` in tests and the sweeper's cells resolve as they would for
files, and Hydra lists these tasks among the group's options. A
``task/<name>.yaml`` under another search-path root
(``hydra.searchpath=[file:///my/configs]``) composes too, and may inherit the
bases here, as long as its name is not one of these tasks' (Hydra would merge
the two, and refuses a merged option with two defaults lists).

A task YAML names its metrics (``metrics: [f1, accuracy]``); storing it puts
each metric's direction beside its name, from the metric's module
(``harness.metrics``) unless the YAML states one, so the composed config reads
``{name, higher_is_better}`` as every consumer and every recorded run_id
expects.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import tasks as task_package
from harness.data.spec import metric_entries

TASKS_DIR = Path(task_package.__file__).resolve().parent
GROUP = "task"


def task_names(folder: Path = TASKS_DIR) -> list[str]:
    """The tasks a run can name (bases, whose names start with ``_``, left out)."""
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def card(name: str, folder: Path = TASKS_DIR) -> Path:
    """The task's card: what it measures, its splits, sizes, metric, license and source."""
    return folder / f"{name}.md"


def read_task_yaml(path: Path) -> DictConfig:
    """A task YAML as its group stores it: metrics named in it gain their modules' directions."""
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise ValueError(f"{path}: a task spec is a mapping")
    if node.get("metrics") is not None:
        node.metrics = metric_entries(node.metrics)
    return node


def register_tasks(folder: Path = TASKS_DIR) -> None:
    """Store every ``<folder>/*.yaml`` as option ``<name>`` of Hydra's ``task`` group."""
    store = ConfigStore.instance()
    for path in sorted(folder.glob("*.yaml")):
        store.store(group=GROUP, name=path.stem, node=read_task_yaml(path), provider="tasks")
