"""Settings parsing, variable by variable: each good value lands in its field, each bad one is
a ConfigError whose message names the variable (DESIGN §2)."""

from __future__ import annotations

from typing import Any

import pytest

from auditgate.config import AuditSettings, GatewaySettings, Secret, Settings
from auditgate.errors import ConfigError

AUDIT_GOOD: list[tuple[str, str, str, Any]] = [
    ("DYN_AUDIT_ENABLED", "yes", "enabled", True),
    ("DYN_AUDIT_ENABLED", "OFF", "enabled", False),
    ("DYN_AUDIT_SINKS", "jsonl, Sqlite,jsonl", "sinks", ("jsonl", "sqlite")),
    ("DYN_AUDIT_CAPACITY", "7", "capacity", 7),
    ("DYN_AUDIT_CAPACITY_BYTES", "4096", "capacity_bytes", 4096),
    ("DYN_AUDIT_FORCE_LOGGING", "1", "force_logging", True),
    ("DYN_AUDIT_USAGE_RECORDS", "0", "usage_records", False),
    ("DYN_AUDIT_SAMPLE_RATE", "0.25", "sample_rate", 0.25),
    ("DYN_AUDIT_OUTPUT_PATH", "/x/a.jsonl", "output_path", "/x/a.jsonl"),
    ("DYN_AUDIT_JSONL_BUFFER_BYTES", "10", "jsonl_buffer_bytes", 10),
    ("DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS", "5", "jsonl_flush_interval_ms", 5),
    ("DYN_AUDIT_JSONL_GZ_ROLL_BYTES", "100", "jsonl_gz_roll_bytes", 100),
    ("DYN_AUDIT_JSONL_GZ_ROLL_LINES", "3", "jsonl_gz_roll_lines", 3),
    ("DYN_AUDIT_SQLITE_PATH", "/x/a.db", "sqlite_path", "/x/a.db"),
    (
        "DYN_AUDIT_POSTGRES_URL",
        "postgresql://u:pw@h/db",
        "postgres_url",
        Secret("postgresql://u:pw@h/db"),
    ),
    ("DYN_AUDIT_NATS_URL", "nats://h:4333", "nats_url", "nats://h:4333"),
    ("DYN_AUDIT_NATS_SUBJECT", "a.b", "nats_subject", "a.b"),
    ("DYN_AUDIT_NATS_STREAM", "S", "nats_stream", "S"),
    ("DYN_AUDIT_DURABILITY", "DURABLE", "durability", "durable"),
    ("DYN_AUDIT_SPOOL_DIR", "/x/spool", "spool_dir", "/x/spool"),
    ("DYN_AUDIT_SPOOL_MAX_BYTES", "1000", "spool_max_bytes", 1000),
    ("DYN_AUDIT_PROCESS", "1", "process", True),
    ("DYN_AUDIT_INTEGRITY", "true", "integrity", True),
    ("DYN_AUDIT_INTEGRITY_KEY", "k", "integrity_key", Secret("k")),
    ("DYN_AUDIT_CHECKPOINT_EVERY", "10", "checkpoint_every", 10),
    ("DYN_AUDIT_CHECKPOINT_INTERVAL_S", "0.5", "checkpoint_interval_s", 0.5),
    ("DYN_AUDIT_REDACT", "email, IP", "redact", ("email", "ip")),
    ("DYN_AUDIT_REDACT_PATTERNS_FILE", "/x/p.txt", "redact_patterns_file", "/x/p.txt"),
    (
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST",
        "X-Trace, User-Agent ,",
        "header_capture",
        ("x-trace", "user-agent"),
    ),
    ("DYN_AUDIT_OTEL_MAX_PAYLOAD_BYTES", "100", "otel_max_payload_bytes", 100),
]

