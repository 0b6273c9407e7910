"""Key verification: salted hashes, each distinct key hashed once per process, old entries."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from auditgate.auth import hashing
from auditgate.auth.hashing import KeyHash
from auditgate.auth.keys import KeyRing, add_key, generate_key, revoke_keys
from auditgate.errors import AuthenticationError, ConfigError


async def outcome(ring: KeyRing, key: str) -> str:
    """The tenant a key authenticates as, or the error code it gets."""
    try:
        return (await ring.authenticate(f"Bearer {key}".encode())).tenant
    except AuthenticationError as exc:
        return str(exc.code)


async def test_each_distinct_key_pays_scrypt_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent and repeated requests with one key run one scrypt; a wrong key that starts
    like an entry runs one however often it is retried; one that starts like none, or an old
    entry's key, runs none."""
    path = str(tmp_path / "keys.json")
    key = add_key(path, name="a", tenant="a", role="user")
    data = json.loads(Path(path).read_text())
    digest = hashlib.sha256(b"old-key").hexdigest()
    data["keys"].append({"tenant": "old", "sha256": digest})
    Path(path).write_text(json.dumps(data))
    ring = KeyRing.load(path)
    calls: list[int] = []
    real = hashing._scrypt

    def counted(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        calls.append(n)
        return real(key, salt, n, r, p)

    monkeypatch.setattr(hashing, "_scrypt", counted)
    steps = [await asyncio.gather(*(outcome(ring, key) for _ in range(5)))]
    steps.append([await outcome(ring, key) for _ in range(3)])
    steps.append([len(calls)])
    wrong = key[:-3] + ("xyz" if key[-3:] != "xyz" else "abc")
    steps.append([await outcome(ring, k) for k in (wrong, wrong, generate_key(), "old-key")])
    steps.append([len(calls)])
    assert steps == [
        ["a"] * 5,
        ["a"] * 3,
        [1],
        ["invalid_api_key", "invalid_api_key", "invalid_api_key", "old"],
        [2],
    ]


def test_hashes_of_one_key_differ_and_both_verify() -> None:
    """Two hashes of the same key have their own salts and digests; each verifies only it."""
    key = generate_key()
    one, two = KeyHash.new(key), KeyHash.new(key)
    assert (one.salt != two.salt, one.digest != two.digest) == (True, True)
    assert [one.matches(key), two.matches(key), one.matches(key + "x")] == [True, True, False]


def test_reprs_hold_no_hash() -> None:
    """A hash's repr shows its salt and cost, never its digest."""
    made = KeyHash.new(generate_key())
    assert repr(made) == f"KeyHash(salt={made.salt!r}, n=16384, r=8, p=1)"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"tenant": "a"}, r"expected 'prefix' and 'scrypt' \(auditgate keys add\), or an old"),
        ({"tenant": "a", "prefix": "ag-", "scrypt": {}}, r"'prefix' must be the key's first 11"),
        ({"tenant": "a", "prefix": "ag-12345678", "scrypt": []}, r"'scrypt' must be \{"),
        (
            {"tenant": "a", "prefix": "ag-12345678", "scrypt": {"n": 1000, "r": 8, "p": 1}},
            "n a power of two",
        ),
        (
            {"tenant": "a", "prefix": "ag-12345678", "scrypt": {"n": 1 << 20, "r": 8, "p": 1}},
            "needs over 64 MiB",
        ),
        (
            {
                "tenant": "a",
                "prefix": "ag-12345678",
                "scrypt": {"n": 16384, "r": 8, "p": 1, "salt": "zz", "hash": "00"},
            },
            "'salt' and 'hash' in hex",
        ),
    ],
)
def test_bad_entries_are_config_errors(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    """A malformed entry stops startup with a message naming the file and the entry."""
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(ConfigError, match=rf"keys.json: keys\[0\]: .*{message}"):
        KeyRing.load(str(path))


async def test_a_reload_follows_revoke_and_add(tmp_path: Path) -> None:
    """A key that verified is refused once its entry is gone and the ring reloaded (its
    remembered outcome forgotten); a key added later verifies; an unchanged file is not
    re-read."""
    path = str(tmp_path / "keys.json")
    first = add_key(path, name="a", tenant="acme", role="user")
    ring = KeyRing.load(path)
    steps: list[object] = [await outcome(ring, first)]
    second = add_key(path, name="b", tenant="beta", role="admin")
    steps.append(await outcome(ring, second))  # refused: not reloaded yet, and remembered so
    steps.append((ring.reload(force=False), ring.reload(force=False), len(ring)))
    steps.append(await outcome(ring, second))
    revoke_keys(path, "a")
    steps.append((ring.reload(force=False), len(ring)))
    steps.append([await outcome(ring, first), await outcome(ring, second)])
    assert steps == [
        "acme",
        "invalid_api_key",
        (True, False, 2),
        "beta",
        (True, 1),
        ["invalid_api_key", "beta"],
    ]


async def test_a_reload_during_a_first_verification(tmp_path: Path) -> None:
    """A key whose scrypt was running when the ring reloaded without it is refused: the
    answer computed against the keys of before does not count."""
    path = str(tmp_path / "keys.json")
    key = add_key(path, name="a", tenant="acme", role="user")
    ring = KeyRing.load(path)
    pending = asyncio.ensure_future(outcome(ring, key))
    await asyncio.sleep(0)  # the scrypt is now running in its thread
    revoke_keys(path, "a")
    assert ring.reload()
    assert [await pending, await outcome(ring, key)] == ["invalid_api_key"] * 2


@pytest.mark.parametrize("damage", ["truncate", "bad_entry", "delete"])
async def test_a_broken_file_keeps_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """A file that no longer parses (or is gone) keeps the keys loaded before: one error per
    change of the file, naming it and never a key, and one count per error."""
    path = tmp_path / "keys.json"
    key = add_key(str(path), name="a", tenant="acme", role="user")
    registry = CollectorRegistry()
    ring = KeyRing.load(str(path), registry=registry)
    assert await outcome(ring, key) == "acme"
    if damage == "truncate":
        path.write_text(path.read_text()[:40])
    elif damage == "bad_entry":
        path.write_text(json.dumps({"keys": [{"tenant": "acme", "role": "root"}]}))
    else:
        path.unlink()
    with caplog.at_level(logging.ERROR, logger="auditgate.auth"):
        reloads = [ring.reload(force=False), ring.reload(force=False)]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    count = registry.get_sample_value("auditgate_api_keys_reload_failures_total")
    assert (reloads, len(errors), count, await outcome(ring, key)) == (
        [False, False],
        1,
        1.0,
        "acme",
    )
    assert str(path) in errors[0] and key not in errors[0] and key[3:11] not in errors[0]


async def test_a_ring_not_loaded_from_a_file_follows_none(tmp_path: Path) -> None:
    """A ring built from entries (no file) has nothing to reload."""
    ring = KeyRing([])
    assert (ring.reload(), await outcome(ring, generate_key())) == (False, "invalid_api_key")


def test_holds_follows_the_file(tmp_path: Path) -> None:
    """``holds`` (what a console session checks) answers for the keys in force: by name,
    tenant (None for an admin) and role, and no longer once the name is revoked."""
    path = str(tmp_path / "keys.json")
    add_key(path, name="ann", tenant="acme", role="user")
    add_key(path, name="boss", tenant="acme", role="admin")
    ring = KeyRing.load(path)
    before = [
        ring.holds("ann", "acme", False),
        ring.holds("ann", "beta", False),
        ring.holds("ann", None, True),
        ring.holds("boss", None, True),
    ]
    revoke_keys(path, "boss")
    ring.reload()
    assert (before, ring.holds("boss", None, True), ring.holds("ann", "acme", False)) == (
        [True, False, False, True],
        False,
        True,
    )
