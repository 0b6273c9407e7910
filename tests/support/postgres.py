"""PostgreSQL for tests: a database of a test's own on a server, and private clusters.

:func:`create_database` / :func:`drop_database`: a fresh database on a running server (the
machine's shared one, see ``tests/conftest.py``), for a test or a test module.

:func:`pg_cluster`: a private server for tests that stop and restart it.  ``initdb`` into a fresh
temporary directory, ``pg_ctl`` start/stop on a free loopback port, trust authentication, fsync
off; never the machine's shared server.  PostgreSQL refuses to run as root, so when the tests run
as root the cluster's files belong to, and its processes run as, the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.gateway import free_port


async def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on the server ``admin_dsn`` reaches; its DSN."""
    import asyncpg

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{admin_dsn.rsplit('/', 1)[0]}/{name}"


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` (if it exists), disconnecting whoever still uses it."""
    import asyncpg

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin")
    return found


class PgCluster:
    """One private server: ``dsn`` reaches database ``postgres`` as user ``postgres``."""

    def __init__(self, root: Path, port: int, user: str | None) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log_path = root / "server.log"
        self._user = user
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        result = subprocess.run(
            args,
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n{self.log()}"
            )

    def log(self) -> str:
        """The server log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def init(self) -> None:
        """Create the cluster (``initdb``)."""
        self._run(
            _binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-F -p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c max_connections=20 "
            "-c shared_buffers=16MB"
        )
        self._run(
            _binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, clean shutdown) and wait."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        """Whether ``pg_ctl status`` sees the server."""
        result = subprocess.run(
            [_binary("pg_ctl"), "-D", str(self.data), "status"],
            user=self._user,
            capture_output=True,
            check=False,
            timeout=30,
        )
        return result.returncode == 0


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A started private cluster, stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="auditgate-pg-"))
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(root, free_port(), user)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.data.exists() and cluster.running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
