"""The audit off the serving core (``DYN_AUDIT_PROCESS=1``, best effort): a helper process per
gateway process builds, processes and delivers the records.

- :mod:`.link` — :class:`~.link.AuditProcess`: the gateway's end; hands each finished capture
  over, unaggregated, in one write per event-loop iteration; bounds, counts, restarts;
- :mod:`.helper` — the audit process (``python -m auditgate.audit.process.helper``);
- :mod:`.wire` — the socket protocol and the metrics it carries back.

Nothing is imported here.  Only the composition root (:mod:`auditgate.audit.runtime`) builds
these; the request path only sees the :class:`~auditgate.audit.capture.Handoff` protocol.
"""
