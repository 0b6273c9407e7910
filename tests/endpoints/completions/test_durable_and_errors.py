"""Legacy completions and embeddings in durable mode and in front of a failing upstream: the
same guarantees as chat (a record durable before the end of the answer, a failed commit a 503;
upstream failures OpenAI-shaped and recorded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import Behaviour, FakeUpstream, upstream_in_thread


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test", max_retries=0)


def durable_env(tmp_path: Path) -> dict[str, str]:
    return audit_env(DYN_AUDIT_DURABILITY="durable", DYN_AUDIT_SPOOL_DIR=str(tmp_path / "spool"))


def block_segments(tmp_path: Path, count: int = 8) -> None:
    """Directories where the spool's next segment files would go: every write fails."""
    for segment in range(count):
        (tmp_path / "spool" / f"{segment:016d}.seg").mkdir()


def test_durable_records_for_every_endpoint(tmp_path: Path) -> None:
    """In durable mode each answer comes with its record spooled: stream, non-stream,
    embeddings."""
    with gateway(durable_env(tmp_path)) as g:
        sdk = client(g)
        streamed = list(
            sdk.completions.create(
                model="mock", prompt="a", stream=True, extra_body={"store": True}
            )
        )
        sdk.completions.create(model="mock", prompt="b", extra_body={"store": True})
        sdk.embeddings.create(model="mock", input="c")
        records = g.records(3)
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")
    assert [(r.endpoint, r.mode, r.complete) for r in records] == [
        ("completions", "full", True),
        ("completions", "full", True),
        ("embeddings", "usage_only", True),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_durable_commit_is_a_503(tmp_path: Path, stream: bool) -> None:
    """The spool cannot write: the client gets 503 audit_spool_unavailable, never an unaudited
    answer."""
    with gateway(durable_env(tmp_path)) as g:
        block_segments(tmp_path)
        with pytest.raises(openai.InternalServerError) as failed:
            result = client(g).completions.create(
                model="mock", prompt="x", stream=stream, extra_body={"store": True}
            )
            list(result) if stream else None  # type: ignore[call-overload]
        assert (failed.value.status_code, failed.value.code) == (503, "audit_spool_unavailable")
        with pytest.raises(openai.InternalServerError) as failed:
            client(g).embeddings.create(model="mock", input="x")
        assert failed.value.status_code == 503
        assert g.sink.records == []


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with upstream_in_thread() as u:
        yield u


def test_upstream_failures_are_openai_errors_and_error_records(upstream: FakeUpstream) -> None:
    """An upstream 500 is a 502 for the client and an error record, for both endpoints; an
    upstream 400 is relayed with its own message and param."""
    env = audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=upstream.base_url)
    with gateway(env) as g:
        sdk = client(g)
        upstream.behaviour = Behaviour.http_error(500, "engine exploded")
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.completions.create(model="fake-model", prompt="x", extra_body={"store": True})
        assert caught.value.status_code == 502 and "engine exploded" in caught.value.message
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.embeddings.create(model="fake-model", input="x")
        assert caught.value.status_code == 502
        upstream.behaviour = Behaviour.http_error(
            400, "prompt too long", error_type="invalid_request_error", param="prompt"
        )
        with pytest.raises(openai.BadRequestError) as rejected:
            sdk.completions.create(model="fake-model", prompt="x", stream=True)
        assert rejected.value.param == "prompt" and "prompt too long" in rejected.value.message
        records = g.records(3)
    assert [(r.endpoint, r.status, r.error.status_code) for r in records] == [  # type: ignore[union-attr]
        ("completions", "error", 502),
        ("embeddings", "error", 502),
        ("completions", "error", 400),
    ]


def test_stream_cut_by_the_upstream_is_recorded_partial(upstream: FakeUpstream) -> None:
    """The upstream drops the connection mid-stream: the client sees an in-stream error, the
    record holds what it received, incomplete."""
    env = audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=upstream.base_url)
    upstream.behaviour = Behaviour.drop(after=2)
    with gateway(env) as g:
        got: list[str] = []
        with pytest.raises(openai.APIError):
            for chunk in client(g).completions.create(
                model="fake-model", prompt="x", stream=True, extra_body={"store": True}
            ):
                got.extend(c.text for c in chunk.choices)
        [record] = g.records(1)
    assert (record.status, record.complete) == ("error", False)
    assert record.response is not None
    assert record.response["choices"][0]["text"] == "".join(got)  # type: ignore[index]
