"""A durable spool on a volume that fills up: requests get 503s, never unaudited answers, and
the spool recovers by itself once its sink is back — also across restarts (DESIGN §6).

The volume is a real 4 MiB tmpfs and ``DYN_AUDIT_SPOOL_MAX_BYTES`` is far above it, so the
spool never thinks itself full: the disk runs out first (ENOSPC), as it does for an operator who
sized the bound for a bigger disk.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e.test_durable import _one, _pg_ids, body, wait_for
from tests.support.gateway import Gateway, start_gateway
from tests.support.postgres import pg_cluster
from tests.support.volume import small_volume

RECOVERY_S = 60.0
"""How long the spool may take to accept records again once the sink is back."""


def fill(gateway: Gateway, refusals: int) -> tuple[list[str], list[str]]:
    """Eight concurrent clients of store:true requests until ``refusals`` were refused or
    broken off (the disk is full); (answered request ids, every request id)."""
    answered: list[str] = []
    sent: list[str] = []
    failed = 0

    async def run() -> None:
        counter = iter(range(1_000_000))
        deadline = time.monotonic() + 180
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:

            async def worker() -> None:
                nonlocal failed
                while failed < refusals and time.monotonic() < deadline:
                    outcome = await _one(client, next(counter))
                    assert outcome is not None, gateway.log()
                    sent.append(outcome[0])
                    if outcome[1]:
                        answered.append(outcome[0])
                    else:
                        failed += 1

            await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(run())
    assert failed >= refusals, f"the volume never filled up:\n{gateway.log()}"
    return answered, sent


def first_answer(gateway: Gateway, timeout: float) -> tuple[list[str], list[str], float]:
    """Send a store:true request every 0.2 s until one is answered (200) or ``timeout``
    passed; (answered ids, every id sent, seconds it took).  Refusals must be 503s."""
    sent: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=gateway.base_url, timeout=20) as client:
        while time.monotonic() - started < timeout:
            r = client.post("/chat/completions", json=body(len(sent), stream=False))
            sent.append(r.headers["x-request-id"])
            if r.status_code == 200:
                return [sent[-1]], sent, time.monotonic() - started
            assert (r.status_code, r.json()["error"]["code"]) == (503, "audit_spool_unavailable")
            time.sleep(0.2)
    raise AssertionError(f"no store:true request answered {timeout}s after the sink came back")


def answer_all(gateway: Gateway, count: int) -> list[str]:
    """``count`` store:true requests, alternately streamed, each of which must be answered."""

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:
            return [outcome for i in range(count) if (outcome := await _answered(client, i))]

    async def _answered(client: httpx.AsyncClient, i: int) -> str:
        outcome = await _one(client, i)
        assert outcome is not None and outcome[1], gateway.log()
        return outcome[0]

    return asyncio.run(run())


def test_a_spool_on_a_full_volume_recovers_once_its_sink_is_back(tmp_path: Path) -> None:
    """PostgreSQL down until a 4 MiB spool volume is full (503s), a restart on the full volume,
    PostgreSQL back: store:true requests are answered again within a bounded time, every
    answered record is stored exactly once, a second restart serves at once, and no empty
    segment is left behind."""
    with small_volume(tmp_path / "volume", "4m") as volume, pg_cluster() as cluster:
        spool = volume / "spool"
        env = {
            "DYN_AUDIT_ENABLED": "1",
            "DYN_AUDIT_DURABILITY": "durable",
            "DYN_AUDIT_SPOOL_DIR": str(spool),
            "DYN_AUDIT_SPOOL_MAX_BYTES": str(64 << 20),
            "DYN_AUDIT_SINKS": "postgres",
            "DYN_AUDIT_POSTGRES_URL": cluster.dsn,
            "AUDITGATE_DRAIN_TIMEOUT": "1",
        }
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            cluster.stop("immediate")
            answered, sent = fill(gateway, refusals=20)
        finally:
            assert gateway.stop() == 0
        assert len(answered) > 500  # a few MiB of records went in before the disk was full
        gateway = start_gateway(env, log_dir=tmp_path)  # on the full volume, sink still down
        try:
            cluster.start()
            more, tried, _ = first_answer(gateway, RECOVERY_S)
            answered += more
            sent += tried
            answered += answer_all(gateway, 20)
            stored = wait_for(lambda: _pg_ids(cluster.dsn), set(answered))
            assert set(answered) - set(stored) == set()
        finally:
            assert gateway.stop() == 0
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            answered += answer_all(gateway, 20)
            stored = wait_for(lambda: _pg_ids(cluster.dsn), set(answered))
        finally:
            assert gateway.stop() == 0
        counts = Counter(stored)
        assert (set(answered) - set(counts), [i for i, n in counts.items() if n > 1]) == (set(), [])
        assert set(counts) <= set(sent) | set(answered)  # nothing but what was sent
        assert sorted(p.name for p in spool.glob("*.seg") if p.stat().st_size == 0) == []
