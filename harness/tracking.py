"""Experiment trackers (conf/tracking/): TensorBoard, MLflow, W&B or Trackio watch a run as it trains.

The trackers' own integrations do the logging: transformers' Trainer has a
callback per tracker (TensorBoardCallback, MLflowCallback, WandbCallback,
TrackioCallback), switched on by ``TrainingArguments.report_to`` and set up
through environment variables, and every objective's Trainer sends its logs
through them (PPO's own loop too: it logs through the Trainer's callback
handler). This module only wires them to a run:

- :func:`tracked_run` (around :func:`harness.run.execute`) sets the variables
  the integration reads (and MLflow's process-wide tracking URI) for that run
  alone and restores them after it, and
  opens the tracker's run before the Trainer exists where the tracker lets a
  run be opened (MLflow, W&B), so the evaluations after training land in it;
- :func:`trainer_arguments` gives the Trainer ``report_to`` and ``run_name``
  (the harness's run_id) while a tracked run is in progress, ``report_to=[]``
  otherwise;
- once the run record is written, its headline (:func:`headline`: final
  metrics by split, parameters, peak memory, steps and tokens spent, run_id,
  status) is logged to the same tracked run with the tracker's client, so the
  tracker shows what the report shows;
- :func:`study_logger` logs each told trial of a study (its sampled values,
  state and value) to the trial's tracked run: optuna-integration's
  MLflowCallback for MLflow, TensorBoard's HParams summaries for TensorBoard.

Which tracker is a config choice (``tracking=mlflow``, the YAML's ``_target_``
one of the classes below, its settings their arguments) and no part of a
run's identity. Nothing here imports a tracker before it is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness.config import ConfigError, root_cause_line

log = logging.getLogger("harness")

# The record's sections whose numbers make its headline, each logged as record/<section>/<key>, beside the
# final metrics (record/<split>/<metric>) and the trained tensors' bytes (record/trained_bytes).
HEADLINE_SECTIONS = ("params", "memory", "compute", "time", "forgetting")
# The record's fields that say which run it is and how it ended (text; MLflow tags, W&B summary).
HEADLINE_FIELDS = ("run_id", "status", "error", "error_kind", "role", "model", "task", "method", "budget", "objective")
PREFIX = "record"
# A run that ended without a record (Ctrl-C, a record that could not be written).
KILLED = "killed"
# A trial's told value, logged as trial/<primary metric> (its validation score, the study's objective).
TRIAL_PREFIX = "trial"
# Logs one told trial of a study: (Optuna study, the trial's id in its storage).
TrialLogger = Callable[[Any, int], None]


@dataclass
class TrackedRun:
    """One harness run as its tracker sees it."""

    run_id: str
    cfg: DictConfig
    handle: Any = None  # the tracker's own run, where the harness opened it (MLflow's run id, W&B's run)
    status: str = KILLED  # the record's status once it is written

    @property
    def study(self) -> str | None:
        """The cell's study name for a study's trials and finals: the study is one experiment in the tracker."""
        if self.cfg.get("role", "run") == "run":
            return None
        return (self.cfg.get("tuning") or {}).get("study")


class Tracker:
    """No tracker (``tracking=none``), and the hooks every tracker has: a subclass names its Trainer
    integration (``report_to``), the packages it needs, and overrides the hooks it uses."""

    report_to: str | None = None  # the integration's name among transformers' report_to values
    requires: tuple[tuple[str, str], ...] = ()  # (module imported, pip package providing it)

    def __init__(self, name: str):
        self.name = name

    def check(self) -> None:
        """Its packages are installed: a missing one is one line before any model loads, not a Trainer error."""
        for module, package in self.requires:
            if module not in sys.modules and importlib.util.find_spec(module) is None:  # imported: installed
                raise ConfigError(
                    "tracking",
                    f"{self.name} needs the Python package {package}, which is not installed; pip install {package}",
                )

    def environment(self, run: TrackedRun) -> dict[str, str]:
        """Variables the Trainer's integration reads, set for the run alone."""
        return {}

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """The tracker library's process-wide settings this tracker's, for a block, and as they were after it."""
        return contextlib.nullcontext()

    def trainer_arguments(self, run: TrackedRun) -> dict[str, Any]:
        return {"report_to": [self.report_to], "run_name": run.run_id}

    def start(self, run: TrackedRun) -> None:
        """Open the tracked run before the Trainer exists, where the tracker allows it."""

    def log_record(self, run: TrackedRun, record: dict[str, Any]) -> None:
        """Log the written record's headline to the tracked run."""

    def close(self, run: TrackedRun) -> None:
        """End the tracked run with the record's status (``run.status``)."""

    @contextlib.contextmanager
    def trial_logger(self, study_name: str, metric: str) -> Iterator[TrialLogger | None]:
        """What logs each told trial of a study; None when the tracker groups a study's runs and nothing more."""
        yield None


