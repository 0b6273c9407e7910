"""Take the console screenshots in ``docs/`` (``.venv/bin/python docs/screenshots.py``).

A gateway on a fresh SQLite store that already holds 20,000 synthetic records of the last week
(``bench/console.py``'s), plus completions made now with the ``openai`` SDK (a streamed tool
call with reasoning, markdown, another tenant); then headless Debian chromium at 1280 px signs in
and captures each page.  Everything on loopback, in a temporary directory.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
from bench.console import load_sqlite
from playwright.sync_api import sync_playwright

from auditgate.auth.keys import add_key

DOCS = Path(__file__).resolve().parent
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path, keys: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "AUDITGATE_"))}
    env |= {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "sqlite,jsonl",
        "DYN_AUDIT_SQLITE_PATH": str(root / "audit.db"),
        "DYN_AUDIT_OUTPUT_PATH": str(root / "audit.jsonl"),
        "DYN_AUDIT_INTEGRITY": "1",
        "AUDITGATE_API_KEYS_FILE": keys,
        "AUDITGATE_MODELS": "llama-3-8b,qwen-2.5-7b",
    }
    log = (root / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "auditgate", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return process, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("gateway did not start")


def fill(url: str, acme: str, globex: str) -> str:
    """Completions made now; the request id of the streamed tool call."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=acme, max_retries=0)
    stream = client.chat.completions.create(
        model="qwen-2.5-7b",
        messages=[
            {"role": "system", "content": "You are a **travel assistant**. Use tools."},
            {"role": "user", "content": "Should I pack an umbrella for Lisbon tomorrow?"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        reasoning_effort="low",
        stream=True,
        store=True,
        metadata={"team": "travel", "ticket": "T-1042"},
    )
    tool_record = {chunk.id for chunk in stream}.pop().removeprefix("chatcmpl-")
    for prompt in ("Summarise our refund policy in three bullet points.", "Write a haiku."):
        client.chat.completions.create(
            model="llama-3-8b", messages=[{"role": "user", "content": prompt}], store=True
        )
    other = openai.OpenAI(base_url=url + "/v1", api_key=globex, max_retries=0)
    other.chat.completions.create(
        model="llama-3-8b", messages=[{"role": "user", "content": "Quarterly numbers?"}], store=True
    )
    client.close()
    other.close()
    return tool_record


def shoot(url: str, admin: str, tool_record: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for scheme in ("light", "dark"):
            context = browser.new_context(
                viewport={"width": 1280, "height": 860}, color_scheme=scheme
            )
            page = context.new_page()
            page.goto(url + "/ui/records")
            if scheme == "light":
                page.screenshot(path=DOCS / "console-sign-in.png")
            page.get_by_label("API key").fill(admin)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/ui/records")
            if scheme == "dark":
                page.goto(f"{url}/ui/records/{tool_record}")
                page.locator(".reasoning summary").click()
                page.screenshot(path=DOCS / "console-record-dark.png", full_page=True)
                context.close()
                continue
            page.screenshot(path=DOCS / "console-records.png")
            page.goto(f"{url}/ui/records/{tool_record}")
            page.locator(".reasoning summary").click()
            page.screenshot(path=DOCS / "console-record.png", full_page=True)
            page.goto(url + "/ui/usage")
            page.wait_for_selector(".chart canvas")
            page.screenshot(path=DOCS / "console-usage.png", full_page=True)
            page.goto(url + "/ui/health")
            page.screenshot(path=DOCS / "console-pipeline.png")
            page.goto(url + "/ui/verify")
            page.get_by_role("button", name="Run verify").click()
            page.get_by_role("status").wait_for()
            page.screenshot(path=DOCS / "console-integrity.png")
            context.close()
        browser.close()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="console-shots-") as directory:
        root = Path(directory)
        keys = str(root / "keys.json")
        admin = add_key(keys, name="compliance", tenant="acme", role="admin")
        acme = add_key(keys, name="travel-app", tenant="acme", role="user")
        globex = add_key(keys, name="finance-bot", tenant="globex", role="user")
        load_sqlite(str(root / "audit.db"), 20_000, int(time.time() * 1000))
        process, url = start(root, keys)
        try:
            tool_record = fill(url, acme, globex)
            time.sleep(1.5)  # the sqlite sink's batch
            shoot(url, admin, tool_record)
        finally:
            process.terminate()
            process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
