"""API keys: stored as salted hashes in a JSON file, each bound to a tenant and a role.

File format (``AUDITGATE_API_KEYS_FILE``)::

    {"keys": [{"name": "ci", "tenant": "acme", "role": "user", "prefix": "ag-…", "scrypt": {…}}]}

(entry format: :mod:`auditgate.auth.hashing`; entries of old files, ``"sha256"``, still verify).
A key is shown once, when ``auditgate keys add`` creates it; the file never holds it in plain
text.  ``role`` is ``user`` (sees and changes only its tenant's stored completions) or ``admin``
(sees all).

Verification runs on every request, and a salted scrypt hash costs tens of milliseconds, so
:class:`KeyRing` pays it once per distinct key and process: a key that verified is remembered
under a keyed BLAKE2b digest of it (a per-process random key, so memory holds neither the key
nor a digest that means anything outside this process), and later requests cost that digest
and a dict lookup (about a microsecond).  The scrypt itself runs in a worker thread, so the
event loop never waits for it; concurrent first requests with one key share one computation.
A key whose first characters match no entry is refused without any hashing.

A ring loaded from a file follows it while the process runs, so ``auditgate keys revoke`` and
``keys add`` take effect without a restart: :meth:`KeyRing.authenticate` stats the file (inode,
size, mtime) at most once a second and reloads it when that changed — an atomic rename-replace
is a new inode, so it is always seen — and :meth:`KeyRing.reload` does it at once (SIGHUP).  The
check sits on the request path rather than in a background task because then every process
that authenticates (each ``--workers`` worker, the gRPC frontend, ``auditgate ui``) follows the
file with nothing to start or stop, and a revocation is honoured by the first request at most a
second after it; between checks a request pays one clock read.  A reload forgets every
remembered outcome (a revoked key must not stay verified).  A file that no longer parses keeps
the previous keys, logs one error per change of the file and counts it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter

from auditgate.audit.metrics import PREFIX
from auditgate.auth.hashing import GENERATED, KEY_PREFIX, PREFIX_LEN, KeyHash, legacy_digest
from auditgate.errors import AuthenticationError, ConfigError

log = logging.getLogger("auditgate.auth")

Role = Literal["user", "admin"]
_REFUSED_MAX: Final = 1024
"""Wrong keys remembered, so a client retrying a mistyped key does not pay scrypt each time."""
CHECK_INTERVAL_S: Final = 1.0
"""How often, at most, a ring loaded from a file stats it for changes."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant records are attributed to, and what it may see."""

    name: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One configured key: its principal and how the file stores it."""

    principal: Principal
    hashed: KeyHash | str = dataclasses.field(repr=False)
    """The salted hash, or an old entry's SHA-256 hex digest."""
    prefix: str | None = None
    """The key's first characters (salted entries only)."""


