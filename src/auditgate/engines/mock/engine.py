"""The :class:`MockEngine`: validates a request, plans its answer once, sends it whole or
streamed (see the package docstring for the behaviour)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from auditgate.engines.base import EngineRequest
from auditgate.engines.mock.choices import Choice, Options, generate, message_of
from auditgate.engines.mock.chunks import chunks
from auditgate.engines.mock.embeddings import embeddings
from auditgate.engines.mock.legacy import (
    DEFAULT_MAX_TOKENS,
    MAX_LOGPROBS,
    TextPlan,
    text_chunks,
    text_completion,
    text_plan,
)
from auditgate.engines.mock.structured import json_format
from auditgate.engines.mock.text import prompt_tokens
from auditgate.engines.mock.tools import tool_plan
from auditgate.engines.mock.validate import validate_request
from auditgate.errors import ConfigError, InvalidRequestError, NotFoundError

__all__ = ["SYSTEM_FINGERPRINT", "MockEngine"]

SYSTEM_FINGERPRINT: Final = "fp_auditgate_mock"
_REASONING: Final = {
    "minimal": (2, 6),
    "low": (4, 12),
    "medium": (8, 24),
    "high": (16, 48),
    "xhigh": (24, 64),
    "max": (32, 96),
}
_TEXT_RANGED: Final = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
"""The chat limits that hold for legacy completions too."""
_SERVED_TIER: Final = {"auto": "default", "fast": "priority"}
"""The tier OpenAI reports for a requested one (``auto`` runs as the project's default)."""


@dataclasses.dataclass(slots=True)
class _Plan:
    """Everything a request produces, computed once for ``complete`` and ``stream`` alike."""

    model: str
    created: int
    choices: list[Choice]
    usage: dict[str, Any]
    include_usage: bool
    service_tier: str | None


class MockEngine:
    """A deterministic engine serving ``models``; see the package docstring for the behaviour."""

    name = "mock"

    def __init__(
        self, models: Sequence[str] = ("mock",), *, ttft_s: float = 0.0, itl_s: float = 0.0
    ) -> None:
        if not models:
            raise ConfigError("AUDITGATE_MODELS: the mock engine needs at least one model id")
        if ttft_s < 0 or itl_s < 0:
            raise ConfigError("mock engine delays must be >= 0")
        self._models = tuple(models)
        self._known = frozenset(models)
        self._ttft_s = ttft_s
        self._itl_s = itl_s
        self._created = int(time.time())

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to release."""

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model objects for the served models."""
        return [
            {"id": m, "object": "model", "created": self._created, "owned_by": "auditgate"}
            for m in self._models
        ]

    async def complete(self, request: EngineRequest) -> dict[str, Any]:
        """The non-stream ``chat.completion``: the aggregate of :meth:`stream` for this request."""
        plan = self._plan(request.body)
        completion = {
            "id": request.response_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [message_of(c) for c in plan.choices],
            "usage": plan.usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if plan.service_tier is not None:
            completion["service_tier"] = plan.service_tier
        return completion

    async def stream(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of ``chat.completion.chunk`` dicts; errors are raised at the first batch."""
        plan = self._plan(request.body)
        top = {
            "id": request.response_id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if plan.service_tier is not None:
            top["service_tier"] = plan.service_tier
        out, ends = chunks(top, plan.choices, plan.usage if plan.include_usage else None)
        if not (self._ttft_s or self._itl_s):
            yield out
            return
        start = 0
        for number, end in enumerate(ends):
            await asyncio.sleep(self._itl_s if number else self._ttft_s)
            yield out[start:end]
            start = end

    async def complete_text(self, request: EngineRequest) -> dict[str, Any]:
        """The non-stream ``text_completion`` (legacy completions, see :mod:`.legacy`)."""
        plan = self._text_plan(request.body)
        return text_completion(plan, request.response_id, SYSTEM_FINGERPRINT)

    async def stream_text(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of ``text_completion`` chunks, paced as :meth:`stream`."""
        plan = self._text_plan(request.body)
        out, ends = text_chunks(plan, request.response_id, SYSTEM_FINGERPRINT)
        if not (self._ttft_s or self._itl_s):
            yield out
            return
        start = 0
        for number, end in enumerate(ends):
            await asyncio.sleep(self._itl_s if number else self._ttft_s)
            yield out[start:end]
            start = end

    async def embed(self, request: EngineRequest) -> dict[str, Any]:
        """Deterministic embeddings (see :mod:`.embeddings`)."""
        return embeddings(request.body, self._model_of(request.body))

    def _text_plan(self, body: dict[str, Any]) -> TextPlan:
        model = self._model_of(body)
        ranged = {k: body[k] for k in _TEXT_RANGED if body.get(k) is not None}
        if ranged:
            validate_request(ranged)
        top = body.get("logprobs")
        if top is not None and (type(top) is not int or not 0 <= top <= MAX_LOGPROBS):
            raise InvalidRequestError(
                f"Invalid 'logprobs': expected an integer between 0 and {MAX_LOGPROBS}, "
                f"got {top!r}.",
                param="logprobs",
                code="invalid_value",
            )
        budget = body.get("max_tokens")
        if budget is None:
            budget = DEFAULT_MAX_TOKENS
        elif type(budget) is not int or budget < 0:
            raise InvalidRequestError(
                f"Invalid 'max_tokens': expected a non-negative integer, got {budget!r}.",
                param="max_tokens",
                code="invalid_value",
            )
        if body.get("echo") is not None and type(body["echo"]) is not bool:
            raise InvalidRequestError("Invalid 'echo': expected a boolean.", param="echo")
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise InvalidRequestError("Invalid 'suffix': expected a string.", param="suffix")
        options = Options(
            budget=budget, stops=_stops(body.get("stop")), tools=None, reasoning=None,
            top_logprobs=top,
        )  # fmt: skip
        n = _integer(body, "n", 128) or 1
        return text_plan(body, model, options, n, int(time.time()))

    def _model_of(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidRequestError("you must provide a model parameter", param="model")
        if model not in self._known:
            raise NotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model

    def _plan(self, body: dict[str, Any]) -> _Plan:
        model = self._model_of(body)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequestError("'messages' must be an array", param="messages")
        validate_request(body)
        n = _integer(body, "n", 128) or 1
        options = _options(body)
        material = [model, messages, body.get("tools"), body.get("seed")]
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
        base = int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=16).digest(), "big")
        choices = [generate(base + i, i, options) for i in range(n)]
        schema = options.json.schema if options.json is not None else None
        prompt = prompt_tokens(messages, body.get("tools"), schema)
        completion = sum(c.tokens for c in choices)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        thought = sum(len(c.reasoning) for c in choices)
        if thought:
            usage["completion_tokens_details"] = {"reasoning_tokens": thought}
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        tier = body.get("service_tier")
        served = None if tier is None else _SERVED_TIER.get(tier, tier)
        return _Plan(model, int(time.time()), choices, usage, include_usage, served)


def _options(body: dict[str, Any]) -> Options:
    """The knobs of ``body`` that shape every choice, validated."""
    limit = "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
    effort = body.get("reasoning_effort")
    top_logprobs = None
    if body.get("logprobs") is True:
        top_logprobs = int(body.get("top_logprobs") or 0)
    return Options(
        budget=_integer(body, limit, 1 << 31),
        stops=_stops(body.get("stop")),
        tools=tool_plan(
            body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls")
        ),
        reasoning=None if effort is None or effort == "none" else _REASONING[effort],
        json=json_format(body.get("response_format")),
        top_logprobs=top_logprobs,
    )


def _integer(body: dict[str, Any], key: str, high: int) -> int | None:
    """``body[key]``: ``None`` or an integer in ``[1, high]``."""
    value = body.get(key)
    if value is not None and (type(value) is not int or not 1 <= value <= high):
        raise InvalidRequestError(
            f"Invalid '{key}': expected an integer between 1 and {high}, got {value!r}.",
            param=key,
        )
    return value


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError(
            "'stop' must be a string or an array of up to 4 strings", param="stop"
        )
    return [s for s in stops if s]
