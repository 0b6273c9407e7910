"""A bounded schemathesis run over the operations the gateway implements: no 5xx, no response
that the pinned specification does not allow.

Requests are generated from the specification itself (schemathesis, on Hypothesis), positive
(valid per the specification) and negative (invalid), a fixed number per operation, derandomized
so every run sends the same requests, to an in-process gateway on 127.0.0.1 (mock engine, SQLite
store).  Two substitutions, so valid requests reach the code behind the 404s: ``model`` is the
served ``mock``, and one pass per path parameter uses an id that exists.  Checks on every answer:
no 5xx; a documented status's body and content type conform (schemathesis's own checks); a 4xx
body is the specification's ``ErrorResponse``; every event of a stream is a chunk or an error
that conforms.  Statuses the specification does not list (OpenAI's 400s and 404s) are expected.
"""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
import time
from collections.abc import Iterator
from typing import Any, Final

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

import auditgate
import bench
from auditgate.config import Settings
from auditgate.sinks import build_sinks
from tests.conformance.spec import error_body_errors, errors, response_errors, spec
from tests.support.server import TestGateway, audit_env, gateway

POSITIVE: Final = GenerationMode.POSITIVE
NEGATIVE: Final = GenerationMode.NEGATIVE
KNOWN: Final = "known"
"""Marks a run whose path parameter is an id that exists."""
RUNS: Final = [
    # (method, path, generation mode or KNOWN, examples)
    ("POST", "/chat/completions", POSITIVE, 30),
    ("POST", "/chat/completions", NEGATIVE, 20),
    ("GET", "/chat/completions", POSITIVE, 15),
    ("GET", "/chat/completions", NEGATIVE, 10),
    ("GET", "/chat/completions/{completion_id}", POSITIVE, 10),
    ("GET", "/chat/completions/{completion_id}", KNOWN, 5),
    ("POST", "/chat/completions/{completion_id}", KNOWN, 15),
    ("POST", "/chat/completions/{completion_id}", NEGATIVE, 10),
    ("GET", "/chat/completions/{completion_id}/messages", KNOWN, 15),
    ("GET", "/chat/completions/{completion_id}/messages", NEGATIVE, 10),
    ("DELETE", "/chat/completions/{completion_id}", POSITIVE, 5),
    ("DELETE", "/chat/completions/{completion_id}", KNOWN, 3),
    ("GET", "/models", POSITIVE, 3),
    ("GET", "/models/{model}", POSITIVE, 5),
    ("GET", "/models/{model}", KNOWN, 3),
    ("POST", "/responses", POSITIVE, 30),
    ("POST", "/responses", NEGATIVE, 20),
    ("GET", "/responses/{response_id}", POSITIVE, 5),
    ("GET", "/responses/{response_id}", KNOWN, 5),
    ("GET", "/responses/{response_id}/input_items", KNOWN, 15),
    ("GET", "/responses/{response_id}/input_items", NEGATIVE, 10),
    ("DELETE", "/responses/{response_id}", POSITIVE, 5),
    ("DELETE", "/responses/{response_id}", KNOWN, 3),
    ("POST", "/completions", POSITIVE, 30),
    ("POST", "/completions", NEGATIVE, 20),
    ("POST", "/embeddings", POSITIVE, 20),
    ("POST", "/embeddings", NEGATIVE, 15),
]
CHECKS: Final = [not_a_server_error, response_schema_conformance, content_type_conformance]
SSE_EVENT: Final = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
"""A server-sent event as schemathesis parses one (see :func:`for_schemathesis`)."""


