"""The command line's checks before Hydra starts: every job composed and checked, nothing written.

Hydra makes a job's output folder (``results_dir/hydra/...``) before the task
function runs, and reports its own composition errors in several lines with
exit status 1. A bad input should instead cost one ``error:`` line naming the
key or file, exit status 2, and leave the results folder as it was. So
``harness-run`` composes, here, each job its command line asks for (every
combination of swept values; a study's grid too) with Hydra's compose API, and
checks each with what imports nothing heavy: the config values
(:func:`harness.config.validate_values`), the results folder, the memory cap,
the model folder, the task's data (loaded and checked by ``datasets``, no
torch), and for a study its settings, search space and storage. Only then does
Hydra run. What needs PEFT or the Trainer's option lists is checked in the
job, as before, still before any weights load.

``tests/bad_inputs.yaml`` lists the inputs this answers, with the line each gets;
``tests/test_bad_inputs.py`` runs that table.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.config import ConfigError, did_you_mean, resolve_run_config, validate_values

# Flags after which Hydra prints or composes something else than a run; those are left to Hydra.
HYDRA_OWN_FLAGS = (
    "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-p", "--package", "--resolve",
    "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
    "--experimental-rerun",
)  # fmt: skip
MULTIRUN_FLAGS = ("-m", "--multirun")
# More combinations than this are checked on the first ones only: composing costs about 20 ms each.
MAX_CHECKED_JOBS = 256
STUDY_SWEEPER = "StudySweeper"


def check_command_line(arguments: list[str], config_dir: str) -> list[str]:
    """Raise ConfigError on the first bad input among the jobs ``arguments`` ask for; when all pass, return the
    results folders they write to."""
    if any(a.split("=", 1)[0] in HYDRA_OWN_FLAGS for a in arguments):
        return []
    multirun = any(a in MULTIRUN_FLAGS for a in arguments)
    overrides = [a for a in arguments if not a.startswith("-")]
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir, version_base=None):
            return _check_jobs(overrides, multirun)
    finally:
        GlobalHydra.instance().clear()


def _check_jobs(overrides: list[str], multirun: bool) -> list[str]:
    parsed = _parse(overrides)
    for override in parsed:
        if override.is_sweep_override() and not multirun:
            raise ConfigError(
                override.get_key_element(), f"{override.input_line!r} sweeps several values; add -m to run each"
            )
    first = _compose(_first_values(parsed), overrides)  # the settings every job shares
    study = STUDY_SWEEPER in str(OmegaConf.select(first, "hydra.sweeper._target_") or "")
    grid = OmegaConf.select(first, "hydra.sweeper.grid") if study else None
    if grid is not None and not isinstance(grid, DictConfig):
        raise ConfigError("hydra.sweeper.grid", f"must map keys to values, e.g. {{method: 'lora,ia3'}} (got {grid!r})")
    first_job = _first_values(parsed)
    checked: dict[str, set[str]] = {"results_dir": set(), "data": set()}
    for combination in itertools.islice(itertools.product(*_axes(parsed, grid)), MAX_CHECKED_JOBS):
        job = list(combination)
        cfg = first if job == first_job else _compose(job, overrides)
        check_job(cfg, checked)
        if study:
            _check_search(cfg)
    if study:
        _check_study(first, parsed)
    return sorted(checked["results_dir"])


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise ConfigError("override", f"cannot parse the command line: {_first_line(error)}") from None


def _first_values(parsed: list[Any]) -> list[str]:
    """The overrides with each sweep replaced by its first value: one job to read the settings from."""
    return [_values(o)[0] for o in parsed]


def _values(override: Any) -> list[str]:
    """``key=value`` for each value an override takes (one unless it sweeps)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    except Exception:  # noqa: BLE001 - interval and glob sweeps: Hydra expands those itself
        return [override.input_line]


def _axes(parsed: list[Any], grid: Any) -> list[list[str]]:
    """One list of ``key=value`` per key: the command line's, and a study's grid for keys it does not set."""
    axes = {o.get_key_element().lstrip("+~"): _values(o) for o in parsed}
    for key, value in (OmegaConf.to_container(grid) if grid is not None else {}).items():
        if key not in axes:
            axes[key] = _values(_parse([f"{key}={value}"])[0])
    return list(axes.values())


def _group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader().get_group_options(group)


def _compose(job: list[str], overrides: list[str]) -> DictConfig:
    """One job's config with its hydra node; Hydra's composition errors as one line naming the key."""
    from hydra import compose

    try:
        return compose("config", overrides=job, return_hydra_config=True)
    except Exception as error:  # noqa: BLE001 - every composition error becomes one line
        raise _composition_error(error, job) from None


