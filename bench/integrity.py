"""Cost of integrity + redaction: ``python -m bench.integrity [--micro]``.

Gateway: starts ``auditgate serve`` (mock engine, ``jsonl`` sink) pinned to CPU 0, drives it with
``bench/loadgen.py`` pinned to CPU 1 at concurrency 64 (non-stream, then stream), alternating
the baseline and ``DYN_AUDIT_INTEGRITY=1`` + ``DYN_AUDIT_REDACT=email,api_key,card,ip`` (with a
checkpoint key), and each ``--variant NAME=SRC`` (the same with an older copy of ``src/``),
``--repeat`` times, and prints per variant the median req/s and the median
server CPU ms per request, their ratios to the baseline, and the median of the per-round ratios
(``paired_*``, the figure to quote: a round runs every variant back to back).  CPU per request
is the steadier number on a shared machine: other jobs steal wall time from the server, not CPU
time.

``--micro``: microseconds per record of the redaction processor and of the integrity chain on
realistic records (the loadgen's small one; a four-message chat with a ~100-word answer, without
and with secrets), best of several rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from auditgate.audit.integrity import HmacSigner
from auditgate.audit.processors import IntegrityChain, RedactProcessor
from auditgate.audit.record import AuditRecord, encode_record
from auditgate.audit.redact import Redactor, builtin

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
VARIANTS = {
    "baseline": {},
    "integrity+redact": {
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": "bench-key",
        "DYN_AUDIT_REDACT": "email,api_key,card,ip",
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(
    extra: dict[str, str], stream: bool, duration: float, workdir: str
) -> tuple[float, float, float]:
    """(req/s, server CPU ms per request, processing stage µs per record) of one run; the
    last from the server's own ``/metrics`` (0 without processors)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        DYN_AUDIT_ENABLED="1",
        DYN_AUDIT_SINKS="jsonl",
        DYN_AUDIT_OUTPUT_PATH=f"{workdir}/audit-{port}.jsonl",
        AUDITGATE_LOG_LEVEL="warning",
        **extra,
    )
    server = subprocess.Popen(
        ["taskset", "-c", "0", PYTHON, "-m", "auditgate", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        args = [
            "taskset",
            "-c",
            "1",
            PYTHON,
            str(ROOT / "bench" / "loadgen.py"),
            "--url",
            f"http://127.0.0.1:{port}",
            "--concurrency",
            "64",
            "--duration",
            str(duration),
            "--warmup",
            "1",
            "--pid",
            str(server.pid),
        ]
        if stream:
            args.append("--stream")
        out = subprocess.run(args, capture_output=True, check=True, text=True).stdout
        result = json.loads(out)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            stage = _stage_us_per_record(reply.read().decode())
        return float(result["rps"]), float(result["server_cpu_ms_per_req"]), stage
    finally:
        server.terminate()
        server.wait(30)


def _stage_us_per_record(metrics: str) -> float:
    """``audit_processing_seconds_total / audit_records_total`` in µs (0 when absent)."""
    seconds = records = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "auditgate_audit_processing_seconds_total":
                seconds = sample.value
            elif sample.name == "auditgate_audit_records_total":
                records += sample.value
    return round(seconds / records * 1e6, 2) if records else 0.0


def gateway(duration: float, repeat: int, others: dict[str, str]) -> None:
    """``others``: name -> a copy of ``src/`` (e.g. from an earlier commit) whose server runs
    integrity + redaction as one more variant, interleaved with the rest."""
    variants = dict(VARIANTS)
    for name, src in others.items():
        variants[name] = {**VARIANTS["integrity+redact"], "PYTHONPATH": src}
    with tempfile.TemporaryDirectory() as workdir:
        for stream in (False, True):
            rps: dict[str, list[float]] = {name: [] for name in variants}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            stage: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeat):
                for name, extra in variants.items():
                    r, c, p = measure(extra, stream, duration, workdir)
                    rps[name].append(r)
                    cpu[name].append(c)
                    stage[name].append(p)
            med_rps = {name: statistics.median(v) for name, v in rps.items()}
            med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
            summary = {
                "stream": stream,
                "rps": rps,
                "cpu_ms_per_req": cpu,
                "median_rps": med_rps,
                "median_cpu_ms_per_req": med_cpu,
                "rps_ratio": {n: round(v / med_rps["baseline"], 4) for n, v in med_rps.items()},
                "cpu_ratio": {n: round(v / med_cpu["baseline"], 4) for n, v in med_cpu.items()},
                # Each round runs every variant back to back: the median of the per-round
                # ratios cancels the machine's slow drift that medians of each side keep.
                "paired_rps_ratio": {n: _paired(v, rps["baseline"]) for n, v in rps.items()},
                "paired_cpu_ratio": {n: _paired(v, cpu["baseline"]) for n, v in cpu.items()},
                # The processing stage's own clock (auditgate_audit_processing_seconds_total),
                # and that time as a share of the baseline's server CPU per request.
                "median_stage_us_per_record": {n: statistics.median(v) for n, v in stage.items()},
                "stage_share_of_baseline_cpu": {
                    n: round(statistics.median(v) / (med_cpu["baseline"] * 1000), 4)
                    for n, v in stage.items()
                },
            }
            print(json.dumps(summary))
            sys.stdout.flush()


def _paired(values: list[float], baseline: list[float]) -> float:
    return round(statistics.median(v / b for v, b in zip(values, baseline, strict=True)), 4)


_WORDS = (
    "the model answers quickly with a short and clear explanation of how the system works "
    "in practice today when every request is audited before it reaches a sink and the "
    "records are stored for compliance review later on"
)


def _text(words: int, seed: int) -> str:
    vocabulary = _WORDS.split()
    return " ".join(vocabulary[(i * 7 + seed) % len(vocabulary)] for i in range(words)) + "."


def _record(kind: str) -> AuditRecord:
    """``small``: what bench/loadgen.py makes; ``chat``: four messages and a ~100-word answer;
    ``secrets``: the chat with an e-mail, a key, a card number and an IP address."""
    if kind == "small":
        messages = [{"role": "user", "content": "Write one sentence about load testing."}]
        answer = _text(16, 3)
    else:
        last = _text(40, 5)
        if kind == "secrets":
            last += (
                " Mail alice.b@example.com, key sk-proj-AbCdEf0123456789xyz,"
                " card 4111 1111 1111 1111 from 10.1.2.3."
            )
        messages = [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": _text(30, 1)},
            {"role": "assistant", "content": _text(60, 2)},
            {"role": "user", "content": last},
        ]
        answer = _text(100, 9)
    usage = {"prompt_tokens": 150, "completion_tokens": 100, "total_tokens": 250}
    request_id = str(uuid.uuid4())
    return AuditRecord(
        request_id=request_id,
        requested_streaming=False,
        mode="full",
        model="mock",
        usage=usage,
        request={"model": "mock", "messages": messages, "store": True, "max_tokens": 128},
        response={
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": 1758740068,
            "model": "mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
        },
        engine="mock",
        status="completed",
        complete=True,
        created_at=1758740068123,
        completed_at=1758740068456,
        ttft_ms=1.25,
        duration_ms=3.5,
        writer="host-1:4242:9f3a61c2",
        seq=17,
    )


def _per_record_us(process: Callable[[AuditRecord], object], record: AuditRecord) -> float:
    """Best of 7 rounds of 2000 fresh shallow copies (the processors replace fields)."""
    best = float("inf")
    for _ in range(7):
        copies = [msgspec.structs.replace(record) for _ in range(2000)]
        start = time.perf_counter()
        for copy in copies:
            process(copy)
        best = min(best, (time.perf_counter() - start) / len(copies) * 1e6)
    return round(best, 2)


def micro() -> None:
    redact = RedactProcessor(Redactor(builtin(("email", "api_key", "card", "ip")), lambda _: None))
    for kind in ("small", "chat", "secrets"):
        record = _record(kind)
        chain = IntegrityChain(HmacSigner("bench-key"), engine="mock", every=10**9)
        print(
            json.dumps(
                {
                    "record": kind,
                    "bytes": len(encode_record(record)),
                    "redact_us": _per_record_us(redact, record),
                    "integrity_us": _per_record_us(chain.seal, record),
                }
            )
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--micro", action="store_true", help="per-record microbenchmark only")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run integrity + redaction with this copy of src/ (repeatable)",
    )
    a = p.parse_args()
    if a.micro:
        micro()
    else:
        others = dict(v.split("=", 1) for v in a.variant)
        gateway(a.duration, a.repeat, others)


if __name__ == "__main__":
    main()
