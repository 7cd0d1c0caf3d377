"""Every bad input in tests/bad_inputs.yaml is answered by ``harness-run`` the same way: one ``error:`` line on
stderr naming the key or file, exit status 2, nothing written, in under five seconds (before the heavy imports)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def answer(case: dict, tmp_path: Path) -> list[str]:
    """Run one case; the ways its answer falls short of the contract (none when it meets it)."""
    scratch = tmp_path / case["id"]
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
    expected = case["expect"].replace("{tmp}", str(scratch))
    problems = [
        f"exit status {result.returncode}, not 2" if result.returncode != 2 else "",
        f"{len(lines)} lines on stderr, not one 'error:' line"
        if len(lines) != 1 or not lines[0].startswith("error: ")
        else "",
        f"the line lacks {expected!r}" if not lines or expected not in lines[0] else "",
        "something on stdout" if result.stdout else "",
        "files written" if _listing(scratch) != before else "",  # no results folder, no Hydra run folder
        f"answered after {elapsed:.1f} s" if elapsed >= SECONDS else "",
    ]
    problems = [p for p in problems if p]
    return [f"{case['id']}: {'; '.join(problems)}; stderr: {result.stderr[-600:]!r}"] if problems else []


def test_every_bad_input_is_one_error_line_exit_2_nothing_written_within_five_seconds(tmp_path):
    """The whole table, two cases at a time (each case is its own process; the machine has two cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [line for lines in pool.map(lambda case: answer(case, tmp_path), CASES) for line in lines]
    assert not failures, "\n".join(failures)
