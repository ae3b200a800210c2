"""A throwaway PostgreSQL cluster for tests: loopback port, password role, stopped at the end.

Import the fixtures into a test module (`from tests.pg import pg_url, postgres  # noqa: F401`).
The server binaries come from apt's `postgresql` package (`make test` installs it as root).
PostgreSQL refuses to run as root, so as root every server command runs as the `postgres` OS
user via `runuser`, in a data directory chowned to it. Without the binaries the fixture skips,
or fails when CI=true, since then a missing server means a broken CI image, not a choice.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROLE = "vitsweep"


class PgUnavailable(RuntimeError):
    """No server binaries (or no user to run them): a missing tool, not a failing server."""


def server_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<major>/bin` that holds initdb and pg_ctl."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]
    if not found:
        return None
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PgServer:
    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int
    password: str  # of ROLE; tests grep for it to prove it never leaks
    as_postgres: bool  # whether server commands go through `runuser -u postgres`

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser over the Unix socket (trust auth, no password)."""
        import psycopg2

        conn = psycopg2.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres"
        )
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        self.admin(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)


def _server_cmd(as_postgres: bool, *args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if as_postgres else list(args)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}")


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL needed in CI: {message}", pytrace=False)
    pytest.skip(message)


def start_server(durable: bool = False) -> PgServer:
    """initdb + pg_ctl start on a free loopback port; a role with a random password.

    Plain (no pytest inside), so that `vitsweep.bench.scaleout` can start one too; `durable`
    keeps PostgreSQL's default fsync/commit settings, for timings comparable to SQLite's."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise PgUnavailable(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
            "(apt-get install -y postgresql; `make test` does it as root)"
        )
    as_postgres = os.geteuid() == 0
    if as_postgres:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PgUnavailable("running as root but no `postgres` OS user to run it") from None
    # Not pytest's tmp_path: its parents are root-only (0700), and the server user must enter.
    top = Path(tempfile.mkdtemp(prefix="vitsweep-pg-"))
    data_dir, socket_dir = top / "data", top / "sock"
    socket_dir.mkdir()
    if as_postgres:
        for p in (top, socket_dir):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    password = secrets.token_hex(12)
    pwfile = top / "pw"
    pwfile.write_text("postgres-superuser-unused\n")
    if as_postgres:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    initdb = [
        str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--pwfile", str(pwfile),
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions",
    ]  # fmt: skip
    _run(_server_cmd(as_postgres, *initdb), "initdb")
    last_error = ""
    for _ in range(3):  # the port may be taken between free_port() and the server's bind
        port = free_port()
        server = PgServer(bin_dir, data_dir, socket_dir, port, password, as_postgres)
        opts = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not durable:  # tests: a crash-safe disk is not what they check, and fsync is slow
            opts += " -c fsync=off -c synchronous_commit=off"
        start = [
            str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(top / "server.log"),
            "-o", opts, "-w", "-t", "60", "start",
        ]  # fmt: skip
        try:
            _run(_server_cmd(as_postgres, *start), "pg_ctl start")
        except RuntimeError as e:
            last_error = f"{e}\n{_tail(top / 'server.log')}"
            continue
        try:
            server.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        except BaseException:
            stop_server(server)  # never leave a server behind a failed fixture
            raise
        return server
    shutil.rmtree(top, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL would not start: {last_error}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return ""


def stop_server(server: PgServer) -> None:
    stop = [str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "stop"]
    subprocess.run(_server_cmd(server.as_postgres, *stop), capture_output=True, timeout=120)
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One server for the session; each test takes its own database from `pg_url`."""
    try:
        server = start_server()
    except PgUnavailable as e:
        _unavailable(str(e))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def pg_url(postgres: PgServer) -> str:
    """A fresh, empty database owned by the password role; the URL holds the password."""
    name = f"t{int(time.time() * 1000) % 10**9}_{secrets.token_hex(3)}"
    return postgres.create_database(name)
