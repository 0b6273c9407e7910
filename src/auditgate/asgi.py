"""The middleware's first import path, kept working: ``auditgate.asgi.AuditMiddleware`` (as in
``vllm serve MODEL --middleware auditgate.asgi.AuditMiddleware``).  The code lives in
:mod:`auditgate.middleware`; new code imports ``from auditgate import AuditMiddleware``."""

from __future__ import annotations

from auditgate.middleware import AuditMiddleware

__all__ = ["AuditMiddleware"]
