"""The legacy completions pipeline's own decisions."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from auditgate.audit.capture import Auditor
from auditgate.audit.metrics import AuditMetrics
from auditgate.config import Settings
from auditgate.endpoints.completions import CompletionsPipeline, validate_completion
from auditgate.engines.mock import MockEngine
from auditgate.pipeline.chat import ChatCall


@pytest.mark.parametrize(
    ("body", "single"),
    [
        ({"prompt": "a"}, True),
        ({"prompt": ["a"]}, True),
        ({"prompt": [1, 2, 3]}, True),
        ({"prompt": [[1, 2]]}, True),
        ({"prompt": "a", "n": 2}, False),
        ({"prompt": ["a", "b"]}, False),
        ({"prompt": [[1], [2]]}, False),
    ],
)
def test_single_choice_counts_prompts_and_n(body: dict[str, Any], single: bool) -> None:
    """A stream has one choice only with one prompt and n=1: only then does its first
    finish_reason end the answer (and let the transport hold the tail for [DONE])."""
    settings = Settings.from_env({})
    auditor = Auditor(settings.audit, None, AuditMetrics(CollectorRegistry()), engine="mock")
    pipeline = CompletionsPipeline(MockEngine(), auditor)
    body = {"model": "mock", **body}
    call = ChatCall(body=body, params=validate_completion(body), request_id="r", id_prefix="cmpl-")
    assert pipeline.single_choice(call) is single
    assert call.response_id == "cmpl-r"
