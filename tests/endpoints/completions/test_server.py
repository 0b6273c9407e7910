"""Legacy completions through the real HTTP server, driven by the official openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import openai
import pytest

from auditgate.audit.record import AuditRecord
from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import FakeUpstream, upstream_in_thread
from tests.support.upstream_legacy import text_completion, text_stream_chunks

STORE = {"store": True}
STORED = {"store": True, "metadata": {"team": "a"}}


@pytest.fixture
def gw() -> Iterator[TestGateway]:
    with gateway() as g:
        yield g


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def dump(model: Any) -> dict[str, Any]:
    """An SDK model as the JSON the server sent."""
    return json.loads(model.model_dump_json(exclude_unset=True))


def merged(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client makes of the chunks it received: per choice, texts and logprob lists
    joined, the last finish reason; top-level fields of the first chunk, usage of the last
    that has one.  (Written independently of the gateway's aggregator, as a client would.)"""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            into = choices.setdefault(
                c["index"],
                {"text": "", "index": c["index"], "logprobs": None, "finish_reason": None},
            )
            into["text"] += c["text"]
            if c.get("logprobs") is not None:
                if into["logprobs"] is None:
                    into["logprobs"] = {k: [] for k in c["logprobs"]}
                for key, values in c["logprobs"].items():
                    into["logprobs"][key] += values
            into["finish_reason"] = c["finish_reason"] or into["finish_reason"]
    first = chunks[0]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    return {
        **{k: first[k] for k in ("id", "created", "model", "system_fingerprint") if k in first},
        "object": "text_completion",
        "choices": [choices[i] for i in sorted(choices)],
        "usage": usage[-1] if usage else None,
    }


def raw(record: AuditRecord) -> dict[str, Any]:
    """The record as its JSON."""
    return msgspec.to_builtins(record)  # type: ignore[no-any-return]


