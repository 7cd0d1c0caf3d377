"""Record files under faults: a write that fails half-way, corrupted and newer records, dead writers' leftovers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_id_of

from harness import cli, records
from harness.cli import run_one

# --- a write that fails half-way -------------------------------------------------------------------------


class _FillingDisk:
    """A file that takes ``room`` more characters, then fails as a full disk does (ENOSPC), part written."""

    def __init__(self, out, room: int):
        self.out, self.room = out, room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            self.out.write(text[: self.room])
            self.out.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(text)
        return self.out.write(text)

    def __getattr__(self, name):
        return getattr(self.out, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.out.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(fails)``: record temporaries (``runs/.*.tmp``) get 200 characters before ENOSPC, for the
    writes ``fails`` says (a callable on the write's number, from 0); every other file is written as usual."""

    def install(fails=lambda number: True) -> list[Path]:
        real, attempts = os.fdopen, []

        def fdopen(fd, *args, **kwargs):
            out = real(fd, *args, **kwargs)
            name = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if name.parent.name != "runs" or not name.name.endswith(".tmp"):
                return out
            attempts.append(name)
            return _FillingDisk(out, 200) if fails(len(attempts) - 1) else out

        monkeypatch.setattr(records.os, "fdopen", fdopen)
        return attempts

    return install


def _messages(caplog, level: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == level and r.name.startswith("harness")]


def _runs_files(results_dir) -> list[str]:
    folder = records.runs_dir(results_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_write_that_fails_half_way_leaves_neither_a_temporary_nor_a_record(tmp_path, full_disk):
    path = records.record_path(tmp_path, "abc")
    records.write_record(path, {"status": "failed", "old": True})
    full_disk()
    with pytest.raises(OSError) as raised:
        records.write_record(path, {"status": "success", "blob": "x" * 10_000})
    assert raised.value.errno == errno.ENOSPC
    assert _runs_files(tmp_path) == ["abc.json"] and json.loads(path.read_text())["old"] is True


def test_a_success_record_that_cannot_be_written_becomes_a_failed_record(make_cfg, full_disk, caplog):
    """The run trained, but its record hit a full disk: a smaller failed record says so, and the run exits 1."""
    cfg = make_cfg(*TINY)
    attempts = full_disk(fails=lambda number: number < 2)  # the success record and the full failed one
    with caplog.at_level("ERROR", logger="harness"), pytest.raises(SystemExit) as exited:
        run_one(cfg)
    assert exited.value.code == 1 and len(attempts) == 3
    (name,) = _runs_files(cfg.results_dir)
    record = records.read_record(records.runs_dir(cfg.results_dir) / name)
    assert record["status"] == "failed" and record["error_kind"] == "exception"
    assert record["error"] == f"OSError: [Errno {errno.ENOSPC}] No space left on device"
    assert record["learning_curve"] == [] and records.missing_fields(record) == []
    (line,) = _messages(caplog, "ERROR")
    assert "No space left on device" in line and name in line and "\n" not in line


@pytest.mark.parametrize("multirun", [False, True])
def test_when_no_record_can_be_written_the_run_says_so_in_one_line(make_cfg, full_disk, capsys, monkeypatch, multirun):
    """Not even the failed record fits: no record, no temporary file; one ``error:`` line naming the record's
    path and the OS error and exit 1 for a single run, None (the sweep goes on) in a multirun."""
    cfg = make_cfg(*TINY)
    path = records.record_path(cfg.results_dir, run_id_of(cfg))
    full_disk()
    monkeypatch.setattr(cli, "_in_multirun", lambda: multirun)
    if multirun:
        assert run_one(cfg) is None
    else:
        with pytest.raises(SystemExit) as exited:
            run_one(cfg)
        assert exited.value.code == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == f"error: run record {path} could not be written: No space left on device (OSError)"
    assert _runs_files(cfg.results_dir) == []


CHILD_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from harness import records

path, limit = Path(sys.argv[1]), int(sys.argv[2])
records.write_record(path, {"status": "failed", "old": True})  # before the limit: small enough anyway
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    records.write_record(path, {"status": "success", "blob": "x" * (4 * limit)})
except OSError as error:
    print(error.errno)
"""


def test_a_record_bigger_than_the_file_size_limit_fails_cleanly_in_a_real_process(tmp_path):
    path = records.record_path(tmp_path, "abc")
    done = subprocess.run(
        [sys.executable, "-c", CHILD_UNDER_A_FILE_SIZE_LIMIT, str(path), "4096"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(errno.EFBIG)
    assert _runs_files(tmp_path) == ["abc.json"] and json.loads(path.read_text())["old"] is True


CHILD_RUN_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from harness import cli, records

write = records.write_record


def limited(path, record):  # the limit starts when the record is written: the data cache and logs before it fit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    write(path, record)


records.write_record = limited
sys.argv = ["harness-run", *sys.argv[1:]]
cli.main()
"""


def test_a_run_whose_record_exceeds_the_file_size_limit_exits_1_with_one_error_line(tmp_path):
    """End to end in a real process: ``harness-run`` trains, its record (several KB) meets a 2 KB file-size limit."""
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-c", CHILD_RUN_UNDER_A_FILE_SIZE_LIMIT, *TINY, f"results_dir={results}"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large (OSError)" in errors[0], done.stderr[-2000:]
    assert f"error: run record {results / 'runs'}/" in errors[0]
    assert _runs_files(results) == []


# --- corrupted and newer records: the skip logic names them and goes on --------------------------------


def test_a_corrupted_record_of_the_run_about_to_start_is_named_and_replaced(make_cfg, caplog):
    cfg = make_cfg(*TINY)
    path = records.record_path(cfg.results_dir, run_id_of(cfg))
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 2, "status": "succ')  # a torn file from a foreign writer
    with caplog.at_level("WARNING", logger="harness"):
        record = run_one(cfg)
    assert record["status"] == "success" and records.read_record(path)["finished_at"] == record["finished_at"]
    (warning,) = _messages(caplog, "WARNING")
    assert warning.startswith(f"{path}: truncated or invalid JSON") and "running it again replaces it" in warning


def test_a_record_of_a_newer_schema_is_skipped_and_kept(make_cfg, caplog):
    """An older harness cannot read it, and must not overwrite a newer harness's result: it skips it, naming the
    file; force=true overwrites it on purpose."""
    cfg = make_cfg(*TINY)
    path = records.record_path(cfg.results_dir, run_id_of(cfg))
    path.parent.mkdir(parents=True)
    newer = json.dumps({"schema_version": records.SCHEMA_VERSION + 1, "status": "success", "renamed": {}})
    path.write_text(newer)
    with caplog.at_level("WARNING", logger="harness"):
        assert run_one(cfg) is None
    assert path.read_text() == newer and not records.is_done(cfg.results_dir, path.stem)
    (warning,) = _messages(caplog, "WARNING")
    assert warning.startswith(f"skip {path}: schema_version {records.SCHEMA_VERSION + 1} is newer than this")
    assert "upgrade the harness" in warning
    cfg.force = True
    assert run_one(cfg)["schema_version"] == records.SCHEMA_VERSION


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"run_id": "abc", "stat', "truncated or invalid JSON (Unterminated string"),
        ("", "truncated or invalid JSON (Expecting value"),
        ("[1, 2]", "not a JSON object (a list)"),
        ('{"schema_version": 99, "status": "success"}', "schema_version 99 is newer than this harness's"),
        ('{"schema_version": 2, "status": "success"}', "missing required fields: run_id, model, task"),
    ],
)
def test_inspect_record_says_what_is_wrong(tmp_path, content, problem):
    path = tmp_path / "abc.json"
    path.write_bytes(content.encode())
    found = records.inspect_record(path)
    assert found.record is None and found.problem.startswith(problem)
    assert found.newer == ("newer" in problem)
    assert records.read_record(path) is None and records.inspect_record(tmp_path / "absent.json").absent


