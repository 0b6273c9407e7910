"""Gateways and consumers on a three-node NATS JetStream cluster survive the loss of a node:
a node killed mid-load (SIGKILL) and brought back costs no record and duplicates none."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import nats
import nats.js.api
import openai

from auditgate.store import record_from_row
from tests.support.gateway import Gateway, start_gateway
from tests.support.nats import start_consume
from tests.support.nats_cluster import NatsCluster, js_ready, nats_cluster

N = 240
STREAM, SUBJECT = "AGCLUSTER", "agcluster.audit"


def gateway_env(url: str, spool: Path) -> dict[str, str]:
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "nats",
        "DYN_AUDIT_NATS_URL": url,
        "DYN_AUDIT_NATS_STREAM": STREAM,
        "DYN_AUDIT_NATS_SUBJECT": SUBJECT,
        "DYN_AUDIT_DURABILITY": "durable",
        "DYN_AUDIT_SPOOL_DIR": str(spool),
    }


_clients = threading.local()


def ask(gateway: Gateway, i: int) -> str:
    """One ``store: true`` request (stream or not) with this thread's client for ``gateway``;
    the completion id the client got."""
    clients = _clients.__dict__.setdefault("by_port", {})
    client = clients.get(gateway.port)
    if client is None:
        client = clients[gateway.port] = openai.OpenAI(
            base_url=gateway.base_url, api_key="x", max_retries=0
        )
    messages = [{"role": "user", "content": f"request {i}"}]
    if i % 2:
        chunks = list(
            client.chat.completions.create(
                model="mock", messages=messages, store=True, stream=True, max_tokens=8
            )
        )
        return chunks[0].id
    return client.chat.completions.create(
        model="mock", messages=messages, store=True, max_tokens=8
    ).id


async def create_stream(url: str) -> None:
    """The stream, replicated on all three nodes (as an operator creates it)."""
    await js_ready(url)
    nc = await nats.connect(url.split(","))
    try:
        config = nats.js.api.StreamConfig(
            name=STREAM,
            subjects=[SUBJECT],
            storage=nats.js.api.StorageType.FILE,
            num_replicas=3,
            duplicate_window=120.0,
        )
        await nc.jetstream(timeout=10).add_stream(config)
    finally:
        await nc.close()


async def stream_state(url: str) -> tuple[str, int]:
    """(leader node, messages) of the stream."""
    nc = await nats.connect(url.split(","))
    try:
        info = await nc.jetstream(timeout=10).stream_info(STREAM)
        assert info.cluster is not None
        return str(info.cluster.leader), int(info.state.messages)
    finally:
        await nc.close()


async def stored_ids(dsn: str) -> list[str]:
    """The completion id of every row (one entry per row)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM completions")
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return [record_from_row(row).response["id"] for row in rows]  # type: ignore[index]


def kill_leader_mid_load(cluster: NatsCluster, answered: list[str], done: threading.Event) -> str:
    """Once a third of the load is answered, SIGKILL the stream's leader; start it again 3 s
    later.  Returns the node's name."""
    while len(answered) < N // 3 and not done.is_set():
        time.sleep(0.01)
    leader, _ = asyncio.run(stream_state(cluster.url))
    cluster.node(leader).kill()
    time.sleep(3.0)
    cluster.node(leader).start()
    return leader


async def test_a_node_killed_mid_load_loses_and_duplicates_nothing(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Two gateways (2 workers each) publish to an R3 stream and two consumers write PostgreSQL;
    the stream leader is SIGKILLed mid-load and restarted: every answered request is stored
    exactly once, in the stream and in the database."""
    with nats_cluster(tmp_path) as cluster:
        await create_stream(cluster.url)
        # The gateways list the nodes in different orders, so they start on different nodes.
        urls = [cluster.url, ",".join(reversed(cluster.url.split(",")))]
        gateways = [
            start_gateway(gateway_env(url, tmp_path / f"spool-{i}"), ["--workers", "2"],
                          log_dir=tmp_path)
            for i, url in enumerate(urls)
        ]  # fmt: skip
        consume_args = ["--nats-url", cluster.url, "--stream", STREAM, "--subject", SUBJECT,
                        "--durable", "pg", "--to", pg_dsn, "--batch", "32",
                        "--ack-wait", "5"]  # fmt: skip
        consumers = [start_consume(consume_args, log_dir=tmp_path, name=f"c{i}") for i in range(2)]
        answered: list[str] = []
        done = threading.Event()
        try:
            with ThreadPoolExecutor(9) as pool:
                killer = pool.submit(kill_leader_mid_load, cluster, answered, done)
                futures = [pool.submit(ask, gateways[i % 2], i) for i in range(N)]
                for future in futures:
                    answered.append(future.result())
                done.set()
                killed = killer.result()
            ids: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(ids) < N:
                await asyncio.sleep(0.2)
                ids = await stored_ids(pg_dsn)
            await asyncio.sleep(1.0)  # a late duplicate would land now
            ids = await stored_ids(pg_dsn)
            _, messages = await stream_state(cluster.url)
            for gateway in gateways:
                assert gateway.stop() == 0, gateway.log()
        finally:
            done.set()
            for gateway in gateways:
                if gateway.process.poll() is None:
                    gateway.stop()
            codes = [consumer.stop() for consumer in consumers]
        logs = "".join(g.log() for g in gateways)
    assert killed in {node.name for node in cluster.nodes}
    assert codes == [0, 0]
    assert (len(ids), sorted(ids)) == (N, sorted(answered)), logs[-4000:]
    assert messages == N
