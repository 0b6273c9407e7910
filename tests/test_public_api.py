"""The public import surface (``auditgate.__all__``): what users embed, importable from the top."""

from __future__ import annotations

import subprocess
import sys

import pytest

import auditgate
from auditgate.audit.record import AuditRecord
from auditgate.audit.runtime import AuditRuntime
from auditgate.audit.sink import BatchPolicy, MemorySink, Sink
from auditgate.config import AuditSettings, Settings
from auditgate.middleware import AuditMiddleware
from auditgate.sinks import build_sinks


def test_every_public_name_is_the_object_it_documents() -> None:
    """Each name in ``__all__`` resolves to its defining module's object, and nothing else is
    listed."""
    expected = {
        "AuditMiddleware": AuditMiddleware,
        "AuditRecord": AuditRecord,
        "AuditRuntime": AuditRuntime,
        "AuditSettings": AuditSettings,
        "BatchPolicy": BatchPolicy,
        "MemorySink": MemorySink,
        "Settings": Settings,
        "Sink": Sink,
        "build_sinks": build_sinks,
    }
    assert sorted(auditgate.__all__) == sorted(expected)
    assert {name: getattr(auditgate, name) for name in auditgate.__all__} == expected


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Gateway'"):
        _ = auditgate.Gateway  # type: ignore[attr-defined]


def test_importing_the_package_loads_none_of_it() -> None:
    """``import auditgate`` (every CLI start) imports no submodule until a name is used."""
    program = (
        "import sys, auditgate; "
        "print(sorted(m for m in sys.modules if m.startswith('auditgate.'))); "
        "auditgate.AuditMiddleware; print('auditgate.middleware' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.splitlines() == ["[]", "True"]


def test_the_middleware_wraps_an_app_from_the_top_level_import() -> None:
    """The README's embedding line works as written."""
    from auditgate import AuditMiddleware as Public

    async def app(scope: object, receive: object, send: object) -> None:
        """An ASGI app that is never called."""

    middleware = Public(app, Settings.from_env({}))
    assert middleware.app is app and not middleware.auditing
