"""Peers: NVIDIA Dynamo 0.7.1 and 1.6.1 and the LiteLLM proxy 1.108.7, installed and started here.

Each peer is installed from PyPI into its own virtualenv under ``bench/.peers/<peer>`` (gitignored)
the first time a suite needs it; a ``.installed`` file marks a finished install.  An install or
start that fails raises :class:`~bench.servers.StartError` with the exact error, which the suite
records in ``RESULTS.md`` and goes on.

Facts these follow (issue 6):

- ``pip install ai-dynamo==X`` can fail (a dependency downloads from outside PyPI), so Dynamo is
  ``ai-dynamo-runtime==X``, then ``ai-dynamo==X --no-deps``, then the other requirements from the
  wheel's metadata (minus ``aisimulate``).
- The mocker needs a local model directory (``tokenizer.json``, ``tokenizer_config.json`` with a
  chat template, a Llama-shaped ``config.json``, no weights), built here with ``tokenizers``;
  ``HF_HUB_OFFLINE=1``; ``--speedup-ratio`` very high (no token delay).
- 0.7.1 needs NATS: a private ``nats-server -js`` on a loopback port per scenario, the frontend
  and the mocker with ``--store-kv file`` and ``DYN_REQUEST_PLANE=tcp``.  Its audit:
  ``DYN_AUDIT_ENABLED=1 DYN_AUDIT_SINKS=stderr`` (records for ``store: true``), logged at INFO by
  ``dynamo_llm::audit::sink``: ``DYN_LOG=warn,dynamo_llm::audit::sink=info``.
- 1.6.1: ``--discovery-backend file --request-plane tcp --event-plane zmq`` (no etcd, no NATS);
  audit with ``DYN_AUDIT_SINKS=stderr DYN_AUDIT_FORCE_LOGGING=true``; its audit is the
  ``dynamo_llm::request_trace`` module, which writes bare ``dynamo.request.trace.v1`` JSON lines
  to stderr whatever ``DYN_LOG`` says (checked: two requests, two lines with ``DYN_LOG=warn``).
- LiteLLM ``litellm[proxy]==1.108.7`` (newer pin packages not on PyPI), a strong master key, in
  front of the fake upstream; with and without a callback that appends each request and response
  to a JSONL file.

The server's CPU is the whole of each peer: Dynamo's frontend *and* mocker process trees, the
LiteLLM proxy's tree.  All of it is pinned to the server CPU; stderr (audit records) goes to
/dev/null for the audit-on runs.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.servers import (
    SERVER_CPUS,
    Context,
    Running,
    Scenario,
    StartError,
    clean_env,
    free_port,
    log_tail,
    pinned,
    spawn,
    stop_process,
    wait_http,
)

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
BASE_PYTHON = "python3.11"
DYNAMO_VERSIONS = ("0.7.1", "1.6.1")
LITELLM_VERSION = "1.108.7"
MODEL = "bench-model"
INSTALL_TIMEOUT_S = 1200


def _run(argv: Sequence[str], what: str, timeout_s: float = INSTALL_TIMEOUT_S) -> str:
    """Run an install step; :class:`StartError` with its output's tail when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise StartError(f"{what}: timed out after {timeout_s:.0f}s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise StartError(f"{what}: exit {done.returncode}:\n{tail}")
    return done.stdout


def venv(name: str) -> Path:
    """A fresh-or-existing virtualenv ``bench/.peers/<name>``; returns its directory."""
    path = PEERS_DIR / name
    if not (path / "bin" / "python").exists():
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        _run([BASE_PYTHON, "-m", "venv", str(path)], f"create venv {name}")
        _run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", "-U", "pip"], "pip")
    return path


def pip(env: Path, *args: str) -> None:
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", *args], f"pip install {args}")


def install_dynamo(version: str) -> Path:
    """Dynamo ``version`` in its own venv (see the module docstring for the three steps)."""
    env = PEERS_DIR / f"dynamo-{version}"
    if (env / ".installed").exists():
        return env
    env = venv(f"dynamo-{version}")
    pip(env, f"ai-dynamo-runtime=={version}")
    pip(env, f"ai-dynamo=={version}", "--no-deps")
    script = (
        "import importlib.metadata as m, re\n"
        "for r in m.requires('ai-dynamo') or []:\n"
        "    name = re.split(r'[ ;<>=!~\\[]', r, maxsplit=1)[0].lower()\n"
        "    if 'extra ==' in r or name in ('aisimulate', 'ai-dynamo-runtime'):\n"
        "        continue\n"
        "    print(r)\n"
    )
    requirements = _run([str(env / "bin" / "python"), "-c", script], "read requirements")
    wanted = [line for line in requirements.splitlines() if line.strip()]
    if wanted:
        pip(env, *wanted)
    pip(env, "tokenizers")
    (env / ".installed").write_text(json.dumps({"requirements": wanted}))
    return env


