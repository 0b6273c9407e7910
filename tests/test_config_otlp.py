"""The otel sink's settings: the standard OTEL_EXPORTER_OTLP_* variables and Dynamo's
max-payload names."""

from __future__ import annotations

import pytest

from auditgate.config import AuditSettings, Secret
from auditgate.config_otlp import OtlpSettings
from auditgate.errors import ConfigError


def test_defaults_follow_the_specification() -> None:
    """http/protobuf to localhost:4318/v1/logs, 10 s, no compression, service auditgate."""
    assert OtlpSettings.from_env({}) == OtlpSettings(
        protocol="http/protobuf",
        endpoint="http://localhost:4318/v1/logs",
        headers=(),
        timeout_s=10.0,
        insecure=False,
        compression="none",
        service_name="auditgate",
        resource=(),
    )
    assert OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).endpoint == (
        "http://localhost:4317"
    )


def test_logs_variables_win_over_the_general_ones() -> None:
    """Each _LOGS_ variable wins; the general endpoint gets /v1/logs for http/protobuf only."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "500",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-a=general,x-b=kept",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "X-A=logs%20value",
        "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "gzip",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,deployment.environment=prod",
    }
    assert OtlpSettings.from_env(env) == OtlpSettings(
        protocol="http/protobuf",
        endpoint="http://collector:4318/v1/logs",
        headers=(("x-a", Secret("logs value")), ("x-b", Secret("kept"))),
        timeout_s=0.5,
        compression="gzip",
        service_name="from-resource",
        resource=(("deployment.environment", "prod"),),
    )
    grpc = {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    logs = {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://c:1/custom", **grpc}
    assert [OtlpSettings.from_env(grpc).endpoint, OtlpSettings.from_env(logs).endpoint] == [
        "collector:4317",
        "http://c:1/custom",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
        ({"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT='soon'"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION='zstd'"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "a=1,sk-oops"}, "OTEL_EXPORTER_OTLP_HEADERS: entry 2"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], message: str) -> None:
    """A bad value stops startup with the variable's name (and never a header's text)."""
    with pytest.raises(ConfigError) as caught:
        OtlpSettings.from_env(env)
    assert message in str(caught.value)
    assert "sk-oops" not in str(caught.value)


def test_header_values_never_show_in_a_repr() -> None:
    """Header values are secrets: a repr of the settings shows names only."""
    settings = OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=sk-live-123"})
    assert "sk-live-123" not in repr(settings)
    assert "sk-live-123" not in repr(AuditSettings(otlp=settings))


def test_max_payload_uses_dynamo_names_in_dynamo_precedence() -> None:
    """DYN_REQUEST_TRACE_OTEL_MAX_PAYLOAD_BYTES wins over DYN_AUDIT_OTEL_MAX_PAYLOAD_BYTES."""
    both = {
        "DYN_REQUEST_TRACE_OTEL_MAX_PAYLOAD_BYTES": "1000",
        "DYN_AUDIT_OTEL_MAX_PAYLOAD_BYTES": "2000",
    }
    legacy = {"DYN_AUDIT_OTEL_MAX_PAYLOAD_BYTES": "2000"}
    assert [
        AuditSettings.from_env({}).otel_max_payload_bytes,
        AuditSettings.from_env(legacy).otel_max_payload_bytes,
        AuditSettings.from_env(both).otel_max_payload_bytes,
    ] == [4 << 20, 2000, 1000]
