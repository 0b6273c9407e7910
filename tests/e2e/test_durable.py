"""Durable mode through real gateway processes: SIGKILL, sink outages, a full spool, a damaged one.

The promise under test (DESIGN §6): a client that received a complete answer (the whole
non-stream body, or a stream's ``[DONE]``) has its record in the sink exactly once, whatever
happened to the gateway or the sink; and no ``store: true`` request is ever answered 200 without
its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import msgspec
import nats
import pytest

from auditgate.audit.spool.frames import parse_frames
from auditgate.audit.spool.segments import wait_for_old_writer
from tests.e2e.test_outages import N, run_with_outage
from tests.server.test_lifecycle import metric
from tests.support.gateway import Gateway, start_gateway
from tests.support.nats import NatsServer, private_nats
from tests.support.postgres import PgCluster, pg_cluster


class Target:
    """A sink under test: its gateway settings, and the request ids it stored (repeats kept)."""

    def __init__(self, env: dict[str, str], stored: Callable[[], list[str]]) -> None:
        self.env = env
        self.stored = stored


def _nats_ids(url: str, stream: str, subject: str) -> list[str]:
    async def read() -> list[str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                total = (await js.stream_info(stream)).state.messages
            except nats.js.errors.NotFoundError:
                return []
            sub = await js.pull_subscribe(subject, stream=stream)
            out: list[str] = []
            while len(out) < total:
                for msg in await sub.fetch(min(256, total - len(out)), timeout=5):
                    out.append(msgspec.json.decode(msg.data)["request_id"])
                    await msg.ack()
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def _pg_ids(dsn: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('completions') IS NOT NULL"):
                return []
            return [r[0] for r in await conn.fetch("SELECT request_id FROM completions")]
        finally:
            await conn.close()

    return asyncio.run(read())


def _sqlite_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("SELECT request_id FROM completions")]


@contextlib.contextmanager
def target(kind: str, tmp_path: Path) -> Iterator[tuple[Target, NatsServer | PgCluster | None]]:
    """A sink of ``kind`` with a private server (when it has one), and that server."""
    if kind == "sqlite":
        path = tmp_path / "audit.db"
        env = {"DYN_AUDIT_SINKS": "sqlite", "DYN_AUDIT_SQLITE_PATH": str(path)}
        yield Target(env, lambda: _sqlite_ids(path)), None
    elif kind == "postgres":
        with pg_cluster() as cluster:
            env = {"DYN_AUDIT_SINKS": "postgres", "DYN_AUDIT_POSTGRES_URL": cluster.dsn}
            yield Target(env, lambda: _pg_ids(cluster.dsn)), cluster
    else:
        with private_nats(tmp_path) as server:
            stream, subject = "DURABLE", "durable.audit"
            env = {
                "DYN_AUDIT_SINKS": "nats",
                "DYN_AUDIT_NATS_URL": server.url,
                "DYN_AUDIT_NATS_STREAM": stream,
                "DYN_AUDIT_NATS_SUBJECT": subject,
            }
            yield Target(env, lambda: _nats_ids(server.url, stream, subject)), server


def durable_env(tmp_path: Path, sink: Target, **extra: str) -> dict[str, str]:
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_DURABILITY": "durable",
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        **sink.env,
        **extra,
    }


def body(i: int, stream: bool) -> dict[str, object]:
    return {
        "model": "mock",
        "messages": [{"role": "user", "content": f"durable {i}"}],
        "store": True,
        "stream": stream,
    }


async def _one(client: httpx.AsyncClient, i: int) -> tuple[str, bool] | None:
    """Send request ``i``; (request id, whether the client got a complete answer)."""
    stream = i % 2 == 1
    try:
        if not stream:
            r = await client.post("/chat/completions", json=body(i, False))
            return r.headers["x-request-id"], r.status_code == 200 and "choices" in r.json()
        async with client.stream("POST", "/chat/completions", json=body(i, True)) as r:
            done = False
            async for line in r.aiter_lines():
                done = done or line == "data: [DONE]"
            return r.headers["x-request-id"], r.status_code == 200 and done
    except (httpx.HTTPError, ValueError):
        return None  # connection died: no answer, or a partial one


def load_until_killed(gateway: Gateway, kill_after: int) -> list[tuple[str, bool]]:
    """16 concurrent clients of store:true requests; SIGKILL once ``kill_after`` completed."""
    outcomes: list[tuple[str, bool]] = []

    async def run() -> None:
        counter = iter(range(1_000_000))
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:

            async def worker() -> None:
                while gateway.process.poll() is None:
                    outcome = await _one(client, next(counter))
                    if outcome is not None:
                        outcomes.append(outcome)
                    if (
                        sum(ok for _, ok in outcomes) >= kill_after
                        and gateway.process.poll() is None
                    ):
                        gateway.process.send_signal(signal.SIGKILL)

            await asyncio.gather(*(worker() for _ in range(16)))

    asyncio.run(run())
    gateway.process.wait(10)
    return outcomes


def wait_for(stored: Callable[[], list[str]], wanted: set[str], timeout: float = 60.0) -> list[str]:
    """Poll the sink until it holds every id in ``wanted``; returns what it holds."""
    deadline = time.monotonic() + timeout
    while True:
        ids = stored()
        if wanted <= set(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "nats"])
def test_sigkill_mid_load_loses_no_answered_record(tmp_path: Path, kind: str) -> None:
    """Every request answered completely before a SIGKILL has exactly one record after restart."""
    with target(kind, tmp_path) as (sink, _):
        env = durable_env(tmp_path, sink, AUDITGATE_MOCK_ITL_MS="1")
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            outcomes = load_until_killed(gateway, kill_after=150)
        finally:
            if gateway.process.poll() is None:  # the load failed before the kill: no leftover
                gateway.process.kill()
                gateway.process.wait(10)
        assert gateway.process.returncode == -signal.SIGKILL
        answered = {rid for rid, ok in outcomes if ok}
        assert len(answered) >= 150
        restarted = start_gateway(env, log_dir=tmp_path)
        try:
            ids = wait_for(sink.stored, answered)
            counts = Counter(ids)
            assert answered - set(counts) == set()
            assert [rid for rid, n in counts.items() if n > 1] == []
            # Anything else is one of the (at most 16) requests in flight at the kill.
            assert len(set(counts) - {rid for rid, _ in outcomes}) <= 16
        finally:
            assert restarted.stop() == 0


@pytest.mark.parametrize("kind", ["postgres", "nats"])
def test_sink_outage_under_load_loses_nothing(tmp_path: Path, kind: str) -> None:
    """The sink's server down for 2 s mid-load: every request is 200 and all N records arrive."""
    with target(kind, tmp_path) as (sink, server):
        assert server is not None
        gateway = start_gateway(durable_env(tmp_path, sink), log_dir=tmp_path)
        try:
            if isinstance(server, NatsServer):
                statuses = run_with_outage(gateway, server.stop, server.start)
            else:
                statuses = run_with_outage(gateway, lambda: server.stop("immediate"), server.start)
            assert statuses == [200] * N
            deadline = time.monotonic() + 60
            while len(ids := sink.stored()) < N and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (len(ids), len(set(ids))) == (N, N)
            text = gateway.metrics()
            assert metric(text, "auditgate_audit_sink_errors_total", sink=kind) >= 1
            assert metric(text, "auditgate_audit_queue_depth", sink=kind) == 0
            assert metric(text, "auditgate_audit_spool_oldest_undelivered_seconds", sink=kind) == 0
        finally:
            assert gateway.stop() == 0