def build(cfg: DictConfig) -> Tracker:
    """The tracker ``cfg.tracking`` names (its YAML's ``_target_``), its settings checked by the class."""
    from hydra.utils import instantiate

    node = cfg.get("tracking")
    if node is None:
        return Tracker("none")
    try:
        tracker = instantiate(node)
    except Exception as error:  # noqa: BLE001 - an unknown setting, a bad value, a bad _target_
        raise _config_error(error) or ConfigError("tracking", root_cause_line(error)) from None
    if not isinstance(tracker, Tracker):
        raise ConfigError(
            "tracking._target_", f"must name a harness.tracking.Tracker class (got {node.get('_target_')!r})"
        )
    return tracker


def _config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError a tracker's class raised on a setting, out of Hydra's instantiation error around it."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


def _setting(key: str, value: Any, allowed: tuple[str, ...] = ()) -> Any:
    """A tracker's setting that must be text (one of ``allowed`` when given): else one line naming it."""
    if not isinstance(value, str) or not value or (allowed and value not in allowed):
        wanted = f"one of {', '.join(allowed)}" if allowed else "a non-empty string"
        raise ConfigError(f"tracking.{key}", f"must be {wanted} (got {value!r})")
    return value


def check(cfg: DictConfig) -> None:
    """The tracker's settings and packages (harness.config.validate_values, before anything loads)."""
    build(cfg).check()


_ACTIVE: contextvars.ContextVar[tuple[Tracker, TrackedRun] | None] = contextvars.ContextVar(
    "harness_tracked_run", default=None
)


class Tracking:
    """The tracked run in progress, as :func:`tracked_run` hands it to the run stage."""

    def __init__(self, tracker: Tracker | None, run: TrackedRun | None):
        self.tracker, self.run = tracker, run

    def log_record(self, record: dict[str, Any]) -> None:
        """Log the written record's headline; a tracker that fails here is warned about, never fails the run
        (its record is written already)."""
        if self.tracker is None:
            return
        self.run.status = record.get("status") or KILLED
        try:
            self.tracker.log_record(self.run, record)
        except Exception as error:  # noqa: BLE001
            log.warning("tracking: %s could not log the record of %s: %s", self.tracker.name, self.run.run_id, error)


@contextlib.contextmanager
def tracked_run(cfg: DictConfig, run_id: str) -> Iterator[Tracking]:
    """The run ``run_id`` tracked by the tracker ``cfg.tracking`` names: its variables set, its run open.

    On several processes rank 0 alone tracks (the integrations log from the
    world's process zero only, and only rank 0 writes the record).
    """
    from harness import distributed

    tracker = build(cfg)
    if tracker.report_to is None or not distributed.is_main_process():
        yield Tracking(None, None)
        return
    tracker.check()
    run = TrackedRun(run_id, cfg)
    with _environment(tracker.environment(run)), tracker.scope():
        try:
            tracker.start(run)
        except Exception as error:  # noqa: BLE001 - an unreachable server, a folder that cannot be made
            raise ConfigError("tracking", f"{tracker.name} could not start a run: {root_cause_line(error)}") from None
        token = _ACTIVE.set((tracker, run))
        try:
            yield Tracking(tracker, run)
        finally:
            _ACTIVE.reset(token)
            try:
                tracker.close(run)
            except Exception as error:  # noqa: BLE001 - the run's outcome stands
                log.warning("tracking: %s could not close the run of %s: %s", tracker.name, run_id, error)