def test_non_stream_store_true_records_what_the_client_received(gw: TestGateway) -> None:
    """A stored completion with two prompts, n=2, echo and logprobs: the record holds the body
    as sent and exactly the text_completion the SDK parsed."""
    sent = {
        "model": "mock",
        "prompt": ["Once upon a time", "The gateway"],
        "n": 2,
        "echo": True,
        "logprobs": 2,
        "max_tokens": 6,
    }
    response = client(gw).completions.with_raw_response.create(**sent, extra_body=STORED)  # type: ignore[arg-type]
    completion = response.parse()
    [record] = gw.records(1)
    assert record.request == {**sent, **STORED}
    assert record.response == dump(completion)
    assert (record.mode, record.endpoint, record.status, record.complete) == (
        "full",
        "completions",
        "completed",
        True,
    )
    assert record.requested_streaming is False
    assert record.usage == dump(completion.usage)
    assert record.metadata == {"team": "a"}
    assert completion.id == "cmpl-" + record.request_id
    assert response.headers["x-request-id"] == record.request_id
    assert completion.object == "text_completion"
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    for choice in completion.choices:
        prompt = sent["prompt"][choice.index // 2]  # type: ignore[index]
        assert choice.text.startswith(prompt)
        assert choice.logprobs is not None
        assert "".join(choice.logprobs.tokens or []) == choice.text
        assert (choice.logprobs.token_logprobs or [0.0])[0] is None  # the echoed first token


def test_stream_record_is_the_aggregate_of_what_the_client_received(gw: TestGateway) -> None:
    """A stored stream with n=2 and usage: the record's response is the per-choice aggregate
    of the chunks the SDK received, with their usage."""
    stream = client(gw).completions.create(
        model="mock",
        prompt="Tell me a story",
        n=2,
        logprobs=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=STORE,
    )
    chunks = [dump(chunk) for chunk in stream]
    [record] = gw.records(1)
    assert record.response == merged(chunks)
    assert record.requested_streaming is True
    assert record.usage == chunks[-1]["usage"]
    assert {c["id"] for c in chunks} == {"cmpl-" + record.request_id}
    assert record.response["choices"][0]["finish_reason"] in ("stop", "length")  # type: ignore[index]


def test_stream_without_usage_asked_still_records_usage(gw: TestGateway) -> None:
    """The gateway asks the engine for usage and strips it from a client that did not."""
    chunks = [
        dump(c)
        for c in client(gw).completions.create(
            model="mock", prompt="Hello", stream=True, extra_body=STORE
        )
    ]
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    [record] = gw.records(1)
    assert record.usage is not None and record.usage["completion_tokens"] > 0
    assert record.response == merged(chunks)


def test_stream_equals_non_stream_for_the_same_request(gw: TestGateway) -> None:
    """Same prompt, stream or not: the same texts, finish reasons and logprobs."""
    body: dict[str, Any] = {"model": "mock", "prompt": "Same", "n": 2, "logprobs": 3, "seed": 7}
    whole = dump(client(gw).completions.create(**body))
    streamed = merged([dump(c) for c in client(gw).completions.create(**body, stream=True)])
    assert streamed["choices"] == whole["choices"]


def test_token_prompts_are_accepted(gw: TestGateway) -> None:
    """A prompt of token ids, and a list of token-id lists, gets one set of choices each."""
    one = client(gw).completions.create(model="mock", prompt=[1, 2, 3], max_tokens=3)
    assert [c.index for c in one.choices] == [0]
    two = client(gw).completions.create(model="mock", prompt=[[1, 2], [3]], max_tokens=3)
    assert [c.index for c in two.choices] == [0, 1]
    assert one.usage is not None and one.usage.prompt_tokens == 3


def test_without_store_a_usage_only_record(gw: TestGateway) -> None:
    """No store: a usage_only record with the endpoint and usage, no request or response."""
    completion = client(gw).completions.create(model="mock", prompt="Hi", max_tokens=4)
    [record] = gw.records(1)
    assert (record.mode, record.endpoint) == ("usage_only", "completions")
    assert record.usage == dump(completion.usage)
    assert "request" not in raw(record) and "response" not in raw(record)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mock"}, "prompt"),
        ({"model": "mock", "prompt": []}, "prompt"),
        ({"model": "mock", "prompt": [1, "a"]}, "prompt"),
        ({"model": "mock", "prompt": "x", "n": 0}, "n"),
        ({"model": "mock", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model": "mock", "prompt": "x", "logprobs": 9}, "logprobs"),
        ({"model": "mock", "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": "mock", "prompt": "x", "stream_options": {"include_usage": True}}, None),
        ({"model": "mock", "prompt": "x", "n": 2, "best_of": 1}, "best_of"),
        ({"model": "mock", "prompt": "x", "metadata": {"k": "v" * 600}}, "metadata"),
    ],
)
def test_bad_input_is_an_openai_400(
    gw: TestGateway, body: dict[str, Any], param: str | None
) -> None:
    """Every malformed body is a 400 in OpenAI's error shape, naming the parameter."""
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).post("/completions", body=body, cast_to=dict)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"] == "stream_options"


def test_unknown_model_is_404_and_an_error_record(gw: TestGateway) -> None:
    """The engine's refusal reaches the client and the record."""
    with pytest.raises(openai.NotFoundError):
        client(gw).completions.create(model="nope", prompt="x", extra_body=STORE)
    [record] = gw.records(1)
    assert (record.status, record.complete, record.endpoint) == ("error", False, "completions")
    assert record.error is not None and record.error.status_code == 404


def test_capture_settings_apply() -> None:
    """Force logging, redaction, header capture and integrity hold for completions too."""
    env = audit_env(
        DYN_AUDIT_FORCE_LOGGING="1",
        DYN_AUDIT_REDACT="email",
        DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST="x-team",
        DYN_AUDIT_INTEGRITY="1",
    )
    with gateway(env) as g:
        client(g).completions.create(
            model="mock",
            prompt="Write to alice@example.com",
            max_tokens=3,
            extra_headers={"X-Team": "blue"},
        )
        [record] = g.records(1)
    assert record.mode == "full"
    assert record.request is not None
    assert record.request["prompt"] == "Write to [REDACTED:email]"  # type: ignore[index]
    assert record.http_request_headers == {"x-team": "blue"}
    assert record.integrity is not msgspec.UNSET


def test_sampling_keeps_stored_completions() -> None:
    """Sample rate 0 drops usage_only records, never store: true ones."""
    with gateway(audit_env(DYN_AUDIT_SAMPLE_RATE="0")) as g:
        client(g).completions.create(model="mock", prompt="a", max_tokens=2)
        client(g).completions.create(model="mock", prompt="b", max_tokens=2, extra_body=STORE)
        [record] = g.records(1)
    assert record.mode == "full"
    assert record.request is not None and record.request["prompt"] == "b"  # type: ignore[index]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with upstream_in_thread() as u:
        yield u


