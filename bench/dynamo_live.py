"""The live check: NVIDIA Dynamo's own frontend + mocker publishing its audit to NATS, ``auditgate
consume`` storing it into SQLite and PostgreSQL, and the official ``openai`` SDK reading every
answer back through auditgate's stored-completions API.

For each version (installed from PyPI into ``bench/.peers`` as ``bench/peers.py`` does), on
loopback: a private ``nats-server -js`` and its stream; two ``auditgate consume`` processes (one
per target, each its own durable) started before Dynamo publishes; Dynamo's frontend and mocker
with its NATS sink on (0.x: ``DYN_AUDIT_SINKS=nats``, requests with ``store: true``; 1.x:
``DYN_REQUEST_TRACE_SINKS=nats`` with payload and end rows, force logging); the requests of
``bench/dynamo_capture.py`` (stream and not, tools, one abandoned stream).  Then, per target, an
``auditgate serve`` on that store and, for every request Dynamo answered,
``client.chat.completions.retrieve/list/messages.list`` must return exactly what Dynamo
answered.  Prints one line per check and exits 1 if any failed.

Not in the test suite: installing both Dynamo versions takes several minutes and a few GB, more
than a CI run should spend; the fast suite covers the same conversions on the captured
fixtures.  Usage (PostgreSQL on 127.0.0.1:5432, trust auth)::

    .venv/bin/python -m bench.dynamo_live 0.7.1 1.6.1
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.dynamo_capture import (
    STREAM,
    SUBJECTS,
    audit_env,
    make_stream,
    phases,
    plane_args,
    run_frontend,
)
from bench.peers import MODEL, _nats_server, install_dynamo, model_dir
from bench.servers import PG_ADMIN_DSN, PYTHON, clean_env, free_port, spawn, stop_process


def consumer(nats_url: str, subject: str, durable: str, to: str, workdir: Path) -> Any:
    argv = [PYTHON, "-m", "auditgate.cli.consume", "--nats-url", nats_url, "--stream", STREAM]
    argv += ["--subject", subject, "--durable", durable, "--to", to, "--fetch-wait", "0.2"]
    return spawn(argv, clean_env({}), workdir, workdir / f"consume-{durable}.log")


def check_store(store: str, answers: list[dict[str, Any]], workdir: Path) -> list[str]:
    """Failures of reading ``answers`` back from ``store`` with the SDK (empty: all good)."""
    from openai import OpenAI

    port = free_port()
    argv = [PYTHON, "-m", "auditgate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / f"serve-{port}.log"
    gateway = spawn(argv, clean_env({"AUDITGATE_STORE_URL": store}), workdir, log)
    failures = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused") as client:
            listed = {c.id for c in client.chat.completions.list(limit=100).data}
            for answer in answers:
                rid = answer["response"]["id"]
                stored = client.chat.completions.retrieve(rid)
                messages = client.chat.completions.messages.list(rid, order="asc").data
                want = [c["message"].get("content") for c in answer["response"]["choices"]]
                if [c.message.content for c in stored.choices] != want:
                    failures.append(f"{rid}: content differs from Dynamo's answer")
                sent = [m["content"] for m in answer["request"]["messages"]]
                if [m.content for m in messages] != sent:
                    failures.append(f"{rid}: messages differ from the request")
                if rid not in listed:
                    failures.append(f"{rid}: not listed")
    finally:
        stop_process(gateway)
    return failures


async def wait_rows(store: str, count: int, timeout_s: float = 60.0) -> int:
    """Rows in ``store`` once there are ``count`` (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    rows = 0
    while time.monotonic() < deadline:
        rows = await _rows(store)
        if rows >= count:
            break
        await asyncio.sleep(0.2)
    return rows


def _sqlite_rows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return int(db.execute("SELECT count(*) FROM completions").fetchone()[0])
        except sqlite3.OperationalError:  # the table appears with the consumer's first write
            return 0


async def _rows(store: str) -> int:
    if store.startswith("sqlite:///"):
        return await asyncio.to_thread(_sqlite_rows, Path(store.removeprefix("sqlite:///")))
    import asyncpg

    conn = await asyncpg.connect(store)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM completions"))
    except asyncpg.UndefinedTableError:  # the table appears with the consumer's first write
        return 0
    finally:
        await conn.close()


async def pg_database(name: str, *, drop: bool = False) -> str:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(
            f'DROP DATABASE IF EXISTS "{name}"' if drop else f'CREATE DATABASE "{name}"'
        )
    finally:
        await admin.close()
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


def live(version: str) -> list[str]:
    """Run the live check of one version; its failures."""
    env_dir = install_dynamo(version)
    python = str(env_dir / "bin" / "python")
    workdir = Path(tempfile.mkdtemp(prefix=f"dynamo-live-{version}-"))
    files = workdir / "files"
    files.mkdir()
    database = f"ag_live_{uuid.uuid4().hex[:10]}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        nats_proc, nats_url = _nats_server(workdir)
        processes.append(nats_proc)
        asyncio.run(make_stream(nats_url))
        subject = SUBJECTS[0] if version.startswith("0.") else SUBJECTS[1]
        targets = [f"sqlite:///{workdir / 'dynamo.db'}", asyncio.run(pg_database(database))]
        for i, target in enumerate(targets):
            processes.append(consumer(nats_url, subject, f"live{i}", target, workdir))
        base = {
            "HF_HUB_OFFLINE": "1",
            "DYN_FILE_KV": str(workdir / "kv"),
            "TMPDIR": str(workdir),
            "HOME": str(workdir),
            "NATS_SERVER": nats_url,
            **({"DYN_REQUEST_PLANE": "tcp"} if version.startswith("0.") else {}),
        }
        mocker_args = ["--model-path", str(model_dir(env_dir)), "--model-name", MODEL]
        mocker_args += ["--speedup-ratio", "1000000", *plane_args(version)]
        mock_log = workdir / "mocker.log"
        mocker_env = clean_env(base | audit_env(version, files))
        mocker = spawn([python, "-m", "dynamo.mocker", *mocker_args], mocker_env, workdir, mock_log)
        processes.append(mocker)
        answers: list[dict[str, Any]] = []
        for phase in phases(version)[:1]:
            env = base | audit_env(version, files) | phase.env(files)
            log = workdir / "frontend.log"
            answers += run_frontend(python, env, workdir, log, mocker, mock_log, phase)
        audited = [a for a in answers if a["request"].get("store") or version[0] != "0"]
        tools = 3 if version[0] != "0" else 0
        answered = [a for a in audited if not a.get("abandoned")]
        failures = []
        for target in targets:
            rows = asyncio.run(wait_rows(target, len(audited) + tools))
            if rows != len(audited) + tools:
                failures.append(f"{target}: {rows} rows, expected {len(audited) + tools}")
            failures += [f"{target}: {f}" for f in check_store(target, answered, workdir)]
        return failures
    finally:
        for proc in reversed(processes):
            stop_process(proc)
        asyncio.run(pg_database(database, drop=True))
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="Dynamo versions, e.g. 0.7.1 1.6.1")
    args = parser.parse_args(argv)
    failed = False
    for version in args.versions:
        failures = live(version)
        for failure in failures:
            print(f"FAIL {version}: {failure}")
        print(f"{version}: {'FAILED' if failures else 'ok'} (SQLite and PostgreSQL)")
        failed = failed or bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