@contextlib.contextmanager
def study_logger(cfg: DictConfig, study_name: str) -> Iterator[TrialLogger]:
    """What logs each told trial of the study ``study_name`` (a cell of a sweep, ``cfg`` its config) to the
    tracker ``cfg.tracking`` names, its value as ``trial/<primary metric>``. A tracker that fails here is warned
    about and the sweep goes on."""
    from harness.config import primary_metric

    tracker = build(cfg)
    if tracker.report_to is None:
        yield lambda study, trial_id: None
        return
    with contextlib.ExitStack() as stack:
        try:
            log_trial = stack.enter_context(tracker.trial_logger(study_name, primary_metric(cfg)["name"]))
        except Exception as error:  # noqa: BLE001 - an unreachable server: one warning, not one per trial
            log.warning("tracking: %s cannot log the trials of %s: %s", tracker.name, study_name, error)
            log_trial = None

        def logged(study: Any, trial_id: int) -> None:
            if log_trial is None:
                return
            try:
                log_trial(study, trial_id)
            except Exception as error:  # noqa: BLE001 - the trial is told; its tracking is not worth the sweep
                log.warning("tracking: %s could not log trial %d of %s: %s", tracker.name, trial_id, study_name, error)

        yield logged


def trainer_arguments() -> dict[str, Any]:
    """The TrainingArguments that send a Trainer's logs to the tracked run in progress (``report_to`` its
    integration, ``run_name`` the run_id); ``report_to=[]`` outside one, so no integration starts unasked."""
    active = _ACTIVE.get()
    if active is None:
        return {"report_to": []}
    tracker, run = active
    return tracker.trainer_arguments(run)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block, then each variable as it was."""
    with restored_environment(values):
        os.environ.update(values)
        yield


@contextlib.contextmanager
def restored_environment(names: Iterable[str]) -> Iterator[None]:
    """Each variable of ``names`` as it was before the block (unset where it was unset), whatever the block or
    a library it called set: trackers read their settings from the environment, and some write them there."""
    before = {key: os.environ.get(key) for key in names}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- what is logged ------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def headline(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The record's numbers a tracker shows (keyed ``<split>/<metric>`` and ``<section>/<key>`` as the record
    names them, so each means what the record's field means) and its identifying fields as text."""
    numbers = {
        f"{split}/{name}": float(value)
        for split, scores in (record.get("metrics") or {}).items()
        for name, value in (scores or {}).items()
        if _is_number(value)
    }
    for section in HEADLINE_SECTIONS:
        numbers.update({f"{section}/{k}": float(v) for k, v in (record.get(section) or {}).items() if _is_number(v)})
    retained = (record.get("retention") or {}).get("metrics") or {}  # a second task's test scores (encoders)
    numbers.update({f"retention/{k}": float(v) for k, v in retained.items() if _is_number(v)})
    if _is_number(record.get("trained_bytes")):
        numbers["trained_bytes"] = float(record["trained_bytes"])
    texts = {key: str(record[key]) for key in HEADLINE_FIELDS if record.get(key) is not None}
    if record.get("seed") is not None:
        texts["seed"] = str(record["seed"])
    tuning = record.get("tuning") or {}
    texts.update({f"tuning.{k}": str(tuning[k]) for k in ("study", "trial") if tuning.get(k) is not None})
    return numbers, texts


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and text values (lists as JSON), for a tracker's table of parameters."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{dotted}."))
        else:
            flat[dotted] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def _steps(record: dict[str, Any]) -> int:
    """The step the headline is logged at: the last step trained."""
    steps = (record.get("compute") or {}).get("steps")
    return int(steps) if _is_number(steps) else 0


def _run_tags(run: TrackedRun) -> dict[str, str]:
    """What the run is, known before it trains: its axes, role and study."""
    cfg = run.cfg
    tags = {"run_id": run.run_id, "role": str(cfg.get("role", "run")), "seed": str(cfg.get("seed"))}
    for group in ("model", "task", "method", "budget", "objective"):
        name = (cfg.get(group) or {}).get("name")
        if name is not None:
            tags[group] = str(name)
    if run.study is not None:
        tags["tuning.study"] = run.study
        tags["tuning.trial"] = str(cfg.tuning.get("trial"))
    return tags