def upstream_env(upstream: FakeUpstream) -> dict[str, str]:
    return audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=upstream.base_url)


def test_forwarded_to_the_upstream(upstream: FakeUpstream) -> None:
    """In front of an upstream the body goes to its /completions as sent; the client gets the
    upstream's completion under the gateway's id, and the record holds exactly that."""
    sent = {"model": "fake-model", "prompt": ["a b", "c"], "n": 2, "suffix": "end"}
    with gateway(upstream_env(upstream)) as g:
        completion = client(g).completions.create(**sent, extra_body=STORE)  # type: ignore[arg-type]
        [record] = g.records(1)
    [received] = [r for r in upstream.received if r.method == "POST"]
    assert received.path == "/v1/completions"
    assert received.json() == {**sent, **STORE}
    expected = {**text_completion(received.json()), "id": "cmpl-" + record.request_id}
    assert dump(completion) == expected
    assert record.response == expected
    assert record.engine_response_id == "cmpl-fake"
    assert record.engine == "openai"


def test_stream_forwarded_to_the_upstream(upstream: FakeUpstream) -> None:
    """A stream relayed from the upstream: the client gets its chunks (usage stripped, as it
    did not ask); the record is their aggregate, with the usage the gateway asked for."""
    sent = {"model": "fake-model", "prompt": "one two", "n": 2, "stream": True}
    with gateway(upstream_env(upstream)) as g:
        chunks = [dump(c) for c in client(g).completions.create(**sent, extra_body=STORE)]  # type: ignore[call-overload]
        [record] = g.records(1)
    [received] = [r for r in upstream.received if r.method == "POST"]
    assert received.path == "/v1/completions"
    assert received.json()["stream_options"] == {"include_usage": True}
    upstream_chunks = text_stream_chunks(received.json())
    rid = "cmpl-" + record.request_id
    assert chunks == [{**c, "id": rid} for c in upstream_chunks if c["choices"]]
    assert record.response == merged(chunks)
    assert record.usage == upstream_chunks[-1]["usage"]


def test_keys_and_tenants_apply(tmp_path: Any) -> None:
    """With API keys, both endpoints need one, and their records carry the key's tenant; with
    redaction on, the key a client repeats in its prompt never reaches a record (as for chat);
    stored legacy completions and embeddings are not chat completions: neither listed nor
    served by id."""
    from auditgate.auth.keys import add_key

    path = str(tmp_path / "keys.json")
    key = add_key(path, name="a", tenant="team-a", role="user")
    env = audit_env(
        AUDITGATE_API_KEYS_FILE=path,
        DYN_AUDIT_REDACT="email",
        DYN_AUDIT_SINKS="sqlite",
        DYN_AUDIT_SQLITE_PATH=str(tmp_path / "store.db"),
    )
    with gateway(env, configured_sinks=True) as g:
        anonymous = openai.OpenAI(base_url=g.base_url, api_key="ag-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.completions.create(model="mock", prompt="x")
        with pytest.raises(openai.AuthenticationError):
            anonymous.embeddings.create(model="mock", input="x")
        sdk = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
        sdk.completions.create(model="mock", prompt=f"my key is {key}", extra_body=STORE)
        sdk.embeddings.create(model="mock", input="x", extra_body=STORE)
        chat = sdk.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], store=True
        )
        records = g.records(3)
        assert [(r.endpoint, r.tenant) for r in records] == [
            ("completions", "team-a"),
            ("embeddings", "team-a"),
            ("chat.completions", "team-a"),
        ]
        assert all(key.encode() not in line for line in g.sink.lines)
        deadline = time.monotonic() + 10
        while not (listed := [c.id for c in sdk.chat.completions.list()]):
            assert time.monotonic() < deadline, "the store did not catch up"
            time.sleep(0.01)
        assert listed == [chat.id]  # written after the other two, which are not listed
        # Nor served by id (the store's response id of an embeddings record is chatcmpl-<id>).
        legacy, embedded = records[0], records[1]
        for unlisted in ("cmpl-" + legacy.request_id, "chatcmpl-" + embedded.request_id):
            with pytest.raises(openai.NotFoundError):
                sdk.chat.completions.retrieve(unlisted)
            with pytest.raises(openai.NotFoundError):
                sdk.chat.completions.delete(unlisted)
        assert sdk.chat.completions.retrieve(chat.id).id == chat.id
