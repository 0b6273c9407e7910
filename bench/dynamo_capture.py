"""Capture NVIDIA Dynamo's own audit output as test fixtures (``tests/fixtures/dynamo/<version>``).

Runs Dynamo's frontend and mocker (installed from PyPI into ``bench/.peers`` exactly as
``bench/peers.py`` does) on loopback, with its audit publishing to a private ``nats-server -js``
on a free loopback port (a private server: Dynamo 0.7.1 also keeps its own runtime state in NATS,
which must not be left on the machine's shared server) and, where the version has them, to
``jsonl`` / ``jsonl_gz`` files.  It sends chat requests with the official ``openai`` SDK — stream
and not, with tools, with ``stream_options.include_usage``, ``store: true`` (0.x needs it) or not
(1.x: force logging), one stream abandoned by the client — and writes:

- ``answers.jsonl``: per request, the body sent and what the client got (the non-stream
  ``chat.completion``, or a stream's chunks and the SDK's own accumulation of them);
- ``nats.jsonl``: every message Dynamo published, as ``{"subject", "headers", "data"}`` where
  ``data`` is the message payload exactly as published (a string holding JSON);
- ``files/``: the ``jsonl`` file and ``jsonl_gz`` segments Dynamo wrote (1.x only: 0.7.1's audit
  has only the ``stderr`` and ``nats`` sinks);
- ``stderr.log``: the frontend's audit lines on stderr, as a third view of the same records;
- ``manifest.json``: versions, settings used, counts.

Usage (about a minute per version once installed; the first install takes several minutes)::

    .venv/bin/python -m bench.dynamo_capture 0.7.1 1.6.1

Re-running replaces the fixtures of the versions named.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.peers import MODEL, _nats_server, _wait_model, install_dynamo, model_dir
from bench.servers import ROOT, clean_env, free_port, spawn, stop_process

FIXTURES = ROOT / "tests" / "fixtures" / "dynamo"
STREAM = "DYNAMO_CAPTURE"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SUBJECTS = ("dynamo.audit.v1", "dynamo.request_trace.v1")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def audit_env(version: str, files: Path) -> dict[str, str]:
    """Dynamo's audit settings for ``version``: NATS always, files where the version has them."""
    if version.startswith("0."):
        return {
            "DYN_AUDIT_ENABLED": "1",
            "DYN_AUDIT_SINKS": "nats,stderr",
            "DYN_AUDIT_NATS_SUBJECT": SUBJECTS[0],
            "DYN_LOG": "warn,dynamo_llm::audit::sink=info",
        }
    return {
        "DYN_AUDIT_FORCE_LOGGING": "true",
        "DYN_REQUEST_TRACE": "1",
        "DYN_REQUEST_TRACE_RECORDS": "request_payload,request_end,tool",
        "DYN_REQUEST_TRACE_SINKS": "nats,jsonl_gz,stderr",
        "DYN_REQUEST_TRACE_NATS_SUBJECT": SUBJECTS[1],
        "DYN_REQUEST_TRACE_JSONL_GZ_ROLL_LINES": "8",
        "DYN_REQUEST_TRACE_FILE_FLUSH_INTERVAL_MS": "100",
        "DYN_REQUEST_TRACE_HTTP_HEADER_CAPTURE_LIST": "x-team,user-agent",
        "DYN_LOG": "warn",
    }


def requests_for(version: str) -> list[dict[str, Any]]:
    """The request bodies sent, each with a distinct prompt (so records can be matched)."""
    store = {"store": True} if version.startswith("0.") else {}
    bodies: list[dict[str, Any]] = []
    for i in range(4):
        stream = i % 2 == 1
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"w{10 + i} w{20 + i} w{30 + i}"}],
            "max_tokens": 8 + i,
            "stream": stream,
            **store,
        }
        if i == 3:
            body["stream_options"] = {"include_usage": True}
        bodies.append(body)
    for stream in (False, True):
        bodies.append(
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "w1 w2"},
                    {"role": "user", "content": f"w4{int(stream)} w5 weather"},
                ],
                "tools": TOOLS,
                "tool_choice": "auto",
                "max_tokens": 6,
                "stream": stream,
                "metadata": {"team": "capture"},
                **store,
            }
        )
    if version.startswith("0."):
        # Not stored: Dynamo 0.x records only `store: true` requests.
        bodies.append(
            {"model": MODEL, "messages": [{"role": "user", "content": "w99"}], "max_tokens": 4}
        )
    return bodies