def generate_key() -> str:
    """A new API key: ``ag-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` value; None for any other value."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def presented_key(authorization: str | None) -> tuple[str, ...]:
    """The bearer key of an authenticated request's ``Authorization`` value, as the
    credentials that redaction removes from its record (empty when there is none)."""
    token = bearer_token(authorization) if authorization is not None else None
    return (token,) if token is not None else ()


class KeyRing:
    """The configured keys (see the module docstring for how a key is verified)."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._secret = secrets.token_bytes(32)
        self._path: str | None = None
        self._seen: tuple[int, int, int, int] | None = None
        """The file's (device, inode, size, mtime) when last read, or when last found broken."""
        self._next_check = 0.0
        self._failures: Counter | None = None
        self._replace(entries)

    def _replace(self, entries: Iterable[Entry]) -> None:
        """Hold ``entries`` from now on, forgetting every remembered outcome."""
        legacy: dict[str, Principal] = {}
        salted: dict[str, list[Entry]] = {}
        count = 0
        for entry in entries:
            count += 1
            if isinstance(entry.hashed, str):
                legacy[entry.hashed] = entry.principal
            elif entry.prefix is not None:
                salted.setdefault(entry.prefix, []).append(entry)
        self._legacy = legacy
        self._salted = salted
        self._count = count
        self._holders = frozenset(
            (p.name, None if p.is_admin else p.tenant, p.is_admin)
            for p in [*legacy.values(), *(e.principal for es in salted.values() for e in es)]
        )
        self._verified: dict[bytes, Principal] = {}
        """Keys that verified, by keyed digest: at most one per entry, so bounded."""
        self._refused: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Principal | None]] = {}

    def __len__(self) -> int:
        return self._count

    @classmethod
    def load(cls, path: str, *, registry: CollectorRegistry | None = None) -> KeyRing:
        """Read a keys file and follow it (see the module docstring); any problem now is a
        ConfigError naming the file.  With ``registry``, failed reloads are counted there."""
        seen = _identity(path)
        ring = cls(_entries(path))
        ring._path, ring._seen = path, seen
        ring._next_check = time.monotonic() + CHECK_INTERVAL_S
        if registry is not None:
            ring._failures = Counter(
                PREFIX + "api_keys_reload_failures_total",
                "Reloads of the API keys file that failed (the previous keys stay in force).",
                registry=registry,
            )
        return ring

    def reload(self, *, force: bool = True) -> bool:
        """Re-read the keys file if it changed (any time with ``force``); True when the keys
        were replaced.  A file that cannot be read or parsed keeps the previous keys: one
        error is logged (naming the file, never a key) and counted."""
        path = self._path
        if path is None:
            return False
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        try:
            seen = _identity(path)
        except ConfigError as exc:
            seen = None
            if self._seen is None and not force:
                return False  # already reported
            return self._failed(seen, exc)
        if seen == self._seen and not force:
            return False
        try:
            entries = list(_entries(path))
        except ConfigError as exc:
            return self._failed(seen, exc)
        self._replace(entries)
        self._seen = seen
        log.info("API keys: reloaded %s, %d configured", path, self._count)
        return True

    def _failed(self, seen: tuple[int, int, int, int] | None, exc: ConfigError) -> bool:
        self._seen = seen
        if self._failures is not None:
            self._failures.inc()
        log.error("API keys: %s; keeping the %d keys loaded before", exc, self._count)
        return False

    def holds(self, name: str, tenant: str | None, admin: bool) -> bool:
        """Whether some key of ``name`` still grants this (``tenant`` None for an admin): how
        a console session, signed in earlier with a key, learns that the key was revoked."""
        self._follow()
        return (name, tenant, admin) in self._holders

    def _follow(self) -> None:
        """Reload the file if it changed, checking at most once per :data:`CHECK_INTERVAL_S`."""
        if self._path is not None and time.monotonic() >= self._next_check:
            self.reload(force=False)

    async def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal of ``Authorization: Bearer <key>``; 401 for anything else."""
        if authorization is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        self._follow()
        token = bearer_token(authorization.decode("latin-1"))
        principal = None
        if token is not None:
            tag = hashlib.blake2b(token.encode(), key=self._secret).digest()
            principal = self._verified.get(tag)
            if principal is None and tag not in self._refused:
                principal = await self._verify(tag, token)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return principal

    async def _verify(self, tag: bytes, token: str) -> Principal | None:
        """Look ``token`` up the slow way once, remembering the outcome under ``tag``."""
        principal = self._legacy.get(legacy_digest(token))
        if principal is None:
            candidates = self._salted.get(token[:PREFIX_LEN])
            if not candidates:
                return None  # no entry starts like it: nothing to hash, nothing to remember
            pending = self._pending.get(tag)
            if pending is None:
                pending = asyncio.ensure_future(asyncio.to_thread(_match, token, candidates))
                waiting = self._pending  # not a later reload's
                waiting[tag] = pending
                pending.add_done_callback(lambda _: waiting.pop(tag, None))
            # Shielded: one caller going away must not cancel the others' shared answer.
            salted = self._salted
            principal = await asyncio.shield(pending)
            if salted is not self._salted:
                # The file was reloaded meanwhile: the answer is about the keys of before.
                return await self._verify(tag, token)
        if principal is None:
            self._refused[tag] = None
            if len(self._refused) > _REFUSED_MAX:
                self._refused.popitem(last=False)
        else:
            self._verified[tag] = principal
        return principal


def _match(token: str, candidates: list[Entry]) -> Principal | None:
    for entry in candidates:
        if isinstance(entry.hashed, KeyHash) and entry.hashed.matches(token):
            return entry.principal
    return None


def add_key(path: str, *, name: str, tenant: str, role: Role) -> str:
    """Create a key, append its salted hash to the file (created if missing), return the key."""
    file = Path(path)
    data: dict[str, Any] = {"keys": []}
    if file.exists():
        data = json.loads(file.read_text())
        _key_list(data, path)
    key = generate_key()
    data["keys"].append(salted_entry(key, {"name": name, "tenant": tenant, "role": role}))
    write(path, data)
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a keys file as ``auditgate keys list`` shows it (never the key)."""

    name: str
    tenant: str
    role: str
    prefix: str | None
    """The key's first characters (salted entries), to tell keys of one name apart."""
    hashing: str
    """``scrypt`` (salted), or ``sha256`` for an old entry to upgrade."""


def list_keys(path: str) -> list[Listed]:
    """The entries of a keys file, in file order; ConfigError if it is not a keys file."""
    listed: list[Listed] = []
    for index, item in enumerate(_load(path)["keys"]):
        entry = _entry(item, f"{path}: keys[{index}]")
        principal = entry.principal
        hashing = "sha256" if isinstance(entry.hashed, str) else "scrypt"
        listed.append(
            Listed(principal.name, principal.tenant, principal.role, entry.prefix, hashing)
        )
    return listed


