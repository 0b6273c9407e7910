"""``auditgate keys revoke`` / ``add`` take effect in a running gateway without a restart:
the gateway follows the keys file (every worker), keeps its keys when the file breaks, and
reloads at once on SIGHUP.  The real gateway subprocess, the official SDK as the client."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from auditgate.auth.keys import generate_key, salted_entry, write
from tests.cli.test_keys import accepted, keys_cli
from tests.support.gateway import Gateway, running_gateway

FOLLOW_S = 3.0
"""How long a change may take to be honoured: the ring stats the file once a second (plus the
first scrypt of a new key, and a busy machine)."""


def until(condition: Callable[[], bool], timeout: float = FOLLOW_S) -> float:
    """Poll ``condition`` until it holds; the seconds it took (AssertionError past ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


def add(path: Path, tenant: str) -> str:
    made = keys_cli("add", "--file", str(path), "--tenant", tenant)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def failures(gw: Gateway, key: str) -> float:
    """The gateway's count of failed reloads of the keys file (its /metrics, as ``key``)."""
    request = urllib.request.Request(
        gw.url + "/metrics", headers={"Authorization": "Bearer " + key}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        metrics = response.read().decode()
    match = re.search(r"^auditgate_api_keys_reload_failures_total (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else -1.0


@pytest.mark.parametrize("workers", [1, 2])
def test_revoke_and_add_without_restart(tmp_path: Path, workers: int) -> None:
    """A revoked key is refused by every worker within seconds, a key added later works."""
    path = tmp_path / "keys.json"
    acme, other = add(path, "acme"), add(path, "other")
    env = {"AUDITGATE_API_KEYS_FILE": str(path)}
    with running_gateway(env, ["--workers", str(workers)], log_dir=tmp_path) as gw:
        before = accepted(gw.base_url, [acme, other] * workers)
        revoked = keys_cli("revoke", "--file", str(path), "acme")
        until(lambda: accepted(gw.base_url, [acme]) == [False])
        # Each request may reach any worker: all of them must refuse it now.
        after = accepted(gw.base_url, [acme, other] * 3 * workers)
        new = add(path, "newcomer")
        until(lambda: accepted(gw.base_url, [new] * 2 * workers) == [True] * 2 * workers)
        log = gw.log()
    assert (revoked.returncode, before, after) == (
        0,
        [True] * 2 * workers,
        [False, True] * 3 * workers,
    )
    assert "API keys: reloaded" in log
    for key in (acme, other, new):
        assert key not in log and key[11:] not in log


def test_a_broken_file_keeps_the_keys(tmp_path: Path) -> None:
    """A keys file that no longer parses keeps the keys in force, logs one error (no key in
    it) and counts it; once the file is right again it is followed again."""
    path = tmp_path / "keys.json"
    acme = add(path, "acme")
    env = {"AUDITGATE_API_KEYS_FILE": str(path)}
    with running_gateway(env, log_dir=tmp_path) as gw:
        assert accepted(gw.base_url, [acme]) == [True]
        broken = tmp_path / "keys.json.new"
        broken.write_text('{"keys": [{"tenant": "acme", "prefix": "ag-')  # cut short
        broken.replace(path)
        until(lambda: accepted(gw.base_url, [acme]) == [True] and failures(gw, acme) == 1)
        # Later checks of the same broken file neither log nor count again.
        start = time.monotonic()
        until(lambda: time.monotonic() - start > 1.5 and accepted(gw.base_url, [acme]) == [True])
        still = failures(gw, acme)
        write(str(path), {"keys": []})
        until(lambda: accepted(gw.base_url, [acme]) == [False])
        log = gw.log()
    assert still == 1
    errors = [line for line in log.splitlines() if "keeping the 1 keys loaded before" in line]
    assert len(errors) == 1, log
    assert str(path) in errors[0]
    assert acme not in log and acme[11:] not in log


def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    """SIGHUP reloads even a change that kept the file's inode, size and mtime (which the
    periodic check cannot see), and the gateway keeps serving."""
    path = tmp_path / "keys.json"
    old = add(path, "acme")
    env = {"AUDITGATE_API_KEYS_FILE": str(path)}
    with running_gateway(env, log_dir=tmp_path) as gw:
        assert accepted(gw.base_url, [old]) == [True]
        st = path.stat()
        new = generate_key()
        data = json.loads(path.read_text())
        data["keys"][0] = salted_entry(new, data["keys"][0])
        text = json.dumps(data, indent=2) + "\n"
        assert len(text) == st.st_size  # same shape, same length: only the key differs
        with path.open("r+") as f:  # in place: same inode
            f.write(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        # The periodic check sees no change: the old key stays in force.
        start = time.monotonic()
        until(lambda: time.monotonic() - start > 1.5 and accepted(gw.base_url, [old]) == [True])
        gw.process.send_signal(signal.SIGHUP)
        until(lambda: accepted(gw.base_url, [old, new]) == [False, True])
        alive = gw.process.poll() is None
        log = gw.log()
    assert alive
    assert "SIGHUP" in log
    assert old not in log and new not in log
