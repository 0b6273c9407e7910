"""API keys: stored as SHA-256 hashes in a JSON file, each bound to a tenant and a role.

File format (``AUDITGATE_API_KEYS_FILE``)::

    {"keys": [{"name": "ci", "tenant": "acme", "role": "user", "sha256": "<hex of sha256(key)>"}]}

A key is shown once, when ``auditgate keys add`` creates it; the file never holds it in plain
text.  ``role`` is ``user`` (sees and changes only its tenant's stored completions) or ``admin``
(sees all).  Keys are long random tokens, so an unsalted SHA-256 is enough to make a leaked file
useless; a slow hash would only slow every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Literal

from auditgate.errors import AuthenticationError, ConfigError

Role = Literal["user", "admin"]
KEY_PREFIX: Final = "ag-"


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant records are attributed to, and what it may see."""

    name: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


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


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, looked up by hash."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._by_hash = dict(entries)

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def load(cls, path: str) -> KeyRing:
        """Read a keys file; any problem is a ConfigError naming the file."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"AUDITGATE_API_KEYS_FILE: {path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"AUDITGATE_API_KEYS_FILE: cannot read {path}: {exc}") from None
        entries = []
        for i, item in enumerate(_key_list(data, path)):
            entries.append(_entry(item, f"{path}: keys[{i}]"))
        return cls(entries)

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal of ``Authorization: Bearer <key>``; 401 for anything else."""
        if authorization is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        token = bearer_token(authorization.decode("latin-1"))
        principal = None
        if token is not None:
            principal = self._by_hash.get(hash_key(token))
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return principal


def add_key(path: str, *, name: str, tenant: str, role: Role) -> str:
    """Create a key, append its hash to the file (created if missing), return the key."""
    file = Path(path)
    data: dict[str, Any] = {"keys": []}
    if file.exists():
        data = json.loads(file.read_text())
        _key_list(data, path)
    key = generate_key()
    data["keys"].append({"name": name, "tenant": tenant, "role": role, "sha256": hash_key(key)})
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(file)
    return key


def _key_list(data: Any, path: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(f'AUDITGATE_API_KEYS_FILE: {path} must hold {{"keys": [...]}}')
    keys: list[Any] = data["keys"]
    return keys


def _entry(item: Any, where: str) -> tuple[str, Principal]:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object")
    digest, tenant, role = item.get("sha256"), item.get("tenant"), item.get("role", "user")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ConfigError(f"{where}: 'sha256' must be the 64-hex-digit SHA-256 of the key")
    if not isinstance(tenant, str) or not tenant:
        raise ConfigError(f"{where}: 'tenant' must be a non-empty string")
    if role not in ("user", "admin"):
        raise ConfigError(f"{where}: 'role' must be 'user' or 'admin'")
    name = item.get("name") or tenant
    return digest.lower(), Principal(name=str(name), tenant=tenant, role=role)