def ask(base_url: str, bodies: list[dict[str, Any]], *, abandon_one: bool) -> list[dict[str, Any]]:
    """Send every body with the official SDK; what the client saw, per request."""
    from openai import OpenAI
    from openai.lib.streaming.chat import ChatCompletionStreamState

    answers = []
    store = {"store": True} if bodies[0].get("store") else {}
    with OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        for body in bodies:
            args = {k: v for k, v in body.items() if k not in ("model", "messages")}
            headers = {"x-team": "capture", "x-request-id": f"capture-{uuid.uuid4().hex[:8]}"}
            if not body.get("stream"):
                answer = client.chat.completions.create(
                    model=body["model"], messages=body["messages"], extra_headers=headers, **args
                )
                answers.append({"request": body, "headers": headers, "response": answer.to_dict()})
                continue
            state = ChatCompletionStreamState()
            chunks = []
            for chunk in client.chat.completions.create(
                model=body["model"], messages=body["messages"], extra_headers=headers, **args
            ):
                chunks.append(chunk.to_dict())
                state.handle_chunk(chunk)
            final = state.current_completion_snapshot.to_dict()
            answers.append(
                {"request": body, "headers": headers, "chunks": chunks, "response": final}
            )
        if abandon_one:
            answers.append(abandon(client, store))
    return answers


def abandon(client: Any, store: dict[str, Any]) -> dict[str, Any]:
    """A long stream the client closes after its first chunk (Dynamo still audits it)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "w7 w8 w9 long"}],
        "max_tokens": 3000,
        "stream": True,
        **store,
    }
    args = {k: v for k, v in body.items() if k not in ("model", "messages")}
    stream = client.chat.completions.create(model=MODEL, messages=body["messages"], **args)
    first = next(iter(stream)).to_dict()
    stream.close()
    time.sleep(0.5)
    return {"request": body, "headers": {}, "chunks": [first], "abandoned": True}


async def drain_stream(url: str, expected: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Every message in the capture stream, once at least ``expected`` arrived (or timeout)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = await js.stream_info(STREAM)
            if info.state.messages >= expected:
                break
            await asyncio.sleep(0.2)
        info = await js.stream_info(STREAM)
        out = []
        for seq in range(1, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM, seq)
            out.append(
                {
                    "subject": msg.subject,
                    "headers": dict(msg.headers or {}),
                    "data": (msg.data or b"").decode(),
                }
            )
        return out
    finally:
        await nc.close()


async def make_stream(url: str) -> None:
    import nats
    import nats.js.api

    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(
            nats.js.api.StreamConfig(name=STREAM, subjects=list(SUBJECTS))
        )
    finally:
        await nc.close()


def capture(version: str, out: Path, *, keep: bool = False) -> None:
    """Run Dynamo ``version`` in each of its phases; write the fixtures of all of them."""
    env_dir = install_dynamo(version)
    python = str(env_dir / "bin" / "python")
    workdir = Path(tempfile.mkdtemp(prefix=f"dynamo-capture-{version}-"))
    files = workdir / "files"
    files.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        nats_proc, nats_url = _nats_server(workdir)
        processes.append(nats_proc)
        asyncio.run(make_stream(nats_url))
        base = {
            "HF_HUB_OFFLINE": "1",
            "DYN_FILE_KV": str(workdir / "kv"),
            "TMPDIR": str(workdir),
            "HOME": str(workdir),
            "NATS_SERVER": nats_url,
            **({"DYN_REQUEST_PLANE": "tcp"} if version.startswith("0.") else {}),
        }
        mocker_args = ["--model-path", str(model_dir(env_dir)), "--model-name", MODEL]
        mocker_args += ["--speedup-ratio", "1000000", *plane_args(version)]
        mock_log = workdir / "mocker.log"
        mocker_env = clean_env(base | audit_env(version, files))
        mocker = spawn([python, "-m", "dynamo.mocker", *mocker_args], mocker_env, workdir, mock_log)
        processes.append(mocker)
        answers: list[dict[str, Any]] = []
        logs: list[str] = []
        env: dict[str, str] = {}
        for phase in phases(version):
            env = base | audit_env(version, files) | phase.env(files)
            front_log = workdir / f"frontend-{phase.name}.log"
            answers += run_frontend(python, env, workdir, front_log, mocker, mock_log, phase)
            logs.append(front_log.read_text(errors="replace"))
        time.sleep(0.5)
        stored = sum(1 for a in answers if a["request"].get("store") or version[0] != "0")
        messages = asyncio.run(drain_stream(nats_url, stored))
        stop_process(mocker)
        write_fixtures(version, out, answers, messages, files, "\n".join(logs), env)
    finally:
        for proc in reversed(processes):
            stop_process(proc)
        if keep:
            print(f"{version}: logs and files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def plane_args(version: str) -> list[str]:
    """How the frontend and the mocker find each other without etcd (as bench/peers.py)."""
    if version.startswith("0."):
        return ["--store-kv", "file"]
    return ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One run of the frontend: its name, its extra settings, what is sent to it."""

    name: str
    file_format: str | None
    """1.x file sink format of this run (``None``: 0.x, no file sink)."""
    requests: int | None
    """How many of the request bodies to send (``None``: all, plus an abandoned stream)."""
    tools: bool
    """Also push harness tool events to the frontend's ZMQ ingress."""

    def env(self, files: Path) -> dict[str, str]:
        if self.file_format is None:
            return {}
        path = files / ("trace" if self.file_format == "jsonl_gz" else "trace.jsonl")
        return {
            "DYN_REQUEST_TRACE_FILE_FORMAT": self.file_format,
            "DYN_REQUEST_TRACE_FILE_PATH": str(path),
        }


