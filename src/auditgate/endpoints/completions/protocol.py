"""Parsing and validating a legacy completion request (``POST /v1/completions``).

The body stays the client's JSON, unknown fields kept and forwarded; this checks the fields the
gateway reads, or that no engine could take, and turns every problem into an OpenAI-style 400
naming the parameter.  Ranges only an engine knows (``logprobs`` above 5 is fine for vLLM, not
for OpenAI) are left to the engine: the mock enforces OpenAI's.
"""

from __future__ import annotations

from typing import Any

import msgspec

from auditgate.errors import InvalidRequestError
from auditgate.pipeline.request import StreamOptions, validate_metadata, validation_error

__all__ = ["CompletionParams", "validate_completion"]


class CompletionParams(msgspec.Struct, kw_only=True):
    """The fields of a legacy completion request the gateway reads; the rest passes through."""

    model: str
    prompt: Any
    """A string, strings, token ids, or token-id lists (checked by :func:`validate_completion`)."""
    stream: bool | None = None
    store: bool | None = None
    n: int | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    max_tokens: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    stop: str | list[str] | None = None
    best_of: int | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None


def validate_completion(body: dict[str, Any]) -> CompletionParams:
    """Check types and ranges of the fields we read; raise a 400 naming the parameter."""
    try:
        params = msgspec.convert(body, CompletionParams)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    _check_prompt(params.prompt)
    if params.n is not None and not 1 <= params.n <= 128:
        raise InvalidRequestError(
            f"{params.n} is not a valid value for 'n': expected 1 to 128.",
            param="n",
            code="invalid_value",
        )
    for name in ("max_tokens", "logprobs"):
        value = getattr(params, name)
        if value is not None and value < 0:
            raise InvalidRequestError(
                f"{value} is not a valid value for '{name}': expected at least 0.",
                param=name,
                code="invalid_value",
            )
    if params.best_of is not None and params.best_of < (params.n or 1):
        raise InvalidRequestError(
            "'best_of' must be greater than or equal to 'n'.", param="best_of", code="invalid_value"
        )
    if params.stream_options is not None and not params.stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if params.metadata is not None:
        validate_metadata(params.metadata)
    return params


def _check_prompt(prompt: Any) -> None:
    """A string, a non-empty array of strings, of token ids, or of non-empty token arrays."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return
        if all(_is_token(p) for p in prompt):
            return
        if all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
            return
    raise InvalidRequestError(
        "Invalid 'prompt': expected a string, an array of strings, an array of tokens, or an "
        "array of token arrays.",
        param="prompt",
        code="invalid_value",
    )


def _is_token(value: Any) -> bool:
    return type(value) is int and value >= 0
