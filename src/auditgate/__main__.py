"""``python -m auditgate`` is the ``auditgate`` command."""

from auditgate.cli.main import main

raise SystemExit(main())