# --- temporary files of dead writers --------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _aged(path: Path, seconds: float) -> Path:
    path.write_text("{")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_only_temporaries_of_dead_writers_are_swept(tmp_path):
    """Named with this host and a dead PID: removed at once. With a live PID (this process): kept. Without a PID
    (older harness) or from another host: removed only when over an hour old."""
    host = records._host_key()
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    runs, studies = tmp_path / "runs", tmp_path / "studies"
    runs.mkdir()
    studies.mkdir()
    dead = _aged(runs / f".abc.{host}-{_dead_pid()}.x1y2z3.tmp", 0)
    dead_samples = _aged(runs / f".abc.samples.{host}-{_dead_pid()}.q9w8e7.tmp", 0)
    dead_study = _aged(studies / f".cell.{host}-{_dead_pid()}.a_b_c1.tmp", 0)
    live = _aged(runs / f".def.{host}-{os.getpid()}.k2l3m4.tmp", 2 * 3600)
    unnamed_old, unnamed_new = _aged(runs / ".ghi.abcd1234.tmp", 2 * 3600), _aged(runs / ".jkl.abcd1234.tmp", 60)
    remote_old = _aged(runs / f".mno.{other_host}-1.abc123.tmp", 2 * 3600)
    remote_new = _aged(runs / f".pqr.{other_host}-1.abc123.tmp", 60)
    record = _aged(runs / "stu.json", 2 * 3600)
    removed = records.sweep_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, dead_samples, dead_study, unnamed_old, remote_old])
    assert all(not p.exists() for p in removed)
    assert all(p.exists() for p in (live, unnamed_new, remote_new, record))
    assert records.sweep_stale_temporaries(tmp_path / "nowhere") == []


STALLED_WRITER = """
import json, sys, time
from pathlib import Path
from harness import records


def stall(record, out, **kwargs):  # half the record written, then hang: the state a kill -9 catches it in
    out.write('{"status": "succ')
    out.flush()
    print("writing", flush=True)
    time.sleep(600)


json.dump = stall
records.write_record(Path(sys.argv[1]), {"status": "success"})
"""


def test_a_writer_killed_mid_write_leaves_a_temporary_the_sweep_removes_while_a_live_writer_keeps_its_own(tmp_path):
    writers = []
    for stem in ("killed", "alive"):
        writer = subprocess.Popen(
            [sys.executable, "-c", STALLED_WRITER, str(records.record_path(tmp_path, stem))],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout.readline().strip() == "writing"
        writers.append(writer)
    killed, alive = writers
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        temporaries = {p.name.split(".")[1]: p for p in records.runs_dir(tmp_path).glob(".*.tmp")}
        assert set(temporaries) == {"killed", "alive"}
        assert records.sweep_stale_temporaries(tmp_path) == [temporaries["killed"]]
        assert temporaries["alive"].exists() and not records.record_path(tmp_path, "killed").exists()
    finally:
        alive.kill()
        alive.wait(timeout=30)
