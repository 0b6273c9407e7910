"""API keys, tenants and roles."""

from auditgate.auth.keys import KeyRing, Principal, generate_key, hash_key

__all__ = ["KeyRing", "Principal", "generate_key", "hash_key"]
