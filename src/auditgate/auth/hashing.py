"""How a keys file stores a key: a salted scrypt hash (current), or an unsalted SHA-256 (old).

Current entries (``auditgate keys add``, ``auditgate keys upgrade``)::

    {"name": "ci", "tenant": "acme", "role": "user", "prefix": "ag-Xy12AbCd",
     "scrypt": {"n": 16384, "r": 8, "p": 1, "salt": "<32 hex>", "hash": "<64 hex>"}}

- ``scrypt``: :func:`hashlib.scrypt` of the key under a random 16-byte salt of its own, with its
  cost parameters, so two files holding the same key hold different hashes, a hash says nothing
  about a key outside its file, and each guess at a key costs an attacker ~16 MiB and tens of
  milliseconds of one core.  The parameters are stored with each hash, so new entries can be
  made dearer without breaking the old ones.
- ``prefix``: the key's first :data:`PREFIX_LEN` characters (``ag-`` and 8 random ones), in
  clear.  They find the one entry to check without trying every salt (a key that starts like
  no entry is refused at once, for free), and tell an operator which key an entry is; 8 of the
  key's 43 random characters leave 210 secret bits.

Old entries (``{"sha256": "<64 hex>"}``, files written before salted hashes) still verify;
``auditgate keys upgrade`` rewrites them once their keys are given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
from typing import Any, Final, TypeGuard

from auditgate.errors import ConfigError

KEY_PREFIX: Final = "ag-"
"""How every key ``auditgate keys add`` makes begins."""
PREFIX_LEN: Final = 11
"""Characters of a key stored in clear with its hash: ``ag-`` and 8 random ones."""
GENERATED: Final = re.compile(r"ag-[A-Za-z0-9_-]{43}")
"""The whole shape of a generated key (``ag-`` + ``secrets.token_urlsafe(32)``)."""

# scrypt's "interactive" cost (Percival 2009): 16 MiB, ~30 ms of one core here.  Every
# distinct key pays it once per process (KeyRing caches the outcome).
N: Final = 1 << 14
R: Final = 8
P: Final = 1
_SALT_BYTES: Final = 16
# OpenSSL's default cap (32 MiB) leaves no room for entries made dearer later (n=2**15).
_MAXMEM: Final = 64 * 1024 * 1024


def legacy_digest(key: str) -> str:
    """The unsalted SHA-256 hex digest old keys files hold (``"sha256"``)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class KeyHash:
    """A key's salted scrypt hash and the cost it was made with."""

    salt: bytes
    """Random, one per entry."""
    digest: bytes = dataclasses.field(repr=False)
    """scrypt(key, salt, n, r, p), 32 bytes."""
    n: int = N
    r: int = R
    p: int = P

    @classmethod
    def new(cls, key: str) -> KeyHash:
        """The hash of ``key`` under a fresh salt, at the current cost."""
        salt = os.urandom(_SALT_BYTES)
        return cls(salt, _scrypt(key, salt, N, R, P), N, R, P)

    def matches(self, key: str) -> bool:
        """Whether ``key`` is the key hashed (slow: one scrypt; compared in constant time)."""
        return hmac.compare_digest(self.digest, _scrypt(key, self.salt, self.n, self.r, self.p))

    def to_json(self) -> dict[str, Any]:
        """The ``scrypt`` object of a keys-file entry."""
        return {
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> KeyHash:
        """Parse a keys-file ``scrypt`` object; ConfigError naming ``where`` if malformed."""
        expected = f"{where}: 'scrypt' must be {{'n', 'r', 'p', 'salt', 'hash'}}"
        if not isinstance(value, dict):
            raise ConfigError(expected)
        n, r, p = (value.get(name) for name in ("n", "r", "p"))
        if not (_positive(n) and _positive(r) and _positive(p)) or n & (n - 1):
            raise ConfigError(f"{expected}; n a power of two, r and p positive integers")
        if 128 * r * (n + p + 2) > _MAXMEM:  # what OpenSSL would refuse on every request
            raise ConfigError(f"{where}: scrypt cost n={n} r={r} p={p} needs over 64 MiB")
        try:
            salt, digest = bytes.fromhex(value["salt"]), bytes.fromhex(value["hash"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{expected}; 'salt' and 'hash' in hex") from None
        if not salt or len(digest) != 32:
            raise ConfigError(f"{expected}; a 32-byte 'hash'")
        return cls(salt, digest, n, r, p)


def _positive(value: Any) -> TypeGuard[int]:
    return type(value) is int and value > 0


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
