"""Optuna storages: opening and checking one, heartbeats of running trials, and which trials count.

Kept apart from :mod:`harness.study` so that the command line can check a
storage URL before the heavy imports, and so that everything about several
workers sharing one storage (heartbeats, retries of dead workers' trials) is
in one place. Optuna does the work: ``RDBStorage``'s heartbeat and grace
period, ``fail_stale_trials``, ``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ConfigError, root_cause_line

log = logging.getLogger("harness.study")
# A trial's system attribute saying its heartbeat is being written: the trial's number, set by the sweeper right
# after its first beat (a retry inherits its failed attempt's attributes, whose number is another).
BEATING = "harness:heartbeat"
# A trial's user attribute marking an ask past n_trials (two sweepers asked for the last trial at once): closed unrun.
SURPLUS = "surplus"
# Optuna marks the heartbeat and the retry callback's readers experimental; a warning per trial is noise here.
warnings.filterwarnings("ignore", message=r".*(heartbeat_interval|RetryHeartbeatStaleTrialCallback).*")
JOURNAL_PREFIX = "journal:"
STORAGE_FORMS = "an RDB URL (sqlite:///path.db, postgresql://...) or journal:<path> for a journal file"


def default_storage(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'optuna.db'}"


@dataclass(frozen=True)
class Liveness:
    """How workers sharing a storage notice each other (``hydra.sweeper.heartbeat_interval`` and friends).

    Every running trial's heartbeat is written by its sweeper and by its worker every ``interval`` seconds;
    one silent for ``grace`` seconds is failed by the next sweeper that looks, and re-queued with its own
    parameters (at most ``max_retry`` times): a killed worker costs its trial, not the sweep.
    """

    interval: int = 10
    grace: int = 60
    max_retry: int = 3

    @classmethod
    def checked(cls, interval: Any, grace: Any, max_retry: Any) -> Liveness:
        """From ``hydra.sweeper.*``; a grace period under two intervals would fail trials that are alive."""
        for key, value, least in (
            ("heartbeat_interval", interval, 1),
            ("grace_period", grace, 1),
            ("max_retry", max_retry, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"hydra.sweeper.{key}", f"must be an integer >= {least} (got {value!r})")
        if grace < 2 * interval:
            raise ConfigError(
                "hydra.sweeper.grace_period",
                f"must be at least twice hydra.sweeper.heartbeat_interval={interval} (got {grace})",
            )
        return cls(interval=interval, grace=grace, max_retry=max_retry)

    def retry_callback(self):
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        return RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)


def open_storage(url: str, liveness: Liveness | None = None):
    """Optuna storage for a URL; sqlite waits for locks instead of failing when workers write at once.

    An RDB storage (sqlite, PostgreSQL, MySQL) records heartbeats; a journal file has no heartbeat in
    Optuna, so its running trials cannot be told from dead ones (harness.sweep: one sweeper per journal).
    """
    import optuna

    if not isinstance(url, str) or not url:
        raise ConfigError("hydra.sweeper.storage", f"must be {STORAGE_FORMS} (got {url!r})")
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError("hydra.sweeper.storage", f"must be {STORAGE_FORMS} (got {url!r})")
    engine_kwargs = None
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    liveness = liveness or Liveness()
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=liveness.interval,
                grace_period=liveness.grace,
                heartbeat_stale_trial_callback=liveness.retry_callback(),
            )
        except Exception as error:  # noqa: BLE001 - a driver, connection or schema problem: one line naming the URL
            # Two workers opening a new database at once both create its tables; the second finds them made.
            if "already exists" in str(error) and attempt < 2:
                continue
            raise ConfigError("hydra.sweeper.storage", f"cannot open {_shown(url)}: {root_cause_line(error)}") from None
    raise AssertionError("unreachable")


def check_storage(url: str, timeout_s: float = 3.0) -> None:
    """Before a sweep starts: the URL names a known database whose driver is installed, the server answers,
    and an existing SQLite file is not held locked by another process. Writes nothing."""
    if not isinstance(url, str) or not url:
        raise ConfigError("hydra.sweeper.storage", f"must be {STORAGE_FORMS} (got {url!r})")
    if url.startswith(JOURNAL_PREFIX):
        from harness.preflight import check_writable_folder

        check_writable_folder("hydra.sweeper.storage", Path(url[len(JOURNAL_PREFIX) :]).expanduser().parent)
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except NoSuchModuleError:  # before ArgumentError, its base class
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            "hydra.sweeper.storage",
            f"unknown database scheme {scheme!r}; use sqlite:///<path>, postgresql+psycopg://..., mysql+pymysql://... "
            "or journal:<path>",
        ) from None
    except (ArgumentError, ValueError):
        raise ConfigError("hydra.sweeper.storage", f"{url!r} is not a database URL; must be {STORAGE_FORMS}") from None
    except ImportError as error:
        raise ConfigError(
            "hydra.sweeper.storage",
            f"the driver for {parsed.drivername} is not installed ({error.name}); for PostgreSQL: pip install "
            "'ft-harness[postgres]'",
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(parsed.database, timeout_s)
    else:
        _check_server(url, parsed, timeout_s)


def _check_sqlite(database: str | None, timeout_s: float) -> None:
    import sqlite3

    from harness.preflight import check_writable_folder

    if not database or database == ":memory:":
        raise ConfigError("hydra.sweeper.storage", "an in-memory SQLite database cannot be shared with workers")
    path = Path(database).expanduser()
    if not path.exists():
        check_writable_folder("hydra.sweeper.storage", path.parent)
        return
    try:
        connection = sqlite3.connect(path, timeout=timeout_s)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
        finally:
            connection.close()
    except sqlite3.Error as error:
        reason = "locked by another process" if "locked" in str(error) else str(error)
        raise ConfigError(
            "hydra.sweeper.storage", f"{path}: {reason} (waited {timeout_s:g} s); stop that process or use another file"
        ) from None


def _check_server(url: str, parsed, timeout_s: float) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(parsed, connect_args={"connect_timeout": max(1, int(timeout_s))})
    try:
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001 - refused, unknown host, bad password, no such database
        raise ConfigError(
            "hydra.sweeper.storage", f"cannot connect to {_shown(url)}: {root_cause_line(error)}"
        ) from None
    finally:
        engine.dispose()


def _shown(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("://", 1)[0] + "://..."


@contextmanager
def heartbeats(storage: Any, trial_ids: Iterable[int]) -> Iterator[None]:
    """Record the trials' heartbeats now and at the storage's interval until the block ends.

    The sweeper beats for the trials it launched while they run, the worker for its own trial while it
    trains: a trial stays alive while either lives, and goes stale (then is retried) when both are gone.
    A storage without heartbeats (a journal file) makes this a no-op.
    """
    interval = heartbeat_interval(storage)
    ids = list(trial_ids)
    if not interval or not ids:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as error:  # noqa: BLE001 - a missed beat is retried; the run goes on
                    log.warning("heartbeat of trial id %d not recorded: %s", trial_id, root_cause_line(error))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def heartbeat_interval(storage: Any) -> int | None:
    """Seconds between a trial's heartbeats in this storage; None where it keeps none (a journal file)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def heartbeat_enabled(storage: Any) -> bool:
    return bool(heartbeat_interval(storage))


def retried_number(trial: Any) -> int | None:
    """The number of the trial this one retries (the first attempt's), None for a first attempt."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def logical_number(trial: Any) -> int:
    """The trial number a record carries: the first attempt's, so a retry is the same run (same run_id) and a
    record written just before its worker died is found instead of trained again."""
    number = retried_number(trial)
    return trial.number if number is None else number


def counted_trials(trials: list[Any]) -> list[Any]:
    """The trials that count toward ``n_trials``: each retried trial once (its latest attempt), surplus asks
    (two sweepers asking for the last trial at once) and trials queued by hand but not yet asked left out."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    superseded = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return [
        t
        for t in trials
        if t.number not in superseded
        and not t.user_attrs.get(SURPLUS)
        and not (t.state == TrialState.WAITING and retried_number(t) is None)
    ]