def install_litellm() -> Path:
    env = PEERS_DIR / f"litellm-{LITELLM_VERSION}"
    if (env / ".installed").exists():
        return env
    env = venv(f"litellm-{LITELLM_VERSION}")
    pip(env, f"litellm[proxy]=={LITELLM_VERSION}")
    (env / ".installed").write_text("{}")
    return env


_MODEL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"]
    words = [f"w{i}" for i in range(2000)]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(out / "tokenizer.json"))
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 4096, "chat_template": template,
    }))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_hidden_layers": 2, "vocab_size": len(vocab), "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    """
)


def model_dir(env: Path) -> Path:
    """The weightless Llama-shaped model directory the mocker serves (built once per venv)."""
    path = env / "model" / MODEL
    if not (path / "config.json").exists():
        _run([str(env / "bin" / "python"), "-c", _MODEL_SCRIPT, str(path)], "build model dir")
    return path


# --- starting ----------------------------------------------------------------------------------


def _nats_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private ``nats-server -js`` on a free loopback port (client CPU: not the server's)."""
    port = free_port()
    argv = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir / "js")]
    proc = spawn(pinned("1", argv), clean_env({}), workdir, workdir / "nats.log")
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop_process(proc)
    raise StartError(f"nats-server did not start:\n{log_tail(workdir / 'nats.log')}")


def start_dynamo(scenario: Scenario, ctx: Context) -> Running:
    """Dynamo's frontend + mocker, both pinned to the server CPU."""
    version = scenario.system.removeprefix("dynamo-")
    env_dir = install_dynamo(version)
    model = model_dir(env_dir)
    python = str(env_dir / "bin" / "python")
    workdir = ctx.workdir / f"{scenario.system}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    port = free_port()
    env = {
        "HF_HUB_OFFLINE": "1",
        "DYN_LOG": "warn",
        "DYN_FILE_KV": str(workdir / "kv"),  # the file store/discovery root: private per run
        "TMPDIR": str(workdir),
        "HOME": str(workdir),
    }
    processes: list[subprocess.Popen[bytes]] = []
    frontend_args = ["--http-port", str(port), "--http-host", "127.0.0.1"]
    mocker_args = [
        "--model-path", str(model), "--model-name", MODEL, "--speedup-ratio", "1000000",
    ]  # fmt: skip
    if version == "0.7.1":
        nats, nats_url = _nats_server(workdir)
        processes.append(nats)
        env |= {"NATS_SERVER": nats_url, "DYN_REQUEST_PLANE": "tcp"}
        frontend_args += ["--store-kv", "file"]
        mocker_args += ["--store-kv", "file"]
        if scenario.audit != "off":
            env |= {
                "DYN_AUDIT_ENABLED": "1",
                "DYN_AUDIT_SINKS": "stderr",
                "DYN_LOG": "warn,dynamo_llm::audit::sink=info",
            }
    else:
        plane = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]
        frontend_args += plane
        mocker_args += plane
        if scenario.audit != "off":
            env |= {"DYN_AUDIT_SINKS": "stderr", "DYN_AUDIT_FORCE_LOGGING": "true"}
    quiet = scenario.audit != "off"  # audit records go to stderr: /dev/null, like ours
    full_env = clean_env(env)
    front_log = None if quiet else workdir / "frontend.log"
    mock_log = workdir / "mocker.log"
    try:
        mocker = spawn(
            pinned(SERVER_CPUS, [python, "-m", "dynamo.mocker", *mocker_args]),
            full_env,
            workdir,
            mock_log,
        )
        processes.append(mocker)
        frontend = spawn(
            pinned(SERVER_CPUS, [python, "-m", "dynamo.frontend", *frontend_args]),
            full_env,
            workdir,
            front_log,
        )
        processes.append(frontend)
        url = f"http://127.0.0.1:{port}"
        running = Running(url, [frontend.pid, mocker.pid], processes, model=MODEL)
        _wait_model(url, frontend, mocker, front_log, mock_log)
    except BaseException:
        for proc in reversed(processes):
            stop_process(proc)
        raise
    return running


