"""API keys, tenants and roles."""

from auditgate.auth.hashing import KeyHash
from auditgate.auth.keys import KeyRing, Principal, generate_key

__all__ = ["KeyHash", "KeyRing", "Principal", "generate_key"]