def _succeeded(status: str) -> bool:
    return status in ("success", "pruned")


# --- the trackers -------------------------------------------------------------------------------------------


class TensorBoard(Tracker):
    """transformers' TensorBoardCallback writes the Trainer's logs to ``<logdir>/<run_id>`` (a study's runs:
    ``<logdir>/<study>/<run_id>``); the headline is added there as scalars and text with torch's SummaryWriter."""

    report_to = "tensorboard"
    requires = (("tensorboard", "tensorboard"),)

    def __init__(self, name: str, logdir: str):
        super().__init__(name)
        self.logdir = Path(_setting("logdir", logdir))

    def run_dir(self, run_id: str, study: str | None) -> Path:
        from harness.study import file_stem

        folder = self.logdir / file_stem(study) if study else self.logdir
        return folder / run_id

    def environment(self, run: TrackedRun) -> dict[str, str]:
        return {"TENSORBOARD_LOGGING_DIR": str(self.run_dir(run.run_id, run.study))}

    def log_record(self, run: TrackedRun, record: dict[str, Any]) -> None:
        from omegaconf import OmegaConf
        from torch.utils.tensorboard import SummaryWriter

        numbers, texts = headline(record)
        step = _steps(record)
        config = OmegaConf.to_yaml(record.get("config") or {})
        with SummaryWriter(log_dir=str(self.run_dir(run.run_id, run.study))) as writer:
            for key, value in numbers.items():
                writer.add_scalar(f"{PREFIX}/{key}", value, step)
            for key, value in texts.items():
                writer.add_text(f"{PREFIX}/{key}", value, step)
            # TensorBoard renders text as Markdown: indented lines are shown as they are
            writer.add_text(f"{PREFIX}/config", "".join(f"    {line}\n" for line in config.splitlines()), step)

    @contextlib.contextmanager
    def trial_logger(self, study_name: str, metric: str) -> Iterator[TrialLogger]:
        """Each told trial's sampled values and state as an HParams session in the trial's own run folder
        (optuna-integration's TensorBoardCallback needs TensorFlow), its value as ``trial/<metric>``."""

        def log_trial(study: Any, trial_id: int) -> None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            trial = study._storage.get_trial(trial_id)
            run_id = trial.user_attrs.get("run_id") or f"trial-{trial.number}"
            values = {f"{TRIAL_PREFIX}/{metric}": trial.value} if trial.values else {}
            sampled = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in trial.params.items()}
            with SummaryWriter(log_dir=str(self.run_dir(run_id, study_name))) as writer:
                for summary in hparams({**sampled, "state": trial.state.name}, values):
                    writer.file_writer.add_summary(summary)
                for key, value in values.items():
                    writer.add_scalar(key, value, 0)

        yield log_trial