def revoke_keys(path: str, name: str) -> int:
    """Delete every entry named ``name`` (or, for an entry without a name, whose tenant is
    ``name``) from the keys file; returns how many were deleted (the file is rewritten only
    then).  A running gateway refuses them within about a second (see :class:`KeyRing`)."""
    data = _load(path)
    items = data["keys"]
    kept = [item for item in items if not (isinstance(item, dict) and _name(item) == name)]
    revoked = len(items) - len(kept)
    if revoked:
        data["keys"] = kept
        write(path, data)
    return revoked


@dataclasses.dataclass(frozen=True, slots=True)
class Upgrade:
    """What :func:`upgrade_keys` did, by entry name (never by key)."""

    upgraded: list[str]
    """Old entries rewritten with a salted hash."""
    refused: list[str]
    """Old entries whose key was given but is not one ``auditgate keys add`` made: left as
    they are, since their prefix in clear would give away the start of a hand-chosen key."""
    unknown: int
    """Keys given that match no old entry (already upgraded, or not in this file)."""
    remaining: list[str]
    """Old entries still in the file afterwards."""


def upgrade_keys(path: str, keys: Iterable[str]) -> Upgrade:
    """Rewrite the old (unsalted SHA-256) entries of the keys file whose keys are given with
    salted hashes, keeping their name, tenant and role: the keys themselves stay valid."""
    data = _load(path)
    items = data["keys"]
    old = {
        item["sha256"].lower(): index
        for index, item in enumerate(items)
        if isinstance(item, dict) and isinstance(item.get("sha256"), str)
    }
    upgraded: list[str] = []
    refused: list[str] = []
    unknown = 0
    for key in keys:
        index = old.pop(legacy_digest(key), None)
        if index is None:
            unknown += 1
        elif GENERATED.fullmatch(key) is None:
            refused.append(_name(items[index]))
        else:
            upgraded.append(_name(items[index]))
            items[index] = salted_entry(key, items[index])
    if upgraded:
        write(path, data)
    remaining = [_name(item) for item in items if isinstance(item, dict) and "sha256" in item]
    return Upgrade(upgraded, refused, unknown, remaining)


def _name(item: dict[str, Any]) -> str:
    return str(item.get("name") or item.get("tenant"))


def salted_entry(key: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A keys-file entry for ``key``: ``fields`` (name, tenant, role…) without any old hash,
    plus the key's prefix and a fresh salted hash."""
    kept = {k: v for k, v in fields.items() if k not in ("sha256", "prefix", "scrypt")}
    return {**kept, "prefix": key[:PREFIX_LEN], "scrypt": KeyHash.new(key).to_json()}


def _identity(path: str) -> tuple[int, int, int, int]:
    """What tells a new version of the file: a rename-replace changes the inode, an in-place
    write the size or the mtime (nanoseconds, so two writes in one second differ)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"AUDITGATE_API_KEYS_FILE: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"AUDITGATE_API_KEYS_FILE: cannot read {path}: {exc}") from None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _entries(path: str) -> Iterable[Entry]:
    return [_entry(item, f"{path}: keys[{i}]") for i, item in enumerate(read(path))]


def read(path: str) -> list[Any]:
    """The ``keys`` list of a keys file; ConfigError if it cannot be read or is not one."""
    keys: list[Any] = _load(path)["keys"]
    return keys


def _load(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"AUDITGATE_API_KEYS_FILE: {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"AUDITGATE_API_KEYS_FILE: cannot read {path}: {exc}") from None
    _key_list(data, path)
    loaded: dict[str, Any] = data
    return loaded


def write(path: str, data: dict[str, Any]) -> None:
    """Replace the keys file atomically with ``data``, readable by its owner only."""
    file = Path(path)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(file)


def _key_list(data: Any, path: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(f'AUDITGATE_API_KEYS_FILE: {path} must hold {{"keys": [...]}}')
    keys: list[Any] = data["keys"]
    return keys


def _entry(item: Any, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object")
    tenant, role = item.get("tenant"), item.get("role", "user")
    if not isinstance(tenant, str) or not tenant:
        raise ConfigError(f"{where}: 'tenant' must be a non-empty string")
    if role not in ("user", "admin"):
        raise ConfigError(f"{where}: 'role' must be 'user' or 'admin'")
    principal = Principal(name=str(item.get("name") or tenant), tenant=tenant, role=role)
    if "scrypt" in item:
        prefix = item.get("prefix")
        if not isinstance(prefix, str) or len(prefix) != PREFIX_LEN:
            raise ConfigError(f"{where}: 'prefix' must be the key's first {PREFIX_LEN} characters")
        return Entry(principal, KeyHash.from_json(item["scrypt"], where), prefix)
    digest = item.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ConfigError(
            f"{where}: expected 'prefix' and 'scrypt' (auditgate keys add), or an old "
            "entry's 'sha256' (the 64-hex-digit SHA-256 of the key)"
        )
    return Entry(principal, digest.lower())