AUDIT_BAD: list[tuple[dict[str, str], str]] = [
    ({"DYN_AUDIT_ENABLED": "maybe"}, "DYN_AUDIT_ENABLED='maybe': expected one of 1/true/yes/on"),
    ({"DYN_AUDIT_SINKS": "kafka"}, "DYN_AUDIT_SINKS: unknown name 'kafka'"),
    ({"DYN_AUDIT_CAPACITY": "0"}, "DYN_AUDIT_CAPACITY=0: must be >= 1"),
    ({"DYN_AUDIT_CAPACITY": "ten"}, "DYN_AUDIT_CAPACITY='ten': expected an integer"),
    ({"DYN_AUDIT_CAPACITY_BYTES": "-1"}, "DYN_AUDIT_CAPACITY_BYTES=-1: must be >= 1"),
    ({"DYN_AUDIT_FORCE_LOGGING": "2"}, "DYN_AUDIT_FORCE_LOGGING='2'"),
    ({"DYN_AUDIT_USAGE_RECORDS": "nope"}, "DYN_AUDIT_USAGE_RECORDS='nope'"),
    ({"DYN_AUDIT_SAMPLE_RATE": "1.5"}, "DYN_AUDIT_SAMPLE_RATE=1.5: must be between 0.0 and 1.0"),
    ({"DYN_AUDIT_SAMPLE_RATE": "half"}, "DYN_AUDIT_SAMPLE_RATE='half': expected a number"),
    ({"DYN_AUDIT_JSONL_BUFFER_BYTES": "0"}, "DYN_AUDIT_JSONL_BUFFER_BYTES=0: must be >= 1"),
    ({"DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "x"}, "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS='x'"),
    ({"DYN_AUDIT_JSONL_GZ_ROLL_BYTES": "0"}, "DYN_AUDIT_JSONL_GZ_ROLL_BYTES=0: must be >= 1"),
    ({"DYN_AUDIT_JSONL_GZ_ROLL_LINES": "0"}, "DYN_AUDIT_JSONL_GZ_ROLL_LINES=0: must be >= 1"),
    ({"DYN_AUDIT_DURABILITY": "fast"}, "DYN_AUDIT_DURABILITY='fast': expected best_effort or"),
    ({"DYN_AUDIT_SPOOL_MAX_BYTES": "0"}, "DYN_AUDIT_SPOOL_MAX_BYTES=0: must be >= 1"),
    ({"DYN_AUDIT_INTEGRITY": "y?"}, "DYN_AUDIT_INTEGRITY='y?'"),
    ({"DYN_AUDIT_CHECKPOINT_EVERY": "0"}, "DYN_AUDIT_CHECKPOINT_EVERY=0: must be >= 1"),
    ({"DYN_AUDIT_CHECKPOINT_INTERVAL_S": "0"}, "DYN_AUDIT_CHECKPOINT_INTERVAL_S=0.0: must be"),
    ({"DYN_AUDIT_REDACT": "email,ssn"}, "DYN_AUDIT_REDACT: unknown name 'ssn'"),
    (
        {"DYN_AUDIT_ENABLED": "1", "DYN_AUDIT_SINKS": "postgres"},
        "DYN_AUDIT_SINKS lists postgres but DYN_AUDIT_POSTGRES_URL is unset",
    ),
]

GATEWAY_GOOD: list[tuple[str, str, str, Any]] = [
    ("AUDITGATE_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("AUDITGATE_PORT", "0", "port", 0),
    ("AUDITGATE_WORKERS", "4", "workers", 4),
    ("AUDITGATE_ENGINE", "OpenAI", "engine", "openai"),
    ("AUDITGATE_MODELS", "a, b,,", "models", ("a", "b")),
    ("AUDITGATE_UPSTREAM_URL", "http://h/v1", "upstream_url", "http://h/v1"),
    (
        "AUDITGATE_UPSTREAM_ROUTES",
        "a=http://x/v1, b=http://y/v1",
        "upstream_routes",
        (("a", "http://x/v1"), ("b", "http://y/v1")),
    ),
    ("AUDITGATE_UPSTREAM_API_KEY", "sk-1", "upstream_api_key", Secret("sk-1")),
    ("AUDITGATE_UPSTREAM_KEY_PASSTHROUGH", "on", "upstream_key_passthrough", True),
    ("AUDITGATE_UPSTREAM_TIMEOUT", "12.5", "upstream_timeout_s", 12.5),
    ("AUDITGATE_UPSTREAM_CONNECT_TIMEOUT", "2", "upstream_connect_timeout_s", 2.0),
    ("AUDITGATE_PASSTHROUGH_URL", "http://h", "passthrough_url", "http://h"),
    ("AUDITGATE_API_KEYS_FILE", "/x/keys.json", "api_keys_file", "/x/keys.json"),
    ("AUDITGATE_STORE_URL", "sqlite:///x.db", "store_url", "sqlite:///x.db"),
    ("AUDITGATE_GRPC_PORT", "8001", "grpc_port", 8001),
    ("AUDITGATE_MAX_BODY_BYTES", "2048", "max_body_bytes", 2048),
    ("AUDITGATE_MAX_HEADER_BYTES", "4096", "max_header_bytes", 4096),
    ("AUDITGATE_HEADER_TIMEOUT", "5", "header_timeout_s", 5.0),
    ("AUDITGATE_BODY_TIMEOUT", "7", "body_timeout_s", 7.0),
    ("AUDITGATE_MOCK_TTFT_MS", "3", "mock_ttft_ms", 3.0),
    ("AUDITGATE_MOCK_ITL_MS", "1.5", "mock_itl_ms", 1.5),
    ("AUDITGATE_DRAIN_TIMEOUT", "0", "drain_timeout_s", 0.0),
    ("AUDITGATE_LOG_LEVEL", "DEBUG", "log_level", "debug"),
]

GATEWAY_BAD: list[tuple[dict[str, str], str]] = [
    ({"AUDITGATE_PORT": "http"}, "AUDITGATE_PORT='http': expected an integer"),
    ({"AUDITGATE_PORT": "99999"}, "AUDITGATE_PORT=99999: must be 0-65535"),
    ({"AUDITGATE_WORKERS": "0"}, "AUDITGATE_WORKERS=0: must be >= 1"),
    ({"AUDITGATE_ENGINE": "vllm"}, "AUDITGATE_ENGINE='vllm': expected mock or openai"),
    ({"AUDITGATE_ENGINE": "openai"}, "engine 'openai' needs AUDITGATE_UPSTREAM_URL"),
    ({"AUDITGATE_UPSTREAM_ROUTES": "a=http://x, b"}, "AUDITGATE_UPSTREAM_ROUTES: 'b' is not"),
    ({"AUDITGATE_UPSTREAM_KEY_PASSTHROUGH": "sure"}, "AUDITGATE_UPSTREAM_KEY_PASSTHROUGH='sure'"),
    ({"AUDITGATE_UPSTREAM_TIMEOUT": "0"}, "AUDITGATE_UPSTREAM_TIMEOUT=0.0: must be between"),
    ({"AUDITGATE_UPSTREAM_CONNECT_TIMEOUT": "x"}, "AUDITGATE_UPSTREAM_CONNECT_TIMEOUT='x'"),
    ({"AUDITGATE_GRPC_PORT": "0"}, "AUDITGATE_GRPC_PORT=0: must be >= 1"),
    ({"AUDITGATE_GRPC_PORT": "70000"}, "AUDITGATE_GRPC_PORT=70000: must be 1-65535"),
    ({"AUDITGATE_MAX_BODY_BYTES": "100"}, "AUDITGATE_MAX_BODY_BYTES=100: must be >= 1024"),
    ({"AUDITGATE_MAX_HEADER_BYTES": "1"}, "AUDITGATE_MAX_HEADER_BYTES=1: must be >= 1024"),
    ({"AUDITGATE_HEADER_TIMEOUT": "0.5"}, "AUDITGATE_HEADER_TIMEOUT=0.5: must be between"),
    ({"AUDITGATE_BODY_TIMEOUT": "4000"}, "AUDITGATE_BODY_TIMEOUT=4000.0: must be between"),
    ({"AUDITGATE_MOCK_TTFT_MS": "-1"}, "AUDITGATE_MOCK_TTFT_MS=-1.0: must be between"),
    ({"AUDITGATE_MOCK_ITL_MS": "fast"}, "AUDITGATE_MOCK_ITL_MS='fast': expected a number"),
    ({"AUDITGATE_DRAIN_TIMEOUT": "-1"}, "AUDITGATE_DRAIN_TIMEOUT=-1.0: must be between"),
    ({"AUDITGATE_LOG_LEVEL": "loud"}, "AUDITGATE_LOG_LEVEL='loud': unknown level"),
]


@pytest.mark.parametrize(("name", "value", "field", "expected"), AUDIT_GOOD)
def test_each_audit_variable_sets_its_field(
    name: str, value: str, field: str, expected: Any
) -> None:
    """A good value of one DYN_AUDIT_* variable sets that field and leaves the rest default."""
    settings = AuditSettings.from_env({name: value})
    assert getattr(settings, field) == expected
    others = {f: getattr(settings, f) for f in AuditSettings.__dataclass_fields__ if f != field}
    defaults = AuditSettings()
    if field == "force_logging":  # force logging also switches audit on (DESIGN §2)
        assert others.pop("enabled") is True
    assert others == {f: getattr(defaults, f) for f in others}


@pytest.mark.parametrize(("env", "message"), AUDIT_BAD)
def test_each_bad_audit_value_is_an_error_naming_its_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        AuditSettings.from_env(env)
    assert message in str(caught.value)


@pytest.mark.parametrize(("name", "value", "field", "expected"), GATEWAY_GOOD)
def test_each_gateway_variable_sets_its_field(
    name: str, value: str, field: str, expected: Any
) -> None:
    """A good value of one AUDITGATE_* variable sets that field; the rest stay default."""
    settings = GatewaySettings.from_env({name: value})
    assert getattr(settings, field) == expected
    defaults = GatewaySettings()
    others = [f for f in GatewaySettings.__dataclass_fields__ if f != field]
    assert {f: getattr(settings, f) for f in others} == {f: getattr(defaults, f) for f in others}


@pytest.mark.parametrize(("env", "message"), GATEWAY_BAD)
def test_each_bad_gateway_value_is_an_error_naming_its_variable(
    env: dict[str, str], message: str
) -> None:
    """Bad values fail in from_env or in validate(), which serve runs before anything starts."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env).gateway.validate()
    assert message in str(caught.value)


def test_empty_values_mean_the_default() -> None:
    """A variable set to blanks is unset (a shell's ``VAR=`` must not be a bad value)."""
    names = {name for name, *_ in AUDIT_GOOD} | {name for name, *_ in GATEWAY_GOOD}
    blank = Settings.from_env(dict.fromkeys(names, "  "))
    assert blank == Settings(AuditSettings(), GatewaySettings())


def test_secrets_never_show_in_a_repr() -> None:
    """The PostgreSQL password and the integrity key stay out of reprs and logs."""
    settings = AuditSettings.from_env(
        {"DYN_AUDIT_POSTGRES_URL": "postgresql://u:hunter2@h/db", "DYN_AUDIT_INTEGRITY_KEY": "k3y"}
    )
    assert "hunter2" not in repr(settings) and "k3y" not in repr(settings)
