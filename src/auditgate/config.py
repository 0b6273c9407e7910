"""Settings: the only place the environment is read.

Audit settings keep NVIDIA Dynamo's ``DYN_AUDIT_*`` names and meanings (DESIGN §2); the
gateway's own settings use the ``AUDITGATE_`` prefix, and ``auditgate serve`` flags override
them.  Every bad value is a :class:`~auditgate.errors.ConfigError` naming the variable, raised at
startup, never later.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from auditgate.errors import ConfigError

if TYPE_CHECKING:
    # Their own modules (the otel sink's and Dynamo 1.4+'s settings), read by from_env.
    from auditgate.config_otlp import OtlpSettings
    from auditgate.config_s3 import S3Settings

SINK_NAMES: Final = ("stderr", "jsonl", "jsonl_gz", "sqlite", "postgres", "nats", "otel", "s3")
REDACTORS: Final = ("email", "api_key", "card", "ip")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
DEFAULT_CAPACITY_BYTES: Final = 256 << 20
"""Default ``DYN_AUDIT_CAPACITY_BYTES``: the JSON bytes each sink's in-memory queue may hold."""


class Secret:
    """A string that never shows itself in a repr, a log line or an f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Env:
    """Typed reads of one environment mapping; every error names its variable."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        aliases: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``aliases``: for a name, the names that win over it when set, first one first
        (Dynamo 1.4+'s ``DYN_REQUEST_TRACE_*`` over ``DYN_AUDIT_*``); errors name the one used."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        self._origin: dict[str, str] = {}
        if aliases:
            resolved = dict(env)
            for name, winners in aliases.items():
                for winner in winners:
                    if env.get(winner, "").strip():
                        resolved[name], self._origin[name] = env[winner], winner
                        break
            env = resolved
        self._env = env

    def label(self, name: str) -> str:
        """The variable a value of ``name`` was read from."""
        return self._origin.get(name, name)

    def text(self, name: str, default: str) -> str:
        value = self._env.get(name, "").strip()
        return value or default

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ConfigError(
            f"{self.label(name)}={raw!r}: expected one of 1/true/yes/on or 0/false/no/off"
        )

    def integer(self, name: str, default: int | None, *, minimum: int = 0) -> int | None:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{self.label(name)}={raw!r}: expected an integer") from None
        if value < minimum:
            raise ConfigError(f"{self.label(name)}={value}: must be >= {minimum}")
        return value

    def req_int(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.integer(name, default, minimum=minimum)
        assert value is not None
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{self.label(name)}={raw!r}: expected a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{self.label(name)}={value}: must be between {low} and {high}")
        return value

    def names(
        self, name: str, default: tuple[str, ...], allowed: tuple[str, ...]
    ) -> tuple[str, ...]:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        return parse_names(self.label(name), raw, allowed)


def parse_names(name: str, raw: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Parse a comma list, keeping order, dropping duplicates, rejecting unknown names."""
    values: list[str] = []
    for part in raw.split(","):
        value = part.strip().lower()
        if not value:
            continue
        if value not in allowed:
            raise ConfigError(
                f"{name}: unknown name {value!r}; expected some of {', '.join(allowed)}"
            )
        if value not in values:
            values.append(value)
    return tuple(values)


def _otlp_defaults() -> OtlpSettings:
    from auditgate.config_otlp import OtlpSettings

    return OtlpSettings()


def _s3_defaults() -> S3Settings:
    from auditgate.config_s3 import S3Settings

    return S3Settings()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditSettings:
    """The ``DYN_AUDIT_*`` settings (DESIGN §2)."""

    enabled: bool = False
    """Master switch; also true when force logging is on."""
    sinks: tuple[str, ...] = ("stderr",)
    """Sink names, in the order given."""
    capacity: int = 1024
    """Bound of each sink's in-memory queue, in records."""
    capacity_bytes: int = DEFAULT_CAPACITY_BYTES
    """Bound of each sink's in-memory queue, in bytes of the records' JSON."""
    force_logging: bool = False
    """Full records for every chat request, whatever ``store`` says."""
    usage_records: bool = True
    """Requests without ``store: true`` still yield a ``usage_only`` record."""
    sample_rate: float = 1.0
    """Deterministic sampling of ``usage_only`` and force-logged records."""
    output_path: str = "./audit/audit.jsonl"
    """``jsonl``: the file; ``jsonl_gz``: the segment prefix."""
    jsonl_buffer_bytes: int = 1 << 20
    """Bytes buffered by the file sinks before a write."""
    jsonl_flush_interval_ms: int = 1000
    """Longest time a record waits in a file sink's buffer."""
    jsonl_gz_roll_bytes: int = 256 << 20
    """Uncompressed bytes after which a ``jsonl_gz`` segment is closed."""
    jsonl_gz_roll_lines: int | None = None
    """Lines after which a ``jsonl_gz`` segment is closed (unset: no line limit)."""
    jsonl_gz_max_bytes: int | None = None
    """Retention: bytes the finished ``jsonl_gz`` segments may take (``..._FILE_MAX_BYTES``)."""
    jsonl_gz_max_age_s: float | None = None
    """Retention: age after which a finished segment is deleted (``..._FILE_MAX_AGE_SECS``)."""
    sqlite_path: str = "./auditgate.db"
    """SQLite sink and default store."""
    retention_days: int | None = None
    """``DYN_AUDIT_RETENTION_DAYS``: the ``sqlite`` and ``postgres`` sinks delete, every hour,
    the records of UTC days before the one this many days ago (unset: keep everything)."""
    postgres_url: Secret | None = None
    """PostgreSQL sink DSN; may hold a password, hence a Secret."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server for the JetStream sink."""
    nats_subject: str = "dynamo.audit.v1"
    """Subject records are published on."""
    nats_stream: str = "DYNAMO_AUDIT"
    """JetStream stream that captures the subject; created when missing."""
    durability: str = "best_effort"
    """``best_effort`` or ``durable`` (DESIGN §6)."""
    spool_dir: str = "./audit/spool"
    """Durable mode's write-ahead spool."""
    spool_max_bytes: int = 10 << 30
    """Spool bound; past it ``store: true`` requests get 503."""
    process: bool = False
    """``DYN_AUDIT_PROCESS``: build, process and deliver the records in a helper process
    (:mod:`auditgate.audit.process`), off the serving event loop (best effort only)."""
    process_cpus: tuple[int, ...] = ()
    """``DYN_AUDIT_PROCESS_CPUS``: the CPUs the audit process runs on (empty: the gateway's)."""
    integrity: bool = False
    """Per-writer hash chain."""
    integrity_key: Secret | None = None
    """Key for signed checkpoints."""
    checkpoint_every: int = 1000
    """A signed checkpoint after this many records of a writer (integrity on)."""
    checkpoint_interval_s: float = 60.0
    """...and at least this often while records keep coming, and at shutdown."""
    redact: tuple[str, ...] = ()
    """Built-in redaction detectors."""
    redact_patterns_file: str | None = None
    """File of custom ``KIND REGEX`` redaction patterns (see ``auditgate.audit.redact``)."""
    header_capture: tuple[str, ...] = ()
    """Request headers (lower-case) copied into records."""
    otel_max_payload_bytes: int = 4 << 20
    """``otel`` sink: a record whose JSON is longer is sent as an incomplete marker (Dynamo's
    rule and names: ``DYN_REQUEST_TRACE_OTEL_MAX_PAYLOAD_BYTES`` > ``DYN_AUDIT_...``)."""
    otlp: OtlpSettings = dataclasses.field(default_factory=_otlp_defaults)
    output_format: str = "auditgate"
    """What the stderr, jsonl, jsonl_gz, nats and otel sinks write: ``auditgate`` records, or
    Dynamo 1.4+'s ``dynamo-request-trace`` rows (``DYN_AUDIT_FORMAT``)."""
    """Where and how the ``otel`` sink exports (the standard ``OTEL_EXPORTER_OTLP_*``)."""
    s3: S3Settings = dataclasses.field(default_factory=_s3_defaults)
    """Where and how the ``s3`` lake sink writes (``DYN_AUDIT_S3_*``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuditSettings:
        from auditgate.config_dynamo import (
            DYNAMO_NAMES,
            file_sinks,
            first_int,
            max_age,
            output_format,
            request_trace_switches,
        )
        from auditgate.config_otlp import OtlpSettings
        from auditgate.config_s3 import S3Settings

        env = Env(environ, DYNAMO_NAMES)
        traced, payloads = request_trace_switches(env)
        force = env.flag("DYN_AUDIT_FORCE_LOGGING", False) or payloads
        sinks = file_sinks(env, env.names("DYN_AUDIT_SINKS", ("stderr",), (*SINK_NAMES, "file")))
        postgres_url = env.optional("DYN_AUDIT_POSTGRES_URL")
        enabled = env.flag("DYN_AUDIT_ENABLED", False) or force or traced
        if enabled and "postgres" in sinks and postgres_url is None:
            raise ConfigError("DYN_AUDIT_SINKS lists postgres but DYN_AUDIT_POSTGRES_URL is unset")
        s3 = S3Settings.from_env(environ)
        if enabled and "s3" in sinks and s3.bucket is None:
            raise ConfigError("DYN_AUDIT_SINKS lists s3 but DYN_AUDIT_S3_BUCKET is unset")
        durability = env.text("DYN_AUDIT_DURABILITY", "best_effort").lower()
        if durability not in ("best_effort", "durable"):
            raise ConfigError(
                f"DYN_AUDIT_DURABILITY={durability!r}: expected best_effort or durable"
            )
        key = env.optional("DYN_AUDIT_INTEGRITY_KEY")
        headers = env.optional("DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST") or ""
        return cls(
            enabled=enabled,
            sinks=sinks,
            capacity=env.req_int("DYN_AUDIT_CAPACITY", 1024, minimum=1),
            capacity_bytes=env.req_int(
                "DYN_AUDIT_CAPACITY_BYTES", DEFAULT_CAPACITY_BYTES, minimum=1
            ),
            force_logging=force,
            usage_records=env.flag("DYN_AUDIT_USAGE_RECORDS", True),
            sample_rate=env.number("DYN_AUDIT_SAMPLE_RATE", 1.0, low=0.0, high=1.0),
            output_path=env.text("DYN_AUDIT_OUTPUT_PATH", "./audit/audit.jsonl"),
            jsonl_buffer_bytes=env.req_int("DYN_AUDIT_JSONL_BUFFER_BYTES", 1 << 20, minimum=1),
            jsonl_flush_interval_ms=env.req_int(
                "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS", 1000, minimum=1
            ),
            jsonl_gz_roll_bytes=env.req_int("DYN_AUDIT_JSONL_GZ_ROLL_BYTES", 256 << 20, minimum=1),
            jsonl_gz_roll_lines=env.integer("DYN_AUDIT_JSONL_GZ_ROLL_LINES", None, minimum=1),
            sqlite_path=env.text("DYN_AUDIT_SQLITE_PATH", "./auditgate.db"),
            retention_days=env.integer("DYN_AUDIT_RETENTION_DAYS", None, minimum=1),
            postgres_url=Secret(postgres_url) if postgres_url else None,
            nats_url=env.text("DYN_AUDIT_NATS_URL", "nats://127.0.0.1:4222"),
            nats_subject=env.text("DYN_AUDIT_NATS_SUBJECT", "dynamo.audit.v1"),
            nats_stream=env.text("DYN_AUDIT_NATS_STREAM", "DYNAMO_AUDIT"),
            durability=durability,
            spool_dir=env.text("DYN_AUDIT_SPOOL_DIR", "./audit/spool"),
            spool_max_bytes=env.req_int("DYN_AUDIT_SPOOL_MAX_BYTES", 10 << 30, minimum=1),
            process=env.flag("DYN_AUDIT_PROCESS", False),
            process_cpus=cpu_list(env, "DYN_AUDIT_PROCESS_CPUS"),
            integrity=env.flag("DYN_AUDIT_INTEGRITY", False),
            integrity_key=Secret(key) if key else None,
            checkpoint_every=env.req_int("DYN_AUDIT_CHECKPOINT_EVERY", 1000, minimum=1),
            checkpoint_interval_s=env.number(
                "DYN_AUDIT_CHECKPOINT_INTERVAL_S", 60.0, low=0.01, high=86400
            ),
            redact=env.names("DYN_AUDIT_REDACT", (), REDACTORS),
            redact_patterns_file=env.optional("DYN_AUDIT_REDACT_PATTERNS_FILE"),
            header_capture=tuple(h.strip().lower() for h in headers.split(",") if h.strip()),
            otel_max_payload_bytes=first_int(
                env,
                ("DYN_REQUEST_TRACE_OTEL_MAX_PAYLOAD_BYTES", "DYN_AUDIT_OTEL_MAX_PAYLOAD_BYTES"),
                4 << 20,
            ),
            jsonl_gz_max_bytes=env.integer("DYN_REQUEST_TRACE_FILE_MAX_BYTES", None, minimum=1),
            jsonl_gz_max_age_s=max_age(env),
            otlp=OtlpSettings.from_env(environ),
            s3=s3,
            output_format=output_format(env),
        )


def cpu_list(env: Env, name: str) -> tuple[int, ...]:
    """A comma-separated list of CPU numbers (``0,2``), empty when unset."""
    raw = env.optional(name) or ""
    try:
        cpus = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected CPU numbers separated by commas") from None
    if any(cpu < 0 for cpu in cpus):
        raise ConfigError(f"{name}={raw!r}: CPU numbers are >= 0")
    return cpus


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """The gateway's own ``AUDITGATE_*`` settings; ``auditgate serve`` flags override them."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    workers: int = 1
    """Processes sharing the port; each is its own audit writer."""
    engine: str = "mock"
    """``mock`` or ``openai``."""
    models: tuple[str, ...] = ("mock",)
    """Model ids the mock engine serves."""
    upstream_url: str | None = None
    """Base URL of the default OpenAI-compatible upstream, e.g. ``http://127.0.0.1:9000/v1``."""
    upstream_routes: tuple[tuple[str, str], ...] = ()
    """Model -> upstream base URL routing table (``model=url,model=url``)."""
    upstream_api_key: Secret | None = None
    """Key sent to upstreams; the client's own key is never forwarded unless passthrough is on."""
    upstream_key_passthrough: bool = False
    """Forward the client's ``Authorization`` header upstream instead of the configured key."""
    responses: str = "translate"
    """``POST /v1/responses`` in front of an upstream: ``translate`` to chat completions, or
    ``passthrough`` to the upstream's own ``/v1/responses``."""
    upstream_timeout_s: float = 600.0
    """Total time allowed for one upstream request."""
    upstream_connect_timeout_s: float = 10.0
    """Time allowed to connect to an upstream."""
    passthrough_url: str | None = None
    """Where paths the gateway does not serve are proxied (openai engine): unset means the
    upstream URL without its final ``/v1``; ``off`` answers them 404 as the mock engine does."""
    api_keys_file: str | None = None
    """API keys file; unset means open mode."""
    store_url: str | None = None
    """Stored-completions store; default: the configured sqlite/postgres sink."""
    grpc_port: int | None = None
    """gRPC port (off when unset)."""
    max_body_bytes: int = 8 << 20
    """Largest request body accepted; larger bodies get 413."""
    max_header_bytes: int = 64 << 10
    """Largest request line and headers accepted; a larger head gets 431 (``serve`` only)."""
    header_timeout_s: float = 30.0
    """Time allowed for a request line and headers to arrive; then 408 (``serve`` only)."""
    body_timeout_s: float = 60.0
    """Time allowed for a request body to arrive once its headers did; then 408."""
    mock_ttft_ms: float = 0.0
    """Mock engine: delay before the first token."""
    mock_itl_ms: float = 0.0
    """Mock engine: delay between tokens."""
    drain_timeout_s: float = 10.0
    """Deadline for draining audit queues at shutdown."""
    log_level: str = "info"
    """Log level of the gateway's own logs."""
    ui: bool = True
    """Serve the web console at ``/ui``."""
    ui_secret: Secret | None = None
    """Signs console sessions; random per process when unset (``--workers N`` needs it set so
    every worker accepts every session)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        env = Env(environ)
        engine = env.text("AUDITGATE_ENGINE", "mock").lower()
        if engine not in ("mock", "openai"):
            raise ConfigError(f"AUDITGATE_ENGINE={engine!r}: expected mock or openai")
        models = tuple(
            m.strip() for m in env.text("AUDITGATE_MODELS", "mock").split(",") if m.strip()
        )
        key = env.optional("AUDITGATE_UPSTREAM_API_KEY")
        responses = env.text("AUDITGATE_RESPONSES", "translate").lower()
        if responses not in ("translate", "passthrough"):
            raise ConfigError(
                f"AUDITGATE_RESPONSES={responses!r}: expected translate or passthrough"
            )
        grpc = env.integer("AUDITGATE_GRPC_PORT", None, minimum=1)
        ui_secret = env.optional("AUDITGATE_UI_SECRET")
        return cls(
            host=env.text("AUDITGATE_HOST", "127.0.0.1"),
            port=env.req_int("AUDITGATE_PORT", 8000, minimum=0),
            workers=env.req_int("AUDITGATE_WORKERS", 1, minimum=1),
            engine=engine,
            models=models or ("mock",),
            upstream_url=env.optional("AUDITGATE_UPSTREAM_URL"),
            upstream_routes=parse_routes(env.optional("AUDITGATE_UPSTREAM_ROUTES") or ""),
            upstream_api_key=Secret(key) if key else None,
            upstream_key_passthrough=env.flag("AUDITGATE_UPSTREAM_KEY_PASSTHROUGH", False),
            responses=responses,
            upstream_timeout_s=env.number(
                "AUDITGATE_UPSTREAM_TIMEOUT", 600.0, low=0.001, high=86400
            ),
            upstream_connect_timeout_s=env.number(
                "AUDITGATE_UPSTREAM_CONNECT_TIMEOUT", 10.0, low=0.001, high=3600
            ),
            passthrough_url=env.optional("AUDITGATE_PASSTHROUGH_URL"),
            api_keys_file=env.optional("AUDITGATE_API_KEYS_FILE"),
            store_url=env.optional("AUDITGATE_STORE_URL"),
            grpc_port=grpc,
            max_body_bytes=env.req_int("AUDITGATE_MAX_BODY_BYTES", 8 << 20, minimum=1024),
            max_header_bytes=env.req_int("AUDITGATE_MAX_HEADER_BYTES", 64 << 10, minimum=1024),
            header_timeout_s=env.number("AUDITGATE_HEADER_TIMEOUT", 30.0, low=1, high=3600),
            body_timeout_s=env.number("AUDITGATE_BODY_TIMEOUT", 60.0, low=1, high=3600),
            mock_ttft_ms=env.number("AUDITGATE_MOCK_TTFT_MS", 0.0, low=0.0, high=600_000),
            mock_itl_ms=env.number("AUDITGATE_MOCK_ITL_MS", 0.0, low=0.0, high=600_000),
            drain_timeout_s=env.number("AUDITGATE_DRAIN_TIMEOUT", 10.0, low=0.0, high=3600),
            log_level=env.text("AUDITGATE_LOG_LEVEL", "info").lower(),
            ui=env.flag("AUDITGATE_UI", True),
            ui_secret=Secret(ui_secret) if ui_secret else None,
        )

    def validate(self) -> None:
        """Check cross-field rules after flags were applied."""
        if self.engine == "openai" and not (self.upstream_url or self.upstream_routes):
            raise ConfigError(
                "engine 'openai' needs AUDITGATE_UPSTREAM_URL (--upstream) "
                "or AUDITGATE_UPSTREAM_ROUTES"
            )
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ConfigError(f"AUDITGATE_LOG_LEVEL={self.log_level!r}: unknown level")
        # uvloop binds port % 65536 rather than refusing 99999: check here.
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"AUDITGATE_PORT={self.port}: must be 0-65535 (0: any free port)")
        if self.grpc_port is not None and not 1 <= self.grpc_port <= 65535:
            raise ConfigError(f"AUDITGATE_GRPC_PORT={self.grpc_port}: must be 1-65535")


def parse_routes(raw: str) -> tuple[tuple[str, str], ...]:
    """Parse ``model=url,model=url`` into routing pairs."""
    routes: list[tuple[str, str]] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        model, sep, url = part.partition("=")
        if not sep or not model.strip() or not url.strip():
            raise ConfigError(f"AUDITGATE_UPSTREAM_ROUTES: {part.strip()!r} is not model=url")
        routes.append((model.strip(), url.strip()))
    return tuple(routes)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything one gateway process is configured with."""

    audit: AuditSettings
    gateway: GatewaySettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return cls(AuditSettings.from_env(environ), GatewaySettings.from_env(environ))
