"""The web console for the audit trail, served at ``/ui`` by the gateway and by ``auditgate ui``.

- :mod:`~auditgate.console.app` — the ASGI app, sign-in and sessions' use.
- :mod:`~auditgate.console.pages` — records, a record, usage, pipeline health, verify, export.
- :mod:`~auditgate.console.session` — signed session cookies and CSRF tokens.
- :mod:`~auditgate.console.filters` — the records filter (shared by list, charts and export).
- :mod:`~auditgate.console.conversation` — a record as chat turns, markdown rendered safely.
- :mod:`~auditgate.console.usage`, :mod:`~auditgate.console.health`,
  :mod:`~auditgate.console.integrity` — the numbers behind the other pages.
"""

from __future__ import annotations

from auditgate.console.app import PREFIX, Console, ConsoleConfig, MetricsSource
from auditgate.console.session import Sessions, Viewer

__all__ = ["PREFIX", "Console", "ConsoleConfig", "MetricsSource", "Sessions", "Viewer"]