def for_schemathesis(doc: dict[str, Any]) -> dict[str, Any]:
    """The specification as schemathesis should read it.

    Under ``text/event-stream`` OpenAI's specification gives the schema of each event's JSON
    data (a chunk).  schemathesis reads a ``text/event-stream`` schema as that of each parsed
    event object (``{"data": "<text>", "event": "message"}``), so every stream would fail its
    check; it gets the event object's schema instead, and :func:`problems` validates each
    event's data against the published chunk schema."""
    doc = copy.deepcopy(doc)
    for path in ("/chat/completions", "/responses", "/completions"):
        # Legacy completions stream too, though the specification lists only their JSON.
        content = doc["paths"][path]["post"]["responses"]["200"]["content"]
        content["text/event-stream"] = {"schema": SSE_EVENT}
    return doc


@pytest.fixture(scope="module")
def api() -> Any:
    """The specification as a schemathesis schema (loaded once: it takes a second).

    Every module of the project (``auditgate``, ``bench``) is imported first: Hypothesis also
    draws literals it finds in the project's loaded modules, so without this the generated
    requests would depend on which tests ran before (derandomize fixes the seed, not that
    pool)."""
    for package in (auditgate, bench):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    return schemathesis.openapi.from_dict(for_schemathesis(spec()))


@pytest.fixture
def gw(workdir: str) -> Iterator[TestGateway]:
    """A mock gateway with an SQLite store."""
    env = audit_env(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db")
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        yield g


def stored_id(g: TestGateway, session: requests.Session) -> str:
    """The id of a stored completion, once the store lists it."""
    body = {"model": "mock", "store": True, "messages": [{"role": "user", "content": "Hi"}]}
    created = session.post(f"{g.base_url}/chat/completions", json=body, timeout=10).json()
    g.records(1)
    deadline = time.monotonic() + 10
    while not session.get(f"{g.base_url}/chat/completions", timeout=10).json()["data"]:
        assert time.monotonic() < deadline, "the store did not catch up"
        time.sleep(0.01)  # the store sink lags the memory sink
    return str(created["id"])


def stored_response_id(g: TestGateway, session: requests.Session) -> str:
    """The id of a stored response (two turns, so its input items hold both)."""
    url = f"{g.base_url}/responses"
    first = session.post(url, json={"model": "mock", "input": "Hi"}, timeout=10).json()
    body = {"model": "mock", "input": "Again", "previous_response_id": first["id"]}
    return str(session.post(url, json=body, timeout=10).json()["id"])


def problems(response: schemathesis.Response) -> list[str]:
    """What our own checks find wrong with an answer (error bodies, stream events)."""
    if 400 <= response.status_code < 500:
        return error_body_errors(json.loads(response.content))
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return []
    found = []
    responses_api = response.request.url.rstrip("/").endswith("/responses")
    operation = "createResponse" if responses_api else "createChatCompletion"
    legacy = response.request.url.rstrip("/").endswith("/v1/completions")
    for line in response.content.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            event = json.loads(line[len("data: ") :])
            if "error" in event and not responses_api:
                found += error_body_errors(event)
            elif legacy:
                found += errors(event, {"$ref": "#/components/schemas/CreateCompletionChunk"})
            else:
                found += response_errors(operation, event, "200", "text/event-stream")
    return found


@pytest.mark.parametrize(("method", "path", "mode", "examples"), RUNS)
def test_generated_requests(
    api: Any, gw: TestGateway, method: str, path: str, mode: Any, examples: int
) -> None:
    """Generated requests to one operation never get a 5xx or a non-conforming answer."""
    session = requests.Session()
    fixed: dict[str, str] = {}
    if mode == KNOWN:
        if "{model}" in path:
            fixed = {"model": "mock"}
        elif "{response_id}" in path:
            fixed = {"response_id": stored_response_id(gw, session)}
        else:
            fixed = {"completion_id": stored_id(gw, session)}
    generation = NEGATIVE if mode == NEGATIVE else POSITIVE
    strategy = api[path][method].as_strategy(generation, path_parameters=fixed or None)
    statuses: dict[int, int] = {}

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "mock"
        response = case.call(base_url=gw.base_url, session=session, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)
        assert problems(response) == [], case.as_curl_command()

    try:
        run()
    finally:
        session.close()
    assert [s for s in statuses if s >= 500] == [], statuses
