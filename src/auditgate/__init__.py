"""auditgate: an OpenAI-compatible LLM gateway whose core is an audit pipeline.

The names below are the public import surface for embedding auditgate in your own server:

- :class:`AuditMiddleware` — audit ``POST /v1/chat/completions`` (and ``/v1/completions``) of any
  ASGI app (vLLM, SGLang, FastAPI): ``app.add_middleware(AuditMiddleware)``;
- :class:`Settings` / :class:`AuditSettings` — the ``DYN_AUDIT_*`` and ``AUDITGATE_*`` settings
  (``Settings.from_env()``);
- :class:`AuditRecord` — one record, as every sink stores it (DESIGN §3);
- :class:`Sink`, :class:`BatchPolicy`, :class:`MemorySink`, :func:`build_sinks` — the sink
  protocol, its batching, an in-memory sink for tests, the sinks the settings name;
- :class:`AuditRuntime` — the audit core every transport uses (sinks, bus, processors, chain).

Everything else is internal and may move.  Importing this package loads nothing but itself:
each name is imported on first use, so ``import auditgate`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditgate.audit.record import AuditRecord
    from auditgate.audit.runtime import AuditRuntime
    from auditgate.audit.sink import BatchPolicy, MemorySink, Sink
    from auditgate.config import AuditSettings, Settings
    from auditgate.middleware import AuditMiddleware
    from auditgate.sinks import build_sinks

__all__ = [
    "AuditMiddleware",
    "AuditRecord",
    "AuditRuntime",
    "AuditSettings",
    "BatchPolicy",
    "MemorySink",
    "Settings",
    "Sink",
    "build_sinks",
]

_HOMES = {
    "AuditMiddleware": "auditgate.middleware",
    "AuditRecord": "auditgate.audit.record",
    "AuditRuntime": "auditgate.audit.runtime",
    "AuditSettings": "auditgate.config",
    "BatchPolicy": "auditgate.audit.sink",
    "MemorySink": "auditgate.audit.sink",
    "Settings": "auditgate.config",
    "Sink": "auditgate.audit.sink",
    "build_sinks": "auditgate.sinks",
}
"""Where each public name is defined."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'auditgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
