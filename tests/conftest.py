"""Shared fixtures: compose run configs in-process, the way harness-run does."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tokenised splits are cached per test session, never in the user's cache (subprocesses inherit it).
os.environ.setdefault("FT_HARNESS_CACHE", __import__("tempfile").mkdtemp(prefix="ft-harness-test-cache-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from pg_cluster import postgres_cluster, postgres_url  # noqa: E402, F401 - a throwaway PostgreSQL cluster

from harness.cli import CONFIG_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Causal-LM runs score WikiText-2 before and after training (harness.forgetting): the local copy where it is
# here, one window of it (a 49k-token vocabulary's logits cost seconds per window on a CPU), else no forgetting
# measurement (the Hub, the default, is unreachable in tests).
WIKITEXT = SHARED_DATA / "wikitext2" / "test.txt"
GENERAL_TEXT = [f"data_root={SHARED_DATA}", "forgetting.tokens=256"] if WIKITEXT.is_file() else ["forgetting=none"]
# A 2-step run of the tiny random BERT on a small draw of an embedded task.
TINY = [
    "model=tiny_bert",
    "budget=tiny",
    "budget.max_steps=2",
    "budget.eval_steps=1",
    "budget.batch_size=8",
    "budget.max_eval_samples=16",
    "task.generator.n_train=64",
    "task.generator.n_validation=16",
    "task.generator.n_test=16",
]


def compose_config(overrides: list[str], return_hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with results_dir in a fresh temporary folder."""

    def make(*overrides: str):
        return compose_config([f"results_dir={tmp_path / 'results'}", *overrides])

    return make


# What a run settles beyond its config (harness.run.settled_identity), fixed for tests of the config's part.
SETTLED = {"device_type": "cpu", "precision": "fp32", "data_sha256": {"train": "t", "validation": "v", "test": "x"}}


def run_id_of(cfg) -> str:
    """The run_id a run of cfg gets here, as harness-run computes it (its data loaded, its device known)."""
    from harness.run import prepare

    return prepare(cfg).run_id


def method_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))


def run_cli(results_dir, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``harness-run -m`` on the tiny model in a fresh process, the way a user runs a sweep."""
    return run_cli_with(results_dir, TINY, *overrides, timeout=timeout)


def run_cli_with(results_dir, base: list[str], *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``harness-run -m`` with the given base overrides (a tiny model's) in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "harness.cli", "-m", *base, *overrides, f"results_dir={results_dir}"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: what it checks must be refused before weights are read."""
    from harness import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    for loader in ("load_classifier", "load_causal_lm", "load_model"):
        monkeypatch.setattr(models, loader, refuse)
