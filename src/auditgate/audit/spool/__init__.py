"""Durable mode (``DYN_AUDIT_DURABILITY=durable``, DESIGN §6): the write-ahead spool and the bus
that feeds every sink from it.

- :mod:`.durable` — :class:`~.durable.DurableBus`: spool first, then each sink from its cursor;
- :mod:`.spool` — :class:`~.spool.Spool`: group commit through the writer process, recovery;
- :mod:`.writer` — the writer process (``python -m auditgate.audit.spool.writer``);
- :mod:`.segments`, :mod:`.frames`, :mod:`.cursors` — the files: framed segments, positions,
  each sink's saved cursor.

Nothing is imported here: the writer process loads only what it runs.  Only the composition
root (:mod:`auditgate.audit.runtime`) builds these; the request path never imports them.
"""
