"""Servers under test: how each scenario is started, pinned, checked and cleaned up.

A :class:`Scenario` names a system (``auditgate``, a peer), its engine and its audit setting,
and knows how to start it: :meth:`Scenario.start` returns a :class:`Running` whose ``pids`` are
the processes whose CPU and memory count as "the server" (process trees: workers and children
are included by :mod:`bench.procfs`).  Every server listens on 127.0.0.1 only and is pinned to
``SERVER_CPUS``; the load generator and the fake upstream run on ``CLIENT_CPUS``.

Per-scenario resources (a PostgreSQL database, a JetStream stream, files) are created in
:meth:`Scenario.start` and removed in :meth:`Running.stop`, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
SERVER_CPUS = "0"
CLIENT_CPUS = "1"
PG_ADMIN_DSN = os.environ.get("AUDITGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("AUDITGATE_BENCH_NATS", "nats://127.0.0.1:4222")
CHAT = "/v1/chat/completions"
"""The chat completions path: the default load of every scenario."""


class StartError(Exception):
    """A server that did not come up; the message says why (with its log's tail)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run under ``taskset -c cpus``."""
    return ["taskset", "-c", cpus, *argv]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any audit/gateway settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "AUDITGATE_"))}
    env.update(extra)
    return env


def log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path | None) -> None:
    """Poll ``url`` until it answers 200; :class:`StartError` if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with code {proc.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise StartError(f"not ready within {timeout_s:.0f}s:\n{log_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; always reaps."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def spawn(
    argv: Sequence[str], env: dict[str, str], cwd: Path, log: Path | None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout+stderr to ``log`` (``None``: /dev/null), in its own group."""
    out: IO[bytes] | int = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()


@dataclasses.dataclass
class Running:
    """A started server: where to send load, which pids are the server, how to stop it."""

    url: str
    pids: list[int]
    processes: list[subprocess.Popen[bytes]]
    model: str = "mock"
    headers: tuple[tuple[str, str], ...] = ()
    metrics_url: str | None = None
    """A Prometheus endpoint with ``auditgate_audit_*`` counters, for the delivery check."""
    cleanups: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def stop(self) -> None:
        """Stop every process (last started first), then run the cleanups (last first)."""
        for proc in reversed(self.processes):
            stop_process(proc)
        for cleanup in reversed(self.cleanups):
            cleanup()


@dataclasses.dataclass(frozen=True)
class Context:
    """What every scenario may use: a scratch directory and the shared fake upstream."""

    workdir: Path
    upstream_url: str
    """Base URL (``.../v1``) of ``bench/upstream.py``."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One server configuration of the suite."""

    system: str
    """``auditgate``, ``dynamo-0.7.1``, ``dynamo-1.6.1``, ``litellm-1.108.7``."""
    engine: str
    """``mock`` (the system's own mock engine) or ``openai`` (in front of the fake upstream)."""
    audit: str
    """``off`` or the audit sink / callback in use."""
    starter: Callable[[Scenario, Context], Running]
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment for the server (auditgate: e.g. ``DYN_AUDIT_INTEGRITY=1``)."""
    path: str = CHAT
    """The endpoint the load goes to (``/v1/completions``: legacy text completions)."""

    @property
    def name(self) -> str:
        name = f"{self.system} {self.engine} audit={self.audit}"
        return name if self.path == CHAT else f"{name} {self.path}"

    def start(self, ctx: Context) -> Running:
        return self.starter(self, ctx)


# --- auditgate ---------------------------------------------------------------------------------


def _pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh database on the shared PostgreSQL and the function that drops it."""
    import asyncpg

    name = f"agbench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    return dsn, lambda: asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _nats_stream() -> tuple[str, str, Callable[[], None]]:
    """Unique (stream, subject) names and the function that deletes the stream."""
    import nats
    from nats.js.errors import NotFoundError

    token = uuid.uuid4().hex[:12]
    stream, subject = f"AGBENCH_{token.upper()}", f"agbench.{token}.audit"

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            with contextlib.suppress(NotFoundError):  # the gateway never created it
                await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    return stream, subject, lambda: asyncio.run(delete())