def phases(version: str) -> list[Phase]:
    if version.startswith("0."):
        return [Phase("main", None, None, tools=False)]
    # One file sink per process: a second run of the frontend writes the plain jsonl file.
    return [Phase("jsonl_gz", "jsonl_gz", None, tools=True), Phase("jsonl", "jsonl", 2, False)]


def run_frontend(
    python: str,
    env: dict[str, str],
    workdir: Path,
    log: Path,
    mocker: subprocess.Popen[bytes],
    mock_log: Path,
    phase: Phase,
) -> list[dict[str, Any]]:
    """Start the frontend, send this phase's requests (and tool events), stop it."""
    port = free_port()
    zmq_port = free_port()
    if phase.tools:
        env = env | {
            "DYN_REQUEST_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT": f"tcp://127.0.0.1:{zmq_port}",
            "DYN_LOG": "warn,dynamo_llm::request_trace=debug",
        }
    version = "0" if phase.file_format is None else "1"
    argv = [python, "-m", "dynamo.frontend", "--http-port", str(port), "--http-host", "127.0.0.1"]
    frontend = spawn([*argv, *plane_args(version + ".")], clean_env(env), workdir, log)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_model(url, frontend, mocker, log, mock_log)
        bodies = requests_for(version + ".")
        answers = ask(url + "/v1", bodies[: phase.requests], abandon_one=phase.requests is None)
        if phase.tools:
            push_tool_events(python, zmq_port)
        time.sleep(1.0)  # file sinks flush every 100 ms
        for answer in answers:
            answer["phase"] = phase.name
        return answers
    finally:
        stop_process(frontend)


_TOOL_SCRIPT = """
import sys, time, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.PUSH)
sock.connect(sys.argv[1])
time.sleep(0.5)
for seq, payload in enumerate(sys.argv[2:]):
    sock.send_multipart([b"agent-tool-events", seq.to_bytes(8, "big"), bytes.fromhex(payload)])
time.sleep(0.5)
sock.close(linger=2000)
ctx.term()
"""


def push_tool_events(python: str, port: int) -> None:
    """Harness tool events into Dynamo's ZMQ ingress: multipart ``[topic, seq (u64 big endian),
    msgpack(RequestTraceToolEventIngress)]``, as 1.6.1's ``request_trace/tool_relay.rs`` reads."""
    import msgspec

    now = int(time.time() * 1000)
    events = [
        {"event_type": "tool_start", "tool": {"status": "running"}},
        {"event_type": "tool_end", "tool": {"status": "succeeded", "duration_ms": 420.5}},
        {"event_type": "tool_error", "tool": {"status": "error", "error_type": "timeout"}},
    ]
    rows = []
    for i, event in enumerate(events):
        tool = {
            "tool_call_id": f"call-{i // 2}",
            "tool_class": "web_search",
            "started_at_unix_ms": now,
            **({"ended_at_unix_ms": now + 420} if i else {}),
            **event["tool"],
        }
        row = {
            "schema": "dynamo.request.trace.v1",
            "event_type": event["event_type"],
            "event_time_unix_ms": now + i,
            "session_id": "capture-session",
            "tool": tool,
        }
        rows.append(msgspec.msgpack.encode(row).hex())
    subprocess.run(
        [python, "-c", _TOOL_SCRIPT, f"tcp://127.0.0.1:{port}", *rows],
        check=True,
        timeout=30,
    )


def write_fixtures(
    version: str,
    out: Path,
    answers: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    files: Path,
    log_text: str,
    env: dict[str, str],
) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with (out / "answers.jsonl").open("w") as f:
        for answer in answers:
            f.write(json.dumps(answer, sort_keys=True) + "\n")
    with (out / "nats.jsonl").open("w") as f:
        for message in messages:
            f.write(json.dumps(message, sort_keys=True) + "\n")
    written = sorted(p for p in files.iterdir() if p.is_file())
    if written:
        (out / "files").mkdir()
        for path in written:
            shutil.copy(path, out / "files" / path.name)
    text = ANSI.sub("", log_text)
    audit_lines = [line for line in text.splitlines() if "audit" in line or line.startswith("{")]
    (out / "stderr.log").write_text("\n".join(audit_lines) + ("\n" if audit_lines else ""))
    python = str(install_dynamo(version) / "bin" / "python")
    dist = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('ai-dynamo'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    settings = {k: v for k, v in env.items() if k.startswith("DYN_") and k != "DYN_FILE_KV"}
    settings = {k: v.replace(str(files), "<files>") for k, v in settings.items()}
    manifest = {
        "ai-dynamo": dist,
        "settings": settings,
        "requests": len(answers),
        "nats_messages": len(messages),
        "files": [p.name for p in written],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(
        f"{version}: {len(answers)} requests, {len(messages)} messages, files {manifest['files']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="Dynamo versions, e.g. 0.7.1 1.6.1")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args(argv)
    for version in args.versions:
        capture(version, FIXTURES / version, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
