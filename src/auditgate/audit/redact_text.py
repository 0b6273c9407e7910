"""Redaction of the plain-text bodies: legacy completions and embeddings.

Chat bodies hold their text in messages (:class:`~auditgate.audit.processors.RedactProcessor`
walks those); these endpoints hold it in plain fields:

- the request's ``prompt`` and ``suffix`` (legacy completions) and ``input`` (embeddings): a
  string or a list of strings (token-id arrays hold no text the detectors could read);
- the response's ``choices[].text`` (legacy completions).  A choice whose text was redacted
  loses its ``logprobs`` (set to ``null``): their tokens spell the text out piece by piece,
  which no detector sees whole.

Copy-on-write as for chat: what nothing matched is not copied, and the client's objects are
never mutated.
"""

from __future__ import annotations

from typing import Any, Final

from auditgate.audit.record import AuditRecord
from auditgate.audit.redact import Redactor

__all__ = ["redact_plain", "texts_of"]

_REQUEST_FIELDS: Final = ("prompt", "suffix", "input")


def texts_of(request: Any, response: Any, out: list[str]) -> None:
    """Append the plain texts of a request and a response to ``out``."""
    if isinstance(request, dict):
        for field in _REQUEST_FIELDS:
            value = request.get(field)
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out.extend(v for v in value if isinstance(v, str))
    if isinstance(response, dict):
        choices = response.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                    out.append(choice["text"])


def redact_plain(record: AuditRecord, redactor: Redactor) -> None:
    """Redact the plain texts of ``record``'s request and response in place (new dicts)."""
    request, response = record.request, record.response
    if isinstance(request, dict):
        changed: dict[str, Any] = {}
        for field in _REQUEST_FIELDS:
            value = request.get(field)
            new = _value(value, redactor)
            if new is not value:
                changed[field] = new
        if changed:
            record.request = {**request, **changed}
    if isinstance(response, dict):
        choices = response.get("choices")
        if isinstance(choices, list):
            out: list[Any] | None = None
            for index, choice in enumerate(choices):
                if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
                    continue
                text = redactor.text(choice["text"])
                if text is not choice["text"]:
                    if out is None:
                        out = list(choices)
                    out[index] = {**choice, "text": text, "logprobs": None}
            if out is not None:
                record.response = {**response, "choices": out}


def _value(value: Any, redactor: Redactor) -> Any:
    """A string or list of strings redacted; the same object when nothing matched."""
    if isinstance(value, str):
        return redactor.text(value)
    if not isinstance(value, list):
        return value
    out: list[Any] | None = None
    for index, item in enumerate(value):
        if isinstance(item, str):
            new = redactor.text(item)
            if new is not item:
                if out is None:
                    out = list(value)
                out[index] = new
    return value if out is None else out