def audit_env(sink: str, workdir: Path) -> tuple[dict[str, str], list[Callable[[], None]]]:
    """The ``DYN_AUDIT_*`` environment for one sink (``off``: audit disabled), and cleanups."""
    if sink == "off":
        return {"DYN_AUDIT_ENABLED": "0"}, []
    env = {"DYN_AUDIT_ENABLED": "1", "DYN_AUDIT_SINKS": sink}
    cleanups: list[Callable[[], None]] = []
    if sink in ("jsonl", "jsonl_gz"):
        env["DYN_AUDIT_OUTPUT_PATH"] = str(workdir / "audit" / "audit.jsonl")
    elif sink == "sqlite":
        env["DYN_AUDIT_SQLITE_PATH"] = str(workdir / "audit.db")
    elif sink == "postgres":
        dsn, drop = _pg_database()
        env["DYN_AUDIT_POSTGRES_URL"] = dsn
        cleanups.append(drop)
    elif sink == "nats":
        stream, subject, delete = _nats_stream()
        env |= {
            "DYN_AUDIT_NATS_URL": NATS_URL,
            "DYN_AUDIT_NATS_STREAM": stream,
            "DYN_AUDIT_NATS_SUBJECT": subject,
        }
        cleanups.append(delete)
    return env, cleanups


def start_auditgate(scenario: Scenario, ctx: Context) -> Running:
    """``auditgate serve`` (one worker, uvloop + httptools) with the scenario's engine and sink."""
    workdir = ctx.workdir / f"auditgate-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    env, cleanups = audit_env(scenario.audit, workdir)
    env["AUDITGATE_LOG_LEVEL"] = "warning"
    if scenario.engine == "openai":
        env |= {"AUDITGATE_ENGINE": "openai", "AUDITGATE_UPSTREAM_URL": ctx.upstream_url}
    else:
        env |= {
            "AUDITGATE_ENGINE": "mock",
            "AUDITGATE_MOCK_TTFT_MS": "0",
            "AUDITGATE_MOCK_ITL_MS": "0",
        }
    env |= dict(scenario.env)
    port = free_port()
    # The stderr sink's records go to /dev/null (so its cost is the write, not a terminal).
    log = None if scenario.audit == "stderr" else workdir / "server.log"
    argv = [PYTHON, "-m", "auditgate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    try:
        proc = spawn(pinned(SERVER_CPUS, argv), clean_env(env), workdir, log)
    except BaseException:
        for cleanup in reversed(cleanups):
            cleanup()
        raise
    running = Running(url, [proc.pid], [proc], metrics_url=url + "/metrics", cleanups=cleanups)
    try:
        wait_http(url + "/health", proc, 30, log)
    except BaseException:
        running.stop()
        raise
    return running


def auditgate_scenarios(
    engines: Sequence[str], sinks: Sequence[str], path: str = CHAT
) -> list[Scenario]:
    """``auditgate`` with each engine and each audit setting (``off`` or a sink name), loaded
    at ``path``."""
    return [Scenario("auditgate", e, s, start_auditgate, path=path) for e in engines for s in sinks]


# --- the fake upstream -------------------------------------------------------------------------


@contextlib.contextmanager
def fake_upstream(workdir: Path, models: Sequence[str] = ("mock",)) -> Iterator[str]:
    """``bench/upstream.py`` on the client CPU for the ``with`` block; yields its ``/v1`` URL."""
    port = free_port()
    log = workdir / "upstream.log"
    argv = [PYTHON, str(ROOT / "bench" / "upstream.py"), "--port", str(port)]
    for model in models:
        argv += ["--model", model]
    proc = spawn(pinned(CLIENT_CPUS, argv), clean_env({}), workdir, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 15, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


def python_version() -> str:
    return sys.version.split()[0]