class MLflow(Tracker):
    """transformers' MLflowCallback logs to an MLflow run the harness opens (named by the run_id, tagged with
    what the run is) in the experiment ``experiment``, or the study's; the headline is added with MlflowClient."""

    report_to = "mlflow"
    requires = (("mlflow", "mlflow-skinny"), ("optuna_integration", "optuna-integration"))
    STATUS = {"success": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", KILLED: "KILLED"}

    def __init__(self, name: str, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        super().__init__(name)
        self.tracking_uri, self.experiment = _setting("tracking_uri", tracking_uri), _setting("experiment", experiment)
        self.artifact_location = artifact_location and _setting("artifact_location", artifact_location)

    def experiment_name(self, study: str | None) -> str:
        return study or self.experiment

    def environment(self, run: TrackedRun) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_EXPERIMENT_NAME": self.experiment_name(run.study)}

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """mlflow's global tracking URI this tracker's for the block (the fluent API transformers' callback logs
        with reads it, before the variable), no experiment active, and both as they were after it."""
        from harness.compat import mlflow_scope

        return mlflow_scope(self.tracking_uri)

    def client(self):
        """A client of the tracking URI; a SQLite database's folder made first (SQLite makes no folders)."""
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(self.tracking_uri)

    def experiment_id(self, client: Any, name: str) -> str:
        """The experiment named ``name``, created with ``artifact_location`` when there is none yet."""
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = Path(self.artifact_location).absolute().as_uri() if self.artifact_location else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run: TrackedRun) -> None:
        """The run is created here with this tracker's client and made the active run while the Trainer trains
        (in :meth:`scope`): MLflowCallback then logs into it and leaves it open, so the evaluations after
        training land in it too (a run the callback opened itself would be ended at the end of training, and
        the final evaluations would start a stray one)."""
        import mlflow
        from mlflow.tracking.context.registry import resolve_tags  # the source, user, git tags start_run adds

        client = self.client()
        experiment = self.experiment_id(client, self.experiment_name(run.study))
        tags = resolve_tags({f"harness.{key}": value for key, value in _run_tags(run).items()})
        run.handle = client.create_run(experiment, tags=tags, run_name=run.run_id).info.run_id
        mlflow.start_run(run_id=run.handle)

    def log_record(self, run: TrackedRun, record: dict[str, Any]) -> None:
        """The headline as ``record/*`` metrics at the last step, the config as ``config.*`` params, the
        identifying fields as ``harness.*`` tags."""
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils import validation

        mlflow.flush_async_logging()  # the callback logs asynchronously
        numbers, texts = headline(record)
        now, step = int(time.time() * 1000), _steps(record)
        params = [
            Param(_mlflow_key(f"config.{k}"), v[: validation.MAX_PARAM_VAL_LENGTH])
            for k, v in flat_config(record.get("config") or {}).items()
        ]
        client, batch = self.client(), validation.MAX_PARAMS_TAGS_PER_BATCH
        for start in range(0, len(params), batch):
            client.log_batch(run.handle, params=params[start : start + batch])
        client.log_batch(
            run.handle,
            metrics=[Metric(_mlflow_key(f"{PREFIX}/{k}"), v, now, step) for k, v in numbers.items()],
            tags=[RunTag(f"harness.{k}", v[: validation.MAX_TAG_VAL_LENGTH]) for k, v in texts.items()],
        )

    def close(self, run: TrackedRun) -> None:
        import mlflow

        status = self.STATUS.get(run.status, "FINISHED")
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run.handle:
            mlflow.end_run(status)
        else:
            self.client().set_terminated(run.handle, status)

    @contextlib.contextmanager
    def trial_logger(self, study_name: str, metric: str) -> Iterator[TrialLogger]:
        """optuna-integration's MLflowCallback logs each told trial's sampled values, value and state into the
        trial's own run: the run tagged with the run_id of the trial's record, handed to the callback in the
        trial's ``mlflow_run_id`` attribute, the run the callback resumes (a trial without a tracked run gets
        a run of its own)."""

        def log_trial(study: Any, trial_id: int) -> None:
            from optuna_integration import MLflowCallback
            from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY

            trial = copy.deepcopy(study._storage.get_trial(trial_id))
            run_id = trial.user_attrs.get("run_id")
            tracked = self.tracked_run_of(study_name, run_id) if run_id else None
            if tracked is not None:  # finished trials are read-only in the storage: set on this copy
                trial.system_attrs = {**trial.system_attrs, RUN_ID_ATTRIBUTE_KEY: tracked.info.run_id}
            with warnings.catch_warnings():  # deprecated in optuna-integration 4.9, to go in 6.0 (pinned below 6)
                warnings.simplefilter("ignore", FutureWarning)
                callback = MLflowCallback(
                    tracking_uri=self.tracking_uri,
                    metric_name=f"{TRIAL_PREFIX}/{metric}",
                    mlflow_kwargs={"run_name": run_id or f"trial {trial.number}"},
                )
            with self.scope():  # the callback sets mlflow's tracking URI and experiment for the whole process
                callback(study, trial)
            if tracked is not None and tracked.info.status != "RUNNING":  # resuming ended it FINISHED: as it ended
                self.client().set_terminated(tracked.info.run_id, tracked.info.status)

        self.experiment_id(self.client(), study_name)  # with the artifact location, before the callback makes it
        yield log_trial

    def tracked_run_of(self, experiment: str, run_id: str) -> Any:
        """The latest MLflow run of the harness run ``run_id`` in ``experiment`` (None when there is none)."""
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`harness.run_id` = '{run_id}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None


def _mlflow_key(key: str) -> str:
    """A metric or param name MLflow accepts (as MLflowCallback sanitises the Trainer's)."""
    return re.sub(r"[^0-9A-Za-z_\-. /:]", "_", key)


WANDB_MODES = ("offline", "online", "disabled")


class WandB(Tracker):
    """transformers' WandbCallback logs to a W&B run the harness starts (named by the run_id, grouped by
    study); the headline goes to the run's summary, the config under ``harness`` in its config."""

    report_to = "wandb"
    requires = (("wandb", "wandb"),)

    def __init__(
        self, name: str, project: str, mode: str = "offline", dir: str | None = None, entity: str | None = None
    ):
        super().__init__(name)
        self.project, self.mode = _setting("project", project), _setting("mode", mode, WANDB_MODES)
        self.dir, self.entity = dir and _setting("dir", dir), entity and _setting("entity", entity)

    def environment(self, run: TrackedRun) -> dict[str, str]:
        env = {"WANDB_MODE": self.mode, "WANDB_PROJECT": self.project, "WANDB_SILENT": "true"}
        if self.dir:
            env["WANDB_DIR"] = str(Path(self.dir).absolute())
        if self.entity:
            env["WANDB_ENTITY"] = self.entity
        if run.study:
            env["WANDB_RUN_GROUP"] = run.study
        return env

    def start(self, run: TrackedRun) -> None:
        """Started here, the run is the one WandbCallback finds active and logs into, final evaluations too."""
        import wandb

        if self.dir:
            Path(self.dir).mkdir(parents=True, exist_ok=True)
        tags = _run_tags(run)
        run.handle = wandb.init(
            project=self.project,
            entity=self.entity,
            name=run.run_id,
            group=run.study,
            job_type=tags["role"],
            mode=self.mode,
            dir=str(Path(self.dir).absolute()) if self.dir else None,
            config={"harness": {"run": tags}},
        )

    def log_record(self, run: TrackedRun, record: dict[str, Any]) -> None:
        numbers, texts = headline(record)
        run.handle.config.update({"harness": {"config": record.get("config") or {}}}, allow_val_change=True)
        run.handle.summary.update({f"{PREFIX}/{k}": v for k, v in {**numbers, **texts}.items()})

    def close(self, run: TrackedRun) -> None:
        run.handle.finish(exit_code=0 if _succeeded(run.status) else 1)


class Trackio(Tracker):
    """transformers' TrackioCallback logs to a local Trackio run named by the run_id, in the project
    ``project`` or the study's; the headline is logged to the same run afterwards (resumed by name)."""

    report_to = "trackio"
    requires = (("trackio", "trackio"),)

    def __init__(self, name: str, project: str, dir: str):
        super().__init__(name)
        self.project, self.dir = _setting("project", project), _setting("dir", dir)

    def project_of(self, run: TrackedRun) -> str:
        return run.study or self.project

    def environment(self, run: TrackedRun) -> dict[str, str]:
        return {"TRACKIO_DIR": str(Path(self.dir).absolute())}

    def trainer_arguments(self, run: TrackedRun) -> dict[str, Any]:
        # local only: no Space, and no static Space synced after training
        return {**super().trainer_arguments(run), "project": self.project_of(run), "trackio_static_space_id": False}

    def log_record(self, run: TrackedRun, record: dict[str, Any]) -> None:
        import trackio

        numbers, texts = headline(record)
        trackio.init(project=self.project_of(run), name=run.run_id, resume="allow")
        try:
            trackio.config.update({"harness": {"config": record.get("config") or {}, **texts}})
            trackio.log({f"{PREFIX}/{k}": v for k, v in numbers.items()}, step=_steps(record))
        finally:
            trackio.finish()
