"""Gateway request IDs: UUIDv7, unique across the random pool's refills and across a fork."""

from __future__ import annotations

import os
import time
import uuid

from auditgate.pipeline import request
from auditgate.pipeline.request import new_request_id


def test_ids_are_uuid7_with_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    parsed = uuid.UUID(new_request_id())
    after = time.time_ns() // 1_000_000
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_ids_stay_unique_and_ordered_across_pool_refills() -> None:
    count = 3 * request._RandomPool.REFILL // 10 + 7  # spans several refills
    ids = [new_request_id() for _ in range(count)]
    assert len(set(ids)) == count
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)


def test_a_forked_child_draws_its_own_random_bytes() -> None:
    new_request_id()  # the parent's pool now holds unused bytes a child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, request._RANDOM.take(10))
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 10)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == 10
    assert child != request._RANDOM.take(10)
