"""A throwaway PostgreSQL cluster for the tests (fixtures ``postgres_cluster`` and ``postgres_url``).

The server binaries are Debian's (package ``postgresql``: ``/usr/lib/postgresql/<major>/bin``, the newest
major is used); where they are missing the tests that need a server skip and say why (``.ci/run`` installs
the package, and sets ``FT_HARNESS_REQUIRE_POSTGRES=1`` so that a skip there is a failure instead). The
cluster lives in a fresh folder under /tmp: initdb refuses to run as root, so under root the server runs as
the ``postgres`` user, who owns the folder (pytest's own tmp_path is root's, mode 0700, closed to it). The
server listens on a unix socket in that folder only (no TCP port, so no clash with another server), trusts
local connections, and skips fsync; it is stopped (``pg_ctl stop -m immediate``) and the folder removed at
the end of the session, failed or not.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BINARIES = "/usr/lib/postgresql/*/bin"
REQUIRE_ENV = "FT_HARNESS_REQUIRE_POSTGRES"
SERVER_USER = "postgres"  # the superuser's name in the cluster, and the account the server runs as under root
PORT = 5432  # only names the socket file (.s.PGSQL.5432) in the cluster's private socket folder
INITDB_OPTIONS = ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
}


def server_binaries() -> Path | None:
    """The newest PostgreSQL major version's bin folder that holds initdb and pg_ctl, or None."""
    found = [Path(p) for p in glob.glob(BINARIES) if os.access(Path(p) / "initdb", os.X_OK)]
    found = [p for p in found if os.access(p / "pg_ctl", os.X_OK)]

    def major(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name), name) if name.isdigit() else (-1, name)

    return max(found, key=major, default=None)


def unavailable(reason: str):
    """Skip the test that needs a server, or fail it where CI requires one."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def require_driver() -> None:
    """psycopg, the driver of SQLAlchemy's postgresql(+psycopg):// URLs (the project's postgres extra)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("no PostgreSQL driver: pip install -e '.[postgres]'")


class Cluster:
    """One initdb'd PostgreSQL server in its own temporary folder."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="ft-harness-pg-", dir="/tmp"))  # mode 0700
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.timings: dict[str, float] = {}
        self._names = itertools.count(1)

    def _command(self, *args: str) -> list[str]:
        """A server-side command line, run as the postgres user under root, as oneself otherwise."""
        args = [str(self.bindir / args[0]), *args[1:]]
        if not self.as_root:
            return args
        if shutil.which("runuser"):
            return ["runuser", "-u", SERVER_USER, "--", *args]
        return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(args)]

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(self._command(*args), cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log}".strip())

    def start(self) -> None:
        begin = time.monotonic()
        self.socket_dir.mkdir()
        if self.as_root:
            account = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SERVER_USER, *INITDB_OPTIONS)
        settings = {**SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.timings["initdb"] = time.monotonic() - begin
        begin = time.monotonic()
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")
        self.timings["start"] = time.monotonic() - begin

    def stop(self) -> None:
        """Stops the server (if it started) and removes the folder, whatever state they are in."""
        begin = time.monotonic()
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.timings["stop"] = time.monotonic() - begin

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of a database, over the private socket (psycopg, the driver of the postgres extra)."""
        return f"postgresql+psycopg://{SERVER_USER}@/{database}?host={self.socket_dir}&port={PORT}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (named ``db<n>`` unless given); returns its URL."""
        name = name or f"db{next(self._names)}"
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(PORT), "-U", SERVER_USER, name)
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_cluster():
    """A running throwaway cluster for the whole session (skips, with the reason, where none can run)."""
    bindir = server_binaries()
    if bindir is None:
        unavailable(f"no PostgreSQL server binaries ({BINARIES}/initdb; Debian package postgresql)")
    require_driver()
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            unavailable(f"running as root and there is no {SERVER_USER!r} user to run the server as")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """SQLAlchemy URL of the session's database ``optuna`` (shared by the tests: use distinct study names)."""
    return postgres_cluster.create_database("optuna")
