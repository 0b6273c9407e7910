"""``auditgate keys``: salted hashes from ``add``, old files still served, ``upgrade`` in place."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai

from auditgate.auth.keys import generate_key
from tests.support.gateway import clean_env, running_gateway

HAND_MADE = "legacy-hand-made-key-01"


def keys_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``auditgate keys ARGS`` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "auditgate", "keys", *args],
        input=stdin,
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def accepted(base_url: str, keys: list[str]) -> list[bool]:
    """Whether the gateway lets each key list the models (the official SDK as the client)."""
    out = []
    for key in keys:
        api = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
        try:
            api.models.list()
        except openai.AuthenticationError:
            out.append(False)
        else:
            out.append(True)
    return out


def old_entry(name: str, tenant: str, key: str) -> dict[str, Any]:
    return {"name": name, "tenant": tenant, "role": "user", "sha256": sha256(key)}


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_add_writes_a_salted_hash_the_gateway_accepts(tmp_path: Path) -> None:
    """``keys add`` prints a key whose entry holds its prefix and a scrypt hash (neither the
    key nor its SHA-256), which the gateway accepts, refusing a key that only starts like it."""
    path = tmp_path / "keys.json"
    made = keys_cli("add", "--file", str(path), "--tenant", "acme")
    key = made.stdout.strip()
    text = path.read_text()
    (entry,) = json.loads(text)["keys"]
    env = {"AUDITGATE_API_KEYS_FILE": str(path)}
    with running_gateway(env, log_dir=tmp_path) as gw:
        verdicts = accepted(gw.base_url, [key, key[:-4] + "AAAA", generate_key(), key])
    assert (
        made.returncode,
        sorted(entry),
        entry["prefix"],
        sorted(entry["scrypt"]),
        key[11:] in text or sha256(key) in text,
        verdicts,
    ) == (
        0,
        ["name", "prefix", "role", "scrypt", "tenant"],
        key[:11],
        ["hash", "n", "p", "r", "salt"],
        False,
        [True, False, False, True],
    )


def test_old_file_served_then_upgraded_in_place(tmp_path: Path) -> None:
    """An old file (unsalted SHA-256) still authenticates its keys, and ``keys upgrade``
    rehashes the entries of generated keys with salts of their own (two files upgraded from
    the same one differ) while every key keeps working and a hand-made one stays old."""
    generated = generate_key()
    old = {"keys": [old_entry("gen", "a", generated), old_entry("hand", "b", HAND_MADE)]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    env = {"AUDITGATE_API_KEYS_FILE": str(tmp_path / "old.json")}
    with running_gateway(env, log_dir=tmp_path) as gw:
        before = accepted(gw.base_url, [generated, HAND_MADE, "legacy-hand-made-key-02"])
    stdin = f"{generated}\n{HAND_MADE}\n{generate_key()}\n"
    results, files = [], []
    for name in ("one.json", "two.json"):
        shutil.copy(tmp_path / "old.json", tmp_path / name)
        done = keys_cli("upgrade", "--file", str(tmp_path / name), stdin=stdin)
        results.append((done.returncode, done.stdout, done.stderr.splitlines()))
        files.append(json.loads((tmp_path / name).read_text())["keys"])
        with running_gateway(
            {"AUDITGATE_API_KEYS_FILE": str(tmp_path / name)}, log_dir=tmp_path
        ) as gw:
            results.append(accepted(gw.base_url, [generated, HAND_MADE]))
    expected_output = (
        1,
        "",
        [
            "auditgate keys: upgraded 1 old entries: gen",
            "auditgate keys: not upgraded, keys `auditgate keys add` did not make (replace "
            "them: keys add a new one, hand it out, delete the entry): hand",
            "auditgate keys: 1 key(s) match no old entry",
            "auditgate keys: old entries left: hand",
        ],
    )
    one, two = files
    assert (before, results) == (
        [True, True, False],
        [expected_output, [True, True], expected_output, [True, True]],
    )
    assert (one[1], two[1]) == (old["keys"][1], old["keys"][1])
    texts = [json.dumps(f) for f in files]
    assert (one[0]["prefix"], two[0]["prefix"], [sha256(generated) in t for t in texts]) == (
        generated[:11],
        generated[:11],
        [False, False],
    )
    salts, hashes = ({f[0]["scrypt"][field] for f in files} for field in ("salt", "hash"))
    assert (len(salts), len(hashes)) == (2, 2)


def test_list_shows_entries_and_revoke_makes_the_restarted_gateway_refuse_them(
    tmp_path: Path,
) -> None:
    """``keys list`` shows name, tenant, role, prefix and hashing but never a key; ``keys
    revoke NAME`` deletes that name's keys, which a restarted gateway then refuses while the
    other keys still work; an unknown name exits 1."""
    path = tmp_path / "keys.json"
    made = [
        keys_cli("add", "--file", str(path), "--tenant", tenant, "--name", name).stdout.strip()
        for tenant, name in (("acme", "ci"), ("acme", "bob"), ("other", "ops"))
    ]
    listing = keys_cli("list", "--file", str(path))
    assert listing.returncode == 0, listing.stderr
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    assert rows == [
        ["NAME", "TENANT", "ROLE", "PREFIX", "HASH"],
        ["ci", "acme", "user", made[0][:11], "scrypt"],
        ["bob", "acme", "user", made[1][:11], "scrypt"],
        ["ops", "other", "user", made[2][:11], "scrypt"],
    ]
    assert not any(key in listing.stdout for key in made)

    revoked = keys_cli("revoke", "--file", str(path), "bob")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked 1 key(s) named 'bob'" in revoked.stderr
    with running_gateway({"AUDITGATE_API_KEYS_FILE": str(path)}, log_dir=tmp_path) as gw:
        assert accepted(gw.base_url, made) == [True, False, True]
    missing = keys_cli("revoke", "--file", str(path), "bob")
    assert missing.returncode == 1
    assert "no key named 'bob'" in missing.stderr
