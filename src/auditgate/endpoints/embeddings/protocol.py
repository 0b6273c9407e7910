"""Parsing and validating an embeddings request (``POST /v1/embeddings``).

The body stays the client's JSON, unknown fields kept and forwarded.  Checked here: ``model``,
``input`` (a string, strings, token ids or token-id lists, not empty), the types of
``encoding_format``, ``dimensions``, ``user``, and ``store`` / ``metadata`` (auditgate's, as for
chat: ``store: true`` puts the inputs in the record).  Values only an engine can judge (which
``dimensions`` a model has) are left to it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from auditgate.errors import InvalidRequestError
from auditgate.pipeline.request import validate_metadata, validation_error

__all__ = ["EmbeddingParams", "validate_embeddings"]


class EmbeddingParams(msgspec.Struct, kw_only=True):
    """The fields of an embeddings request the gateway reads; the rest passes through."""

    model: str
    input: Any
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    @property
    def stream(self) -> bool | None:
        """Embeddings are never streamed."""
        return None

    @property
    def n(self) -> int | None:
        """One result per input, not ``n`` choices."""
        return None


def validate_embeddings(body: dict[str, Any]) -> EmbeddingParams:
    """Check the fields we read; raise a 400 naming the parameter."""
    try:
        params = msgspec.convert(body, EmbeddingParams)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    if not _valid_input(params.input):
        raise InvalidRequestError(
            "Invalid 'input': expected a non-empty string, an array of strings, an array of "
            "tokens, or an array of token arrays.",
            param="input",
            code="invalid_value",
        )
    if params.dimensions is not None and params.dimensions < 1:
        raise InvalidRequestError(
            f"{params.dimensions} is not a valid value for 'dimensions': expected at least 1.",
            param="dimensions",
            code="invalid_value",
        )
    if params.metadata is not None:
        validate_metadata(params.metadata)
    return params


def _valid_input(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, str) for v in value):
        return True
    if all(_is_token(v) for v in value):
        return True
    return all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value)


def _is_token(value: Any) -> bool:
    return type(value) is int and value >= 0