def _composition_error(error: Exception, job: list[str]) -> ConfigError:
    cause = error.__cause__
    message = str(error)
    full_key = getattr(cause, "full_key", None)
    if "not in struct" in str(cause) and full_key:
        return ConfigError(full_key, f"unknown key{_key_suggestion(full_key, job)}; to add a new key use +{full_key}=")
    if isinstance(cause, OmegaConfBaseException) and full_key:
        return ConfigError(full_key, _first_line(cause))
    missing = re.search(r"Could not find '([^']+)'", message)
    if missing:  # method=nope: one line with the options and the closest one, instead of Hydra's listing
        group, _, value = missing.group(1).rpartition("/")
        options = _group_options(group)
        return ConfigError(group, f"no option {value!r}{did_you_mean(value, options)}; allowed: {', '.join(options)}")
    ambiguous = re.search(r"Ambiguous value for argument '([^=']+)=", message)
    if ambiguous:
        return ConfigError(ambiguous.group(1), "sweeps several values; add -m to run each, or quote the value")
    return ConfigError("override", _first_line(error))


def _key_suggestion(full_key: str, job: list[str]) -> str:
    """`` (did you mean 'method.lora_alpha'?)`` from the keys beside the unknown one."""
    from hydra import compose

    parent, _, leaf = full_key.rpartition(".")
    kept = [o for o in job if o.split("=", 1)[0].lstrip("+~") != full_key]
    try:
        base = compose("config", overrides=kept, return_hydra_config=parent.startswith("hydra"))
    except Exception:  # noqa: BLE001 - another bad override: no suggestion
        return ""
    node = OmegaConf.select(base, parent) if parent else base
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1, cutoff=0.6)
    return f" (did you mean {'.'.join(filter(None, [parent, close[0]]))!r}?)" if close else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_job(cfg: DictConfig, checked: dict[str, set[str]]) -> None:
    """One job's checks that import nothing heavy; ``checked`` remembers folders and data already passed."""
    resolve_run_config(cfg)  # as harness.cli.run_one does
    validate_values(cfg)
    check_memory_limit(cfg.get("memory_limit_gb"))
    results_dir = str(cfg.results_dir)
    if results_dir not in checked["results_dir"]:
        check_writable_folder("results_dir", Path(results_dir))
        checked["results_dir"].add(results_dir)
    data_key = json.dumps(OmegaConf.to_container(cfg.task, resolve=True), sort_keys=True, default=str)
    if data_key not in checked["data"]:
        import datasets

        from harness.data.load import load_fingerprinted

        datasets.disable_progress_bars()
        load_fingerprinted(cfg.task)
        checked["data"].add(data_key)


def process_data_bytes() -> int | None:
    """This process's data segment (Linux VmData), what RLIMIT_DATA caps; None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmData:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def check_memory_limit(limit_gb: float | None) -> None:
    """A cap below what the process already holds would fail every allocation, imports included."""
    own = process_data_bytes()
    if limit_gb is None or own is None or limit_gb * 2**30 > own:
        return
    raise ConfigError(
        "memory_limit_gb",
        f"{limit_gb} GB is below this process's own size ({own / 2**30:.2f} GB of data before any model loads); "
        "set it a few GB above the memory the run needs",
    )


def check_writable_folder(key: str, folder: Path) -> None:
    """The folder exists or can be made, and a file can be written in it; leaves nothing behind."""
    folder = folder.expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise ConfigError(key, f"{folder} cannot be made: {existing} is not a folder")
    try:
        if existing == folder:
            handle, probe = tempfile.mkstemp(prefix=".harness-write-check-", dir=folder)
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".harness-write-check-", dir=existing))
    except OSError as error:
        verb = "is not writable" if existing == folder else f"cannot be made in {existing}"
        raise ConfigError(key, f"{folder} {verb}: {error.strerror or error}") from None


def _check_study(cfg: DictConfig, parsed: list[Any]) -> None:
    """The study sweeper's own settings, every cell's search space, and its storage (reachable, not locked)."""
    from harness import storage as storage_stage
    from harness.sweep import Settings, Sweep, split_seeds

    sweeper = cfg.hydra.sweeper
    _, seeds = split_seeds(parsed, [int(s) for s in sweeper.seeds])
    liveness = storage_stage.Liveness.checked(sweeper.heartbeat_interval, sweeper.grace_period, sweeper.max_retry)
    settings = Settings(
        seeds=seeds, n_trials=sweeper.n_trials, tuning_seed=sweeper.tuning_seed, sampler=sweeper.sampler,
        pruner=sweeper.pruner, liveness=liveness,
    )  # fmt: skip
    Sweep(settings, launch=None, compose=None)  # what the sweeper checks of its settings before planning
    storage = sweeper.get("storage") or storage_stage.default_storage(cfg.results_dir)
    storage_stage.check_storage(storage)


def _check_search(cfg: DictConfig) -> None:
    """The cell's search space as the study sweeper will build it (a range with low > high, an unknown key)."""
    from harness.search import SearchSpace

    search = cfg.hydra.sweeper.get("search") or {}
    if not isinstance(search, DictConfig | dict):
        raise ConfigError(
            "hydra.sweeper.search", f"must map method names to {{space: ..., derive: ...}} (got {search!r})"
        )
    own = search.get(cfg.method.name)
    if own is not None and not isinstance(own, DictConfig):
        key = f"hydra.sweeper.search.{cfg.method.name}"
        raise ConfigError(key, f"must be a mapping with space and/or derive (got {own!r})")
    SearchSpace(cfg.method, own)
