"""Loops for the audit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The spool's tests run on both loops: the gateway serves on uvloop, whose transports and
    subprocesses are not asyncio's; the rest run on asyncio's own."""
    if item.nodeid.startswith(("tests/audit/test_spool.py", "tests/audit/test_spool_space.py")):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
