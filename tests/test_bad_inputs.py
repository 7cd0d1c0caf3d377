"""Every bad input in tests/bad_inputs.yaml is answered by ``harness-run`` the same way: one ``error:`` line on
stderr naming the key or file, exit status 2, nothing written, in under five seconds (before the heavy imports)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TABLE = Path(__file__).with_name("bad_inputs.yaml")
CASES = yaml.safe_load(TABLE.read_text())["cases"]
HARNESS_RUN = Path(sys.executable).with_name("harness-run")
SECONDS = 5.0


def _flat(args: list) -> list[str]:
    """The table's args with its shared lists (YAML anchors) spliced in."""
    return [str(a) for arg in args for a in (arg if isinstance(arg, list) else [arg])]


def _write(folder: Path, files: dict) -> None:
    for name, content in (files or {}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_bytes(content["latin1"].encode("latin-1"))
        else:
            path.write_text(content)


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def test_the_table_has_at_least_thirty_distinct_cases():
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_a_bad_input_is_one_error_line_exit_2_nothing_written_within_five_seconds(case, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _write(scratch, case.get("files"))
    before = _listing(scratch)
    args = [a.replace("{tmp}", str(scratch)) for a in _flat(case["args"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FT_HARNESS_CACHE": str(tmp_path / "cache")}
    started = time.perf_counter()
    result = subprocess.run(
        [str(HARNESS_RUN), f"results_dir={scratch}/results", *args],
        cwd=scratch, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert case["expect"].replace("{tmp}", str(scratch)) in lines[0]
    assert result.stdout == ""
    assert _listing(scratch) == before  # no results folder, no Hydra run folder, inputs untouched
    assert elapsed < SECONDS, f"answered after {elapsed:.1f} s"
