"""Disconnects, stuck sinks, metrics, shutdown and workers: the gateway as operators see it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import PG_ADMIN_DSN
from tests.support.gateway import running_gateway, serve_until_exit, start_gateway
from tests.support.server import audit_env, gateway

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in an exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


def test_client_disconnect_mid_stream_yields_cancelled_partial_record() -> None:
    """A client that goes away mid-stream leaves a cancelled record with what it had received."""
    env = audit_env(AUDITGATE_MOCK_ITL_MS="30", AUDITGATE_MOCK_TTFT_MS="1")
    with gateway(env) as g:
        body = {
            "model": "mock",
            "messages": MESSAGES,
            "store": True,
            "stream": True,
            "max_tokens": 100,
        }
        received = []
        with httpx.stream("POST", g.base_url + "/chat/completions", json=body, timeout=10) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    received.append(json.loads(line[6:]))
                if len(received) == 4:
                    break
        [record] = g.records(1)
        assert (record.status, record.complete) == ("cancelled", False)
        assert record.response is not None
        content = record.response["choices"][0]["message"]["content"]
        seen = "".join(c["choices"][0]["delta"].get("content") or "" for c in received)
        assert content.startswith(seen)
        assert record.response["choices"][0]["finish_reason"] is None


def test_sink_that_never_returns_does_not_slow_requests() -> None:
    """A stuck sink fills its queue; requests keep flowing and every drop is counted."""
    with gateway(audit_env(DYN_AUDIT_CAPACITY="8")) as g:
        g.sink.block.clear()  # the memory sink now never returns from write()
        c = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0, timeout=5)
        started = time.monotonic()
        for _ in range(60):
            c.chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
        text = httpx.get(g.url + "/metrics").text
        dropped = metric(text, "auditgate_audit_dropped_total", sink="memory", reason="queue_full")
        depth = metric(text, "auditgate_audit_queue_depth", sink="memory")
        assert metric(text, "auditgate_audit_records_total", mode="full") == 60
        # One batch is stuck inside write(), `depth` wait in the queue, the rest were dropped.
        inflight = 60 - dropped - depth
        assert depth == 8 and 1 <= inflight <= 8, (dropped, depth)
        assert elapsed < 30  # bounded: a blocked publish would hang forever, not be slow
        g.sink.block.set()


def test_metrics_count_requests_and_records() -> None:
    """/metrics exposes request, record and write counters with their labels."""
    with gateway() as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0)
        c.chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        list(c.chat.completions.create(model="mock", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
        httpx.post(g.base_url + "/chat/completions", content=b"{")
        g.records(2)
        text = httpx.get(g.url + "/metrics").text
        ep = "/v1/chat/completions"
        assert metric(text, "auditgate_http_requests_total", endpoint=ep, status="200") == 2
        assert metric(text, "auditgate_http_requests_total", endpoint=ep, status="400") == 1
        assert metric(text, "auditgate_audit_records_total", mode="full") == 1
        assert metric(text, "auditgate_audit_records_total", mode="usage_only") == 1
        assert metric(text, "auditgate_audit_written_total", sink="memory") == 2
        assert metric(text, "auditgate_time_to_first_token_seconds_count") == 1
        assert metric(text, "auditgate_request_duration_seconds_count") == 3


def test_models_and_health() -> None:
    """/v1/models lists the served models and /health answers."""
    with gateway(audit_env(AUDITGATE_MODELS="alpha,beta")) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0)
        assert [m.id for m in c.models.list()] == ["alpha", "beta"]
        assert c.models.retrieve("beta").id == "beta"
        assert httpx.get(g.url + "/health").json() == {"status": "ok"}


def test_sigterm_finishes_in_flight_streams_and_drains_the_audit(tmp_path: Path) -> None:
    """SIGTERM lets a running stream finish, then every record reaches the jsonl file."""
    out = tmp_path / "audit.jsonl"
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "jsonl",
        "DYN_AUDIT_OUTPUT_PATH": str(out),
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "60000",
        "AUDITGATE_MOCK_ITL_MS": "20",
    }
    gw = start_gateway(env, log_dir=tmp_path)
    body = {"model": "mock", "messages": MESSAGES, "store": True, "stream": True, "max_tokens": 40}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        next(lines)
        gw.process.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert gw.process.wait(30) == 0
    [line] = out.read_text().splitlines()
    record = json.loads(line)
    assert (record["status"], record["complete"]) == ("completed", True)
    assert "all records delivered" in gw.log()


@pytest.mark.parametrize("durability", ["best_effort", "durable"])
def test_workers_are_separate_writers(tmp_path: Path, durability: str) -> None:
    """With --workers 2 each process writes its own gap-free sequence; in durable mode each
    owns its own spool directory (two writers in one spool would overwrite each other).  Every
    scrape of /metrics, whichever worker answers it, counts both workers' requests."""
    out = tmp_path / "audit.jsonl"
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "jsonl",
        "DYN_AUDIT_OUTPUT_PATH": str(out),
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "10",
        "DYN_AUDIT_DURABILITY": durability,
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    sent = 0
    with running_gateway(env, ["--workers", "2"], log_dir=tmp_path) as gw:
        # New connections until both workers have answered (the kernel picks the acceptor).
        while sent < 400:
            with httpx.Client() as c:
                r = c.post(
                    gw.base_url + "/chat/completions",
                    json={"model": "mock", "messages": MESSAGES, "store": True},
                )
                assert r.status_code == 200
            sent += 1
            if sent % 20 == 0:
                time.sleep(0.05)
                lines = out.read_text().splitlines() if out.exists() else []
                if len({json.loads(x)["writer"] for x in lines}) == 2:
                    break
        ep = "/v1/chat/completions"
        deadline = time.monotonic() + 10
        for _ in range(6):  # new connections: both workers answer some scrapes
            while True:
                text = httpx.get(gw.url + "/metrics").text
                written = metric(text, "auditgate_audit_written_total", sink="jsonl")
                # Another worker's live gauges are written once a second (REFRESH_S): its
                # queue depth may still show the last record for up to that long.
                depth = metric(text, "auditgate_audit_queue_depth", sink="jsonl")
                if (written, depth) == (sent, 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # a worker's last batch or its gauges are a moment behind
            assert metric(text, "auditgate_http_requests_total", endpoint=ep, status="200") == sent
            assert metric(text, "auditgate_audit_records_total", mode="full") == sent
            assert written == sent
            assert depth == 0
    # Workers are spawned: each configures its own logging (time, level, logger, pid).
    drained = re.findall(r" INFO auditgate \[(\d+)\] audit: all records delivered", gw.log())
    assert len(set(drained)) == 2, gw.log()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == sent
    by_writer: dict[str, list[int]] = {}
    for r in records:
        by_writer.setdefault(r["writer"], []).append(r["seq"])
    assert len(by_writer) == 2
    for seqs in by_writer.values():
        assert sorted(seqs) == list(range(len(seqs)))
    if durability == "durable":
        slots = sorted(p.name for p in (tmp_path / "spool").iterdir())
        assert slots == ["worker-0", "worker-1"]
        for slot in slots:
            assert (tmp_path / "spool" / slot / "cursor.jsonl").exists()


def test_serving_processes_tune_the_garbage_collector() -> None:
    """The uvicorn factory freezes start-up objects and raises the young-collection threshold
    in the serving process; an app built in-process with create_app leaves the GC alone."""
    program = (
        "import gc; from auditgate import serving; from auditgate.server import app; "
        "before = gc.get_threshold(); app.create_app(app.Settings.from_env()); "
        "built = gc.get_threshold(); serving.app_from_env(); "
        "print(before[0], built[0], gc.get_threshold()[0], gc.get_freeze_count() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["700", "700", "10000", "True"]


@pytest.mark.parametrize(
    ("sink", "workers"),
    [
        ("sqlite", 1),
        ("sqlite", 2),
        ("postgres", 1),
        ("postgres", 2),
        ("keys", 1),
        ("keys", 2),
        ("store", 1),
        ("store", 2),
        ("spool", 1),
        ("spool", 2),
    ],
)
def test_a_configuration_error_at_startup_stops_serve_with_one_clear_line(
    tmp_path: Path, unique: str, sink: str, workers: int
) -> None:
    """A configuration error found at startup (an SQLite path that is a directory, a PostgreSQL
    database that does not exist, as a sink or as the store, an unreadable API keys file, a
    spool directory that is a file) ends ``serve`` with exit code 3 and a one-line message
    naming the problem, not a traceback — with ``--workers N`` too, where uvicorn alone exited
    0 (a sink) or restarted the workers forever (the keys file)."""
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "keys.json").write_text("{")
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "stderr" if sink in ("keys", "store", "spool") else sink,
        "DYN_AUDIT_SQLITE_PATH": str(tmp_path / "dir.db"),
        "DYN_AUDIT_POSTGRES_URL": f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/ag_missing_{unique}",
    }
    if sink == "keys":
        env["AUDITGATE_API_KEYS_FILE"] = str(tmp_path / "keys.json")
    if sink == "store":  # the stored-completions store, without a postgres sink
        env["AUDITGATE_STORE_URL"] = env["DYN_AUDIT_POSTGRES_URL"]
    if sink == "spool":  # durable mode, the spool directory a file
        env["DYN_AUDIT_DURABILITY"] = "durable"
        env["DYN_AUDIT_SPOOL_DIR"] = str(tmp_path / "keys.json")
    done = serve_until_exit(env, ["--workers", str(workers)], cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    expected = {
        "sqlite": "auditgate: DYN_AUDIT_SQLITE_PATH=",
        "postgres": f'database "ag_missing_{unique}" does not exist',
        "keys": "auditgate: AUDITGATE_API_KEYS_FILE: cannot read",
        "store": f'database "ag_missing_{unique}" does not exist',
        "spool": "auditgate: DYN_AUDIT_SPOOL_DIR=",
    }[sink]
    failures = [line for line in done.stderr.splitlines() if expected in line]
    assert len(failures) == workers, done.stderr  # once per serving process
    assert all(re.search(r" ERROR uvicorn\.error \[\d+\] auditgate: ", x) for x in failures)
    assert "Traceback" not in done.stderr


def test_a_second_gateway_on_a_used_spool_refuses_to_start(tmp_path: Path) -> None:
    """Two gateways must never write one spool: the second stops at startup with one line that
    says what to do, and the first keeps serving."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "stderr",
        "DYN_AUDIT_DURABILITY": "durable",
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    with running_gateway(env, log_dir=tmp_path) as first:
        done = serve_until_exit(env, cwd=tmp_path)
        assert done.returncode == 3, done.stderr
        assert "in use by other gateway processes" in done.stderr
        assert "give this one its own DYN_AUDIT_SPOOL_DIR" in done.stderr
        assert "Traceback" not in done.stderr
        assert httpx.get(first.url + "/health").status_code == 200