def test_full_spool_answers_503_never_200_unaudited_and_recovers(tmp_path: Path) -> None:
    """Sink down, spool full: store:true gets 503 audit_spool_full; after the sink returns, 200s."""
    with target("nats", tmp_path) as (sink, server):
        assert isinstance(server, NatsServer)
        env = durable_env(tmp_path, sink, DYN_AUDIT_SPOOL_MAX_BYTES="20000")
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            server.stop()
            ok: list[str] = []
            refused: list[dict[str, object]] = []
            with httpx.Client(base_url=gateway.base_url, timeout=20) as client:
                i = 0
                while len(refused) < 6 and i < 500:
                    r = client.post("/chat/completions", json=body(i, stream=i % 2 == 1))
                    if r.status_code == 200:
                        ok.append(r.headers["x-request-id"])
                    else:
                        assert r.status_code == 503
                        refused.append(r.json())
                    i += 1
                assert refused[0] == {
                    "error": {
                        "message": "The audit spool is full, so this request, which asks to be "
                        "stored, cannot be audited right now; retry later.",
                        "type": "server_error",
                        "param": None,
                        "code": "audit_spool_full",
                    }
                }
                text = gateway.metrics()
                assert metric(text, "auditgate_audit_spool_bytes") >= 20000
                assert metric(text, "auditgate_audit_spool_rejected_total") == len(refused)
                assert (
                    metric(text, "auditgate_audit_spool_oldest_undelivered_seconds", sink="nats")
                    > 0
                )
                server.start()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    r = client.post("/chat/completions", json=body(i, stream=i % 2 == 1))
                    i += 1
                    if r.status_code == 200:
                        ok.append(r.headers["x-request-id"])
                        break
                    time.sleep(0.2)
                else:
                    raise AssertionError(f"no 200 after the sink came back:\n{gateway.log()}")
            ids = wait_for(sink.stored, set(ok))
            assert sorted(ids) == sorted(ok)  # every 200 stored once, nothing for the 503s
        finally:
            assert gateway.stop() == 0


def test_damaged_spool_is_cut_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    """A flipped byte in one segment and a torn last frame in the next: both cut, the rest kept."""
    with target("nats", tmp_path) as (sink, server):
        assert isinstance(server, NatsServer)
        env = durable_env(tmp_path, sink)
        server.stop()  # nothing is delivered: every record stays in the spool
        sent: list[list[str]] = []
        for _ in range(2):  # two starts: two segments
            gateway = start_gateway(env, log_dir=tmp_path)
            with httpx.Client(base_url=gateway.base_url, timeout=20) as client:
                sent.append(
                    [
                        client.post("/chat/completions", json=body(i, False)).headers[
                            "x-request-id"
                        ]
                        for i in range(5)
                    ]
                )
            gateway.stop(signal.SIGKILL)
            # Its writer stores what it received and seals the segment (cuts the zeros ahead
            # of its records) before it exits: only then does a segment end at its last frame.
            wait_for_old_writer(tmp_path / "spool")
        first, second = sorted((tmp_path / "spool").glob("*.seg"))
        frames = parse_frames(first.read_bytes(), 0, 0, 100)[0]
        assert len(frames) == 5
        data = bytearray(first.read_bytes())
        data[frames[2].start.offset + 30] ^= 0x01  # inside record 2's frame
        first.write_bytes(bytes(data))
        with second.open("r+b") as f:
            f.truncate(second.stat().st_size - 7)
        server.start()
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            expected = sent[0][:2] + sent[1][:4]
            ids = wait_for(sink.stored, set(expected))
            assert sorted(ids) == sorted(expected)
            text = gateway.metrics()
            assert metric(text, "auditgate_audit_spool_corrupt_tails_total") == 2
            assert metric(text, "auditgate_audit_spool_replayed_total", sink="nats") == 6
            log = gateway.log()
            assert ("checksum mismatch" in log, "torn frame" in log) == (True, True)
        finally:
            assert gateway.stop() == 0
