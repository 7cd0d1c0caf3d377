"""``harness-run``: the Hydra application behind every run and sweep.

Bad input exits with status 2 and one line on stderr naming the key. A run
that fails while training is recorded as failed: a single run then exits 1,
while in a multirun the sweep goes on to the next job.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("harness")
# The config tree lives at the repository root (conf/), beside the package.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _quiet_libraries() -> None:
    """Keep the console to the harness's own lines; records hold the details."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT calls transformers APIs that transformers 5 deprecates; not actionable by users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _summary(record: dict) -> str:
    primary = record["primary_metric"]
    return (
        f"{record['method']} on {record['task']} ({record['budget']}, seed {record['seed']}): "
        f"{primary['name']} val={primary['validation']:.4f} test={primary['test']:.4f}; "
        f"trainable {record['params']['trainable']:,} / {record['params']['total']:,}; "
        f"peak mem +{record['memory']['peak_above_baseline_bytes'] / 2**20:.0f} MiB; "
        f"{record['time']['train_seconds']:.1f}s train -> {record['run_id']}"
    )


def run_one(cfg: DictConfig) -> dict | None:
    """Skip if done, validate, train; returns the record (the earlier one when skipped, None when failed)."""
    from harness import records
    from harness.config import ConfigError, validate

    try:
        rid = records.run_id(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(getattr(error, "full_key", None) or "config", str(error).splitlines()[0]) from None
    path = records.record_path(cfg.results_dir, rid)
    if not cfg.force and records.is_done(cfg.results_dir, rid):
        log.info("skip %s: already succeeded (%s); force=true reruns it", rid, path)
        return records.read_record(path)
    validate(cfg)  # static checks first: a bad value fails before torch and the Trainer are even imported
    _quiet_libraries()
    from harness.run import RunFailed, execute, prepare

    prepared = prepare(cfg)
    try:
        record = execute(prepared)
    except RunFailed as error:
        log.error("run %s failed: %s (recorded in %s)", rid, error, path)
        if not _in_multirun():
            sys.exit(1)
        return None
    log.info("%s", _summary(record))
    return record


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.config import ConfigError

    try:
        run_one(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
