"""The NATS JetStream sink against real servers: the shared one, and a private one for outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import nats
import nats.js.api
import pytest

from auditgate.audit.bus import AuditBus, Backoff
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope, decode_record
from auditgate.errors import ConfigError, SinkError
from auditgate.sinks.nats import NatsSink, redact_url, subject_matches
from tests.store.records import make_record, minimal_record, nul_record
from tests.support.nats import NatsServer


async def read_stream(url: str, stream: str, subject: str) -> list[tuple[bytes, str]]:
    """Every message of ``stream``: (payload, Nats-Msg-Id header), in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(subject, stream=stream)
        out: list[tuple[bytes, str]] = []
        while len(out) < total:
            for msg in await sub.fetch(min(256, total - len(out)), timeout=5):
                out.append((msg.data, (msg.headers or {}).get("Nats-Msg-Id", "")))
                await msg.ack()
        return out
    finally:
        await nc.close()


def envelopes(records: Sequence[AuditRecord]) -> list[Envelope]:
    return [Envelope(record) for record in records]


def sample_records() -> list[AuditRecord]:
    """Full ~4 KiB records, usage_only ones and records holding NUL characters."""
    return (
        [make_record(i) for i in range(20)]
        + [minimal_record(100 + i) for i in range(5)]
        + [nul_record(200 + i) for i in range(3)]
    )


async def test_round_trip_every_field(nats_url: str, nats_names: tuple[str, str]) -> None:
    """Records read back from the stream are the published ones, bytes and fields alike."""
    stream, subject = nats_names
    records = sample_records()
    sink = NatsSink(nats_url, subject, stream)
    await sink.open()
    try:
        await sink.write(envelopes(records[:10]))
        await sink.write(envelopes(records[10:]))
    finally:
        await sink.close()
    messages = await read_stream(nats_url, stream, subject)
    assert [Envelope(r).json for r in records] == [payload for payload, _ in messages]
    assert [r.request_id for r in records] == [msg_id for _, msg_id in messages]
    assert records == [decode_record(payload) for payload, _ in messages]


async def test_duplicate_batch_is_stored_once(nats_url: str, nats_names: tuple[str, str]) -> None:
    """The same batch written twice (a bus retry) leaves one message per record."""
    stream, subject = nats_names
    batch = envelopes([make_record(i) for i in range(30)])
    sink = NatsSink(nats_url, subject, stream)
    await sink.open()
    try:
        await sink.write(batch)
        await sink.write(batch)
        await sink.write(batch[5:12])
    finally:
        await sink.close()
    messages = await read_stream(nats_url, stream, subject)
    assert [e.request_id for e in batch] == [msg_id for _, msg_id in messages]


