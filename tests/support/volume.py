"""A small real filesystem for tests of a spool whose volume fills up: a tmpfs mount."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_volume(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount`` syntax: ``4m``) mounted at ``path`` for the ``with``
    block, unmounted after it.  Skips the test when not root: mounting needs it (CI runs as
    root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the spool needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        # Lazy: a process the test failed to stop must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True, timeout=30)
