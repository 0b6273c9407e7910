"""API keys and tenants: authentication, and tenant isolation of stored completions, both stores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from auditgate.auth.keys import add_key
from tests.server.test_stored_completions import (
    client,
    create,
    store_env,
    store_gateway,
    wait_listed,
)
from tests.support.server import TestGateway

__all__ = ["store_env"]  # the fixture, imported for this module's tests


@pytest.fixture
def keyed(store_env: dict[str, str], workdir: str) -> Iterator[tuple[TestGateway, dict[str, str]]]:
    """A gateway with keys for tenants ``a`` and ``b`` (users) and an admin of tenant ``ops``."""
    path = f"{workdir}/keys.json"
    keys = {
        "a": add_key(path, name="a", tenant="a", role="user"),
        "b": add_key(path, name="b", tenant="b", role="user"),
        "admin": add_key(path, name="admin", tenant="ops", role="admin"),
    }
    with store_gateway(store_env | {"AUDITGATE_API_KEYS_FILE": path}) as g:
        yield g, keys


def ids(api: openai.OpenAI) -> list[str]:
    return sorted(c.id for c in api.chat.completions.list(limit=100))


def test_keys_required_but_not_for_health(keyed: tuple[TestGateway, dict[str, str]]) -> None:
    """Without a valid key every endpoint but /health is a 401."""
    g, _ = keyed
    statuses = [
        httpx.get(g.url + "/health", timeout=10).status_code,
        httpx.get(g.base_url + "/chat/completions", timeout=10).status_code,
        httpx.get(
            g.base_url + "/models", headers={"Authorization": "Bearer ag-wrong"}, timeout=10
        ).status_code,
    ]
    assert statuses == [200, 401, 401]


def test_records_carry_the_tenant(keyed: tuple[TestGateway, dict[str, str]]) -> None:
    """Each record names the tenant of the key that made it."""
    g, keys = keyed
    create(client(g, keys["a"]))
    create(client(g, keys["b"]))
    assert sorted(r.tenant or "" for r in g.records(2)) == ["a", "b"]


def test_tenants_see_and_change_only_their_own(keyed: tuple[TestGateway, dict[str, str]]) -> None:
    """A user key lists, reads, updates and deletes only its tenant's rows; others are 404."""
    g, keys = keyed
    a, b, admin = (client(g, keys[k]) for k in ("a", "b", "admin"))
    mine_a = [create(a, t="x").id for _ in range(2)]
    mine_b = [create(b, t="x").id]
    wait_listed(admin, 3)
    outcomes: list[Any] = []
    for caller, other in ((a, mine_b[0]), (b, mine_a[0])):
        for call in (
            lambda c=caller, o=other: c.chat.completions.retrieve(o),
            lambda c=caller, o=other: c.chat.completions.messages.list(o),
            lambda c=caller, o=other: c.chat.completions.update(o, metadata={"t": "y"}),
            lambda c=caller, o=other: c.chat.completions.delete(o),
        ):
            with pytest.raises(openai.NotFoundError) as info:
                call()
            outcomes.append(info.value.status_code)
    filtered = sorted(c.id for c in a.chat.completions.list(metadata={"t": "x"}))
    expected = (sorted(mine_a), sorted(mine_b), sorted(mine_a + mine_b), sorted(mine_a))
    assert expected == (ids(a), ids(b), ids(admin), filtered)
    assert outcomes == [404] * 8
    with pytest.raises(openai.BadRequestError):  # another tenant's id is no cursor either
        a.chat.completions.list(after=mine_b[0])


def test_admin_changes_any_tenant(keyed: tuple[TestGateway, dict[str, str]]) -> None:
    """An admin key updates and deletes another tenant's completion."""
    g, keys = keyed
    a, admin = client(g, keys["a"]), client(g, keys["admin"])
    first, second = create(a).id, create(a).id
    wait_listed(admin, 2)
    updated = admin.chat.completions.update(first, metadata={"reviewed": "yes"})
    deleted = admin.chat.completions.delete(second)
    assert ({"reviewed": "yes"}, True, [first]) == (updated.metadata, deleted.deleted, ids(a))