async def test_url_listing_several_servers_uses_one_that_is_up(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    """A comma list of servers (a cluster's nodes), the first one down, still connects."""
    from tests.support.gateway import free_port

    stream, subject = nats_names
    records = [make_record(i) for i in range(3)]
    sink = NatsSink(f"nats://127.0.0.1:{free_port()},{nats_url}", subject, stream)
    await sink.open()
    try:
        await sink.write(envelopes(records))
    finally:
        await sink.close()
    stored = await read_stream(nats_url, stream, subject)
    assert [(Envelope(r).json, r.request_id) for r in records] == stored


async def test_open_creates_the_stream(nats_url: str, nats_names: tuple[str, str]) -> None:
    """A missing stream is created capturing exactly the subject, on file storage, with a window."""
    stream, subject = nats_names
    sink = NatsSink(nats_url, subject, stream, duplicate_window_s=90.0)
    await sink.open()
    await sink.close()
    nc = await nats.connect(nats_url)
    try:
        config = (await nc.jetstream().stream_info(stream)).config
    finally:
        await nc.close()
    expected = ([subject], nats.js.api.StorageType.FILE, 90.0)
    assert expected == (config.subjects, config.storage, config.duplicate_window)


async def test_stream_with_other_subjects_is_a_config_error(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    """An existing stream that does not capture the subject stops startup with a clear error."""
    stream, subject = nats_names
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(name=stream, subjects=[subject + ".other"])
    finally:
        await nc.close()
    sink = NatsSink(nats_url, subject, stream)
    with pytest.raises(ConfigError) as caught:
        await sink.open()
    assert (
        f"NATS stream {stream!r} exists but does not capture subject {subject!r} "
        f"(its subjects: {subject}.other); use another stream name or subject"
    ) == str(caught.value)


async def test_existing_wildcard_stream_is_used(nats_url: str, nats_names: tuple[str, str]) -> None:
    """A stream whose wildcard subjects capture the subject is accepted as it is."""
    stream, subject = nats_names
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(name=stream, subjects=[subject.rsplit(".", 1)[0] + ".>"])
    finally:
        await nc.close()
    records = [make_record(i) for i in range(3)]
    sink = NatsSink(nats_url, subject, stream)
    await sink.open()
    try:
        await sink.write(envelopes(records))
    finally:
        await sink.close()
    messages = await read_stream(nats_url, stream, subject)
    assert records == [decode_record(payload) for payload, _ in messages]


async def test_subject_owned_by_another_stream_is_a_config_error(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    """Creating a stream for a subject another stream already captures is a startup error."""
    stream, subject = nats_names
    first = NatsSink(nats_url, subject, stream)
    await first.open()
    await first.close()
    second = NatsSink(nats_url, subject, stream + "_B")
    with pytest.raises(ConfigError) as caught:
        await second.open()
    assert str(caught.value).startswith(
        f"cannot create NATS stream {stream + '_B'!r} for subject {subject!r}: "
    )


@pytest.mark.parametrize(
    "url",
    ["", "http://127.0.0.1:4222", "nats://", "nats://127.0.0.1:notaport", "nats://a:4222,,"],
)
async def test_bad_url_is_a_config_error(url: str) -> None:
    """A URL that is not nats|tls|ws|wss://host[:port] fails open() before any connection."""
    sink = NatsSink(url, "a.b", "S")
    with pytest.raises(ConfigError):
        await sink.open()


@pytest.mark.parametrize(
    ("subject", "stream"), [("a.*", "S"), ("a..b", "S"), ("a b", "S"), ("a.b", "S.T"), ("a.b", "")]
)
async def test_bad_subject_or_stream_is_a_config_error(subject: str, stream: str) -> None:
    """Wildcard or malformed subjects and stream names fail open()."""
    sink = NatsSink("nats://127.0.0.1:4222", subject, stream)
    with pytest.raises(ConfigError):
        await sink.open()


def test_subject_matches() -> None:
    """Stream subject patterns match as NATS matches them."""
    cases = [
        ("a.b", "a.b"),
        ("a.*", "a.b"),
        ("a.>", "a.b.c"),
        ("a.*", "a.b.c"),
        ("a.>", "a"),
        ("a.b", "a.c"),
        (">", "x"),
    ]
    assert [subject_matches(p, s) for p, s in cases] == [
        True,
        True,
        True,
        False,
        False,
        False,
        True,
    ]


def test_redact_url() -> None:
    """Passwords and tokens never appear in a URL that is logged."""
    assert redact_url("nats://u:secret@h:4222,nats://h2") == "nats://<redacted>@h:4222,nats://h2"


async def test_down_at_start_then_up(tmp_path: Path) -> None:
    """A server down at start is no startup error; writes fail fast, then succeed once it is up."""
    server = NatsServer(tmp_path)
    sink = NatsSink(server.url, "audit.down", "DOWN", connect_timeout_s=0.5)
    started = time.monotonic()
    await sink.open()
    with pytest.raises(SinkError):
        await sink.write(envelopes([make_record(0)]))
    assert time.monotonic() - started < 5
    server.start()
    try:
        records = [make_record(i) for i in range(5)]
        await sink.write(envelopes(records))
        await sink.close()
        messages = await read_stream(server.url, "DOWN", "audit.down")
    finally:
        server.stop()
    assert records == [decode_record(payload) for payload, _ in messages]


async def test_deleted_stream_is_recreated(nats_url: str, nats_names: tuple[str, str]) -> None:
    """A stream deleted under a running sink: one write fails, the next re-creates it."""
    stream, subject = nats_names
    sink = NatsSink(nats_url, subject, stream, ack_timeout_s=2.0)
    await sink.open()
    try:
        await sink.write(envelopes([make_record(0)]))
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()
        records = [make_record(i) for i in range(1, 4)]
        with pytest.raises(SinkError):
            await sink.write(envelopes(records))
        await sink.write(envelopes(records))
    finally:
        await sink.close()
    messages = await read_stream(nats_url, stream, subject)
    assert records == [decode_record(payload) for payload, _ in messages]


def sample(metrics: AuditMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value("auditgate_" + name, labels)
    return 0.0 if value is None else value


async def test_outage_under_load_loses_nothing(tmp_path: Path) -> None:
    """NATS stopped for seconds under load: every record arrives once, errors counted, none lost."""
    server = NatsServer(tmp_path)
    server.start()
    try:
        metrics = AuditMetrics()
        sink = NatsSink(
            server.url, "audit.outage", "OUTAGE", ack_timeout_s=1.0, connect_timeout_s=1.0
        )
        bus = AuditBus(
            [sink], capacity=10_000, metrics=metrics, backoff=Backoff(initial_s=0.05, maximum_s=0.5)
        )
        await bus.start()
        records = [make_record(i) for i in range(600)]
        for record in records[:200]:
            bus.publish(Envelope(record))
            await asyncio.sleep(0.002)
        await asyncio.to_thread(server.stop)
        for record in records[200:400]:
            bus.publish(Envelope(record))
            await asyncio.sleep(0.01)
        await asyncio.to_thread(server.start)
        for record in records[400:]:
            bus.publish(Envelope(record))
            await asyncio.sleep(0.002)
        assert await bus.flush(timeout=30)
        assert await bus.close(timeout=5) == {"nats": 0}
        messages = await read_stream(server.url, "OUTAGE", "audit.outage")
    finally:
        server.stop()
    stored = sorted((decode_record(payload) for payload, _ in messages), key=lambda r: r.seq)
    assert records == stored
    written = sample(metrics, "audit_written_total", sink="nats")
    dropped = sum(
        sample(metrics, "audit_dropped_total", sink="nats", reason=reason)
        for reason in ("queue_full", "shutdown")
    )
    assert (written, dropped) == (600.0, 0.0)
    assert sample(metrics, "audit_sink_errors_total", sink="nats") >= 1
