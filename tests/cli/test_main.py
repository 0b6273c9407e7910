"""The ``auditgate`` command as a newcomer first meets it: version, help, a missing extra."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

from auditgate.cli.main import main
from tests.support.gateway import clean_env


def auditgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditgate", *args],
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_installed_version() -> None:
    """``auditgate --version`` prints the distribution's version and exits 0."""
    run = auditgate("--version")
    expected = f"auditgate {importlib.metadata.version('auditgate')}\n"
    assert (run.returncode, run.stdout) == (0, expected)


@pytest.mark.parametrize("command", ["serve", "consume", "import"])
def test_help_shows_no_raw_double_backticks(command: str) -> None:
    """Module docstrings become --help text without reStructuredText's ``markup``."""
    run = auditgate(command, "--help")
    assert run.returncode == 0, run.stderr
    assert "``" not in run.stdout
    assert "auditgate" in run.stdout


def test_grpc_port_without_the_grpc_extra_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve --grpc-port`` where grpcio is not installed: exit 2 with the pip command, not a
    ModuleNotFoundError traceback once the app starts."""
    # serve writes its flags into the environment: give it a copy, not this process's.
    monkeypatch.setattr(os, "environ", clean_env({}))
    monkeypatch.setitem(sys.modules, "grpc", None)  # what an absent package looks like
    code = main(["serve", "--port", "0", "--grpc-port", "50051"])
    err = capsys.readouterr().err
    assert (code, err) == (
        2,
        "auditgate: configuration error: --grpc-port (AUDITGATE_GRPC_PORT) needs the grpc "
        "extra, and 'grpc' is not installed: pip install 'auditgate[grpc]'\n",
    )
