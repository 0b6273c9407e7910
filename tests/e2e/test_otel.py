"""`auditgate serve` with the otel sink, driven by the openai SDK, exporting to a real OTLP
receiver: records arrive over both protocols; a receiver that is down costs counted drops in
best effort and nothing in durable mode."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.server.test_lifecycle import metric
from tests.support.gateway import Gateway, free_port, running_gateway
from tests.support.otlp import otlp_receiver

SECRET = "sk-collector-secret"


def otel_env(protocol: str, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "otel",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{SECRET}",
        "OTEL_SERVICE_NAME": "gateway-under-test",
        **extra,
    }


def ask(gateway: Gateway, count: int) -> list[str]:
    """``count`` stored completions, alternating non-stream and stream; their ids."""
    ids = []
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        for i in range(count):
            messages = [{"role": "user", "content": f"question {i}"}]
            if i % 2 == 0:
                answer = client.chat.completions.create(
                    model="mock", messages=messages, store=True, max_tokens=8
                )
                ids.append(answer.id)
            else:
                chunks = list(
                    client.chat.completions.create(
                        model="mock", messages=messages, store=True, max_tokens=8, stream=True
                    )
                )
                ids.append(chunks[0].id)
    return ids


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_stored_completions_arrive_as_log_records(tmp_path: Path, protocol: str) -> None:
    """Each stored completion the SDK got is one LogRecord holding exactly that answer."""
    with otlp_receiver() as receiver:
        endpoint = (
            f"http://127.0.0.1:{receiver.http_port if protocol != 'grpc' else receiver.grpc_port}"
        )
        with running_gateway(otel_env(protocol, endpoint), log_dir=tmp_path) as gateway:
            with openai.OpenAI(base_url=gateway.base_url, api_key="unused") as client:
                messages = [{"role": "user", "content": "What is 10 + 10?"}]
                plain = client.chat.completions.create(model="mock", messages=messages, store=True)
                chunks = list(
                    client.chat.completions.create(
                        model="mock", messages=messages, store=True, stream=True
                    )
                )
            got = receiver.wait_for(2)
            log = gateway.log()
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    bodies = {g.json["response"]["id"]: g for g in got}
    assert {
        rid: (
            g.json["response"]["choices"][0]["message"]["content"],
            g.json["requested_streaming"],
            g.attributes["gen_ai.response.id"],
            g.attributes["auditgate.request_id"],
            g.resource["service.name"],
        )
        for rid, g in bodies.items()
    } == {
        plain.id: (
            plain.choices[0].message.content,
            False,
            plain.id,
            plain.id.removeprefix("chatcmpl-"),
            "gateway-under-test",
        ),
        chunks[0].id: (
            streamed,
            True,
            chunks[0].id,
            chunks[0].id.removeprefix("chatcmpl-"),
            "gateway-under-test",
        ),
    }
    assert {h.get("authorization") for h in receiver.headers} == {f"Bearer {SECRET}"}
    assert SECRET not in log


def test_a_receiver_that_is_down_costs_counted_drops_in_best_effort(tmp_path: Path) -> None:
    """Receiver down: requests are served, the otel queue overflows into counted, logged drops,
    and once it is up written + dropped == published and the receiver holds what was written."""
    port = free_port()
    env = otel_env("http/protobuf", f"http://127.0.0.1:{port}", DYN_AUDIT_CAPACITY="2")
    n = 10
    with running_gateway(env, log_dir=tmp_path) as gateway:
        ask(gateway, n)
        text = gateway.metrics()
        dropped = metric(text, "auditgate_audit_dropped_total", sink="otel", reason="queue_full")
        assert dropped >= n - 3  # two queued, at most one batch in flight
        assert metric(text, "auditgate_audit_sink_errors_total", sink="otel") >= 1
        with otlp_receiver(http_port=port) as receiver:
            written = wait_written(gateway, n - dropped)
            got = receiver.wait_for(int(written))
        log = gateway.log()
    assert (written + dropped, len(got)) == (n, written)
    assert "dropped" in log and "otel" in log


def test_durable_mode_replays_every_record_once_the_receiver_is_up(tmp_path: Path) -> None:
    """Durable mode: with the receiver down nothing is lost; it gets every record once up."""
    port = free_port()
    env = otel_env(
        "grpc",
        f"http://127.0.0.1:{port}",
        DYN_AUDIT_DURABILITY="durable",
        DYN_AUDIT_SPOOL_DIR=str(tmp_path / "spool"),
        DYN_AUDIT_CAPACITY="2",
    )
    with running_gateway(env, log_dir=tmp_path) as gateway:
        ids = ask(gateway, 8)
        assert metric(gateway.metrics(), "auditgate_audit_sink_errors_total", sink="otel") >= 1
        with otlp_receiver(grpc_port=port) as receiver:
            got = receiver.wait_for(8)
            wait_written(gateway, 8)
        text = gateway.metrics()
    assert sorted(g.attributes["gen_ai.response.id"] for g in got) == sorted(ids)
    assert metric(text, "auditgate_audit_dropped_total", sink="otel", reason="queue_full") == 0


def wait_written(gateway: Gateway, count: float, timeout: float = 60.0) -> float:
    """``audit_written_total{sink="otel"}`` once it reached ``count``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = metric(gateway.metrics(), "auditgate_audit_written_total", sink="otel")
        if written >= count:
            return written
        time.sleep(0.1)
    raise AssertionError(gateway.metrics())
