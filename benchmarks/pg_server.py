"""A throwaway PostgreSQL server for the tests and the scale_out benchmark: initdb + pg_ctl in a temp dir, on 127.0.0.1.

Binaries: ``$PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql``
package, installed by ``make system-deps``). PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` system user (``nobody`` if there is none). Durability is switched off
(``fsync``, ``synchronous_commit``): a test server, not a store anyone keeps. ``$KITH_TEST_PG_URL``
points the tests at a server of your own instead.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here (install Debian's ``postgresql`` package: ``make system-deps``)."""


def bindir() -> Path:
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresUnavailable("no PostgreSQL server binaries: apt-get install postgresql (make system-deps)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` → admin URL ``postgresql://postgres@127.0.0.1:<port>/postgres``; ``stop()``."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _has_user("postgres") else "nobody"
        self.dir = Path(tempfile.mkdtemp(prefix="kith-pg-"))  # short: the socket path limit is ~107 bytes
        self.port = 0
        self.url = ""

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], check=True, user=self.user, cwd=self.dir,
                              capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(self.bin / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            self.port = _free_port()
            try:
                self.resume()
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() else ""
                    raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from None
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self.url

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data."""
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """(Re)start the server on its port."""
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
                  " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300", "start")

    def stop(self) -> None:
        subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"],
                       user=self.user, cwd=self.dir, capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def create_database(admin_url: str) -> str:
    """A new empty database on the server of ``admin_url``; returns its URL."""
    import psycopg

    name = f"kith_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