def _wait_model(
    url: str,
    frontend: subprocess.Popen[bytes],
    mocker: subprocess.Popen[bytes],
    front_log: Path | None,
    mock_log: Path,
    timeout_s: float = 120,
) -> None:
    """Wait until the frontend lists the mocker's model (it registers asynchronously)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in ((frontend, front_log), (mocker, mock_log)):
            if proc.poll() is not None:
                raise StartError(f"exited with code {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
                if MODEL in response.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise StartError(
        f"model not served within {timeout_s:.0f}s:\n{log_tail(front_log)}\n{log_tail(mock_log)}"
    )


_CALLBACK = textwrap.dedent(
    '''
    """A LiteLLM logging callback that appends each request and response to a JSONL file."""
    import json, os
    from litellm.integrations.custom_logger import CustomLogger


    class JsonlLogger(CustomLogger):
        def __init__(self):
            self.f = open(os.environ["BENCH_JSONL_PATH"], "a")

        def _write(self, kwargs, response_obj):
            dump = getattr(response_obj, "model_dump", None)
            record = {
                "request": {"model": kwargs.get("model"), "messages": kwargs.get("messages")},
                "response": dump() if dump is not None else None,
            }
            self.f.write(json.dumps(record, default=str) + "\\n")
            self.f.flush()

        def log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._write(kwargs, response_obj)

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._write(kwargs, response_obj)


    jsonl_logger = JsonlLogger()
    '''
)


def start_litellm(scenario: Scenario, ctx: Context) -> Running:
    """``litellm --config`` proxying model ``mock`` to the fake upstream, one worker."""
    env_dir = install_litellm()
    workdir = ctx.workdir / f"litellm-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    key = "sk-" + secrets.token_hex(24)
    config = [
        "model_list:",
        "  - model_name: mock",
        "    litellm_params:",
        "      model: openai/mock",
        f"      api_base: {ctx.upstream_url}",
        "      api_key: sk-upstream",
        "general_settings:",
        f"  master_key: {key}",
    ]
    if scenario.audit != "off":
        (workdir / "bench_callback.py").write_text(_CALLBACK)
        config += ["litellm_settings:", "  callbacks: bench_callback.jsonl_logger"]
    (workdir / "config.yaml").write_text("\n".join(config) + "\n")
    port = free_port()
    env = clean_env(
        {
            "BENCH_JSONL_PATH": str(workdir / "litellm.jsonl"),
            "PYTHONPATH": str(workdir),
            "LITELLM_LOG": "ERROR",
            "HOME": str(workdir),
        }
    )
    argv = [
        str(env_dir / "bin" / "litellm"), "--config", str(workdir / "config.yaml"),
        "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
    ]  # fmt: skip
    log = workdir / "litellm.log"
    proc = spawn(pinned(SERVER_CPUS, argv), env, workdir, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health/liveliness", proc, 120, log)
    except BaseException:
        stop_process(proc)
        raise
    return Running(url, [proc.pid], [proc], headers=(("Authorization", f"Bearer {key}"),))


def scenarios(peers: Sequence[str]) -> list[Scenario]:
    """Scenarios for the named peers (``dynamo-0.7.1``, ``dynamo-1.6.1``, ``litellm``)."""
    found: list[Scenario] = []
    for peer in peers:
        if peer.startswith("dynamo-"):
            found += [Scenario(peer, "mock", a, start_dynamo) for a in ("off", "stderr")]
        elif peer == "litellm":
            system = f"litellm-{LITELLM_VERSION}"
            found += [Scenario(system, "openai", a, start_litellm) for a in ("off", "jsonl")]
        else:
            raise SystemExit(f"unknown peer {peer!r}")
    return found


def versions(peers: Sequence[str]) -> dict[str, str]:
    """The versions of the peers' main distributions, as installed (absent: not yet)."""
    found = {}
    for peer in peers:
        name, dist = (
            (f"litellm-{LITELLM_VERSION}", "litellm") if peer == "litellm" else (peer, "ai-dynamo")
        )
        python = PEERS_DIR / name / "bin" / "python"
        script = f"import importlib.metadata as m; print(m.version({dist!r}))"
        try:
            found[dist + f" ({name})"] = _run([str(python), "-c", script], "version", 60).strip()
        except (StartError, OSError):
            found[dist + f" ({name})"] = "absent"
    return found
