"""The package installs and runs without its source checkout: ``conf/`` and ``tasks/`` ship as package data.

``pip install .`` (not editable) of a copy of the tree into a fresh folder,
then ``harness-run`` from an unrelated folder with only that folder on
``PYTHONPATH``, so the installed copy shadows the checkout and any editable
install. Installing takes seconds: no dependencies, no build isolation, no index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY
from setuptools import find_namespace_packages

from harness import paths

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _in_tree(packages: list[str]) -> list[str]:
    return [p for p in packages if "__pycache__" not in p.split(".")]


def test_pyproject_lists_every_package_of_the_tree():
    listed = set(_setuptools_config()["packages"])
    code = _in_tree(find_namespace_packages(where=str(REPO), include=["harness*", "hydra_plugins*", "tasks*"]))
    config = _in_tree(find_namespace_packages(where=str(REPO / "conf")))
    assert listed == {*code, "harness_conf", *(f"harness_conf.{group}" for group in config)}


def test_a_checkout_reads_its_own_configs_and_paths():
    assert paths.source_checkout() == REPO
    assert Path(paths.config_dir()) == REPO / "conf"
    assert paths.project_path("data/x.csv") == REPO / "data" / "x.csv"
    assert paths.project_path("/abs/x.csv") == Path("/abs/x.csv")


def test_an_installed_package_resolves_relative_paths_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert paths.project_path("data") == tmp_path / "data"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the tree (pip builds in the source folder, which stays clean so)."""
    root = tmp_path_factory.mktemp("install")
    source, site = root / "source", root / "site"
    setuptools = _setuptools_config()
    top_level = {package.split(".")[0] for package in setuptools["packages"]}
    folders = {setuptools.get("package-dir", {}).get(package, package) for package in top_level}
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy2(REPO / name, source / name)
    for folder in sorted(folders):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*command, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return site


def _harness_run(site: Path, cwd: Path, *arguments: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """The installed ``harness-run`` script, with only ``site`` on PYTHONPATH, started in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(site / "bin" / "harness-run"), *arguments]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_package_composes_and_validates_from_any_folder(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    imported = subprocess.run(
        [sys.executable, "-c", "import harness, harness_conf, tasks; print(harness.__file__, tasks.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert all(Path(f).is_relative_to(installed) for f in imported.stdout.split()), imported.stdout

    searchpath = _harness_run(installed, tmp_path, "--info", "searchpath")
    assert searchpath.returncode == 0, searchpath.stderr
    assert f"file://{installed / 'harness_conf'}" in searchpath.stdout and str(REPO) not in searchpath.stdout

    composed = _harness_run(
        installed, tmp_path, "--cfg", "job", "--resolve", "model=tiny_bert", "task=arithmetic", "method=ia3"
    )
    assert composed.returncode == 0, composed.stderr
    for line in [
        "name: tiny_bert",
        "name: arithmetic",
        "name: ia3",
        "_target_: tasks.generators.generative.arithmetic",
    ]:
        assert line in composed.stdout

    refused = _harness_run(installed, tmp_path, "model=tiny_bert", "budget=tiny", "budget.max_steps=0")
    assert refused.returncode == 2
    assert "error: budget.max_steps: must be a positive number" in refused.stderr


def test_installed_package_trains_a_tiny_run_from_any_folder(installed, tmp_path):
    """One real 2-step run of the installed copy; results_dir's default (results) is the working directory's."""
    done = _harness_run(installed, tmp_path, *TINY, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = list((tmp_path / "results" / "runs").glob("*.json"))
    assert len(records) == 1, done.stderr[-3000:]
