"""The ``otel`` sink's settings: the standard ``OTEL_EXPORTER_OTLP_*`` variables, read as the
OpenTelemetry specification defines them (part of :mod:`auditgate.config`)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Final

from auditgate.config import Env, Secret
from auditgate.errors import ConfigError

OTLP_PROTOCOLS: Final = ("http/protobuf", "grpc")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OtlpSettings:
    """The OpenTelemetry exporter settings of the ``otel`` sink, read as the OTel specification
    defines them: each ``OTEL_EXPORTER_OTLP_LOGS_*`` variable wins over its
    ``OTEL_EXPORTER_OTLP_*`` one (headers: merged, the logs ones winning per key)."""

    protocol: str = "http/protobuf"
    """``http/protobuf`` (the specification's default) or ``grpc``; ``http/json`` is refused."""
    endpoint: str = "http://localhost:4318/v1/logs"
    """http/protobuf: the full URL; grpc: ``scheme://host:port`` (scheme optional)."""
    headers: tuple[tuple[str, Secret], ...] = ()
    """Sent with every export (e.g. an API key): values are Secrets, never shown."""
    timeout_s: float = 10.0
    """Longest one export may take (the variables are in milliseconds)."""
    insecure: bool = False
    """grpc, endpoint without a scheme: plaintext instead of TLS."""
    compression: str = "none"
    """``gzip`` or ``none``."""
    service_name: str = "auditgate"
    """``service.name`` of the resource (``OTEL_SERVICE_NAME``)."""
    resource: tuple[tuple[str, str], ...] = ()
    """Other resource attributes (``OTEL_RESOURCE_ATTRIBUTES``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OtlpSettings:
        env = Env(environ)

        def pick(suffix: str) -> tuple[str, str | None]:
            name = "OTEL_EXPORTER_OTLP_LOGS_" + suffix
            if env.optional(name) is not None:
                return name, env.optional(name)
            return "OTEL_EXPORTER_OTLP_" + suffix, env.optional("OTEL_EXPORTER_OTLP_" + suffix)

        protocol_name, protocol = pick("PROTOCOL")
        protocol = (protocol or "http/protobuf").lower()
        if protocol not in OTLP_PROTOCOLS:
            raise ConfigError(
                f"{protocol_name}={protocol!r}: expected one of {', '.join(OTLP_PROTOCOLS)}"
            )
        timeout_name, timeout = pick("TIMEOUT")
        compression_name, compression = pick("COMPRESSION")
        compression = (compression or "none").lower()
        if compression not in ("gzip", "none"):
            raise ConfigError(f"{compression_name}={compression!r}: expected gzip or none")
        resource = parse_pairs("OTEL_RESOURCE_ATTRIBUTES", env.optional("OTEL_RESOURCE_ATTRIBUTES"))
        service = env.optional("OTEL_SERVICE_NAME") or dict(resource).get("service.name")
        headers: dict[str, str] = {}
        for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS"):
            headers |= {k.lower(): v for k, v in parse_pairs(name, env.optional(name))}
        return cls(
            protocol=protocol,
            endpoint=otlp_endpoint(env, protocol),
            headers=tuple((k, Secret(v)) for k, v in headers.items()),
            timeout_s=_millis(timeout_name, timeout),
            insecure=env.flag(pick("INSECURE")[0], False),
            compression=compression,
            service_name=service or "auditgate",
            resource=tuple((k, v) for k, v in resource if k != "service.name"),
        )


def otlp_endpoint(env: Env, protocol: str) -> str:
    """The logs endpoint: ``..._LOGS_ENDPOINT`` as it is; else ``..._ENDPOINT`` (plus
    ``/v1/logs`` for http/protobuf); else the specification's default for the protocol."""
    logs = env.optional("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    if logs is not None:
        return logs
    base = env.optional("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return base or "http://localhost:4317"
    if base is None:
        return "http://localhost:4318/v1/logs"
    return base.rstrip("/") + "/v1/logs"


def parse_pairs(name: str, raw: str | None) -> list[tuple[str, str]]:
    """``k1=v1,k2=v2`` with percent-encoded values (W3C Baggage, as OTel's headers and resource
    attributes are written); ConfigError naming ``name`` for an entry without ``=``."""
    pairs: list[tuple[str, str]] = []
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            # The entry may hold a secret (a header value): name its position, not its text.
            raise ConfigError(f"{name}: entry {len(pairs) + 1} is not key=value")
        pairs.append((key.strip(), urllib.parse.unquote(value.strip())))
    return pairs


def _millis(name: str, raw: str | None) -> float:
    if raw is None:
        return 10.0
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected milliseconds") from None
    if not 0 < value <= 3_600_000:
        raise ConfigError(f"{name}={raw!r}: must be between 1 and 3600000 milliseconds")
    return value / 1000.0
