"""A private S3-compatible server for tests: moto's standalone server on a free loopback port,
in a process of its own (``python -m moto.server``).

moto keeps buckets and objects in memory, so a stopped server forgets them: an outage is
modelled by starting the gateway before the server (nothing listens on the endpoint yet).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.gateway import free_port

ACCESS_KEY = "AKIDLAKETEST"
SECRET_KEY = "lake-secret-key-never-logged"
REGION = "us-east-1"


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables a gateway or a CLI needs to reach ``endpoint``."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "DYN_AUDIT_S3_ENDPOINT_URL": endpoint,
    }


class MotoS3:
    """One moto server process; ``endpoint`` is its URL."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"moto-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start the server and wait until it answers HTTP."""
        assert self.process is None, "already running"
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise AssertionError(f"moto server exited with {code}:\n{self.log()}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=1).close()
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"moto server not ready in {ready_timeout}s:\n{self.log()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def client(self) -> Any:
        """A boto3 S3 client of the server (for setting up and reading back)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket``: key -> body."""
        client = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        return dict(self.client().head_object(Bucket=bucket, Key=key))


@contextlib.contextmanager
def moto_s3(directory: Path, port: int | None = None) -> Iterator[MotoS3]:
    """A running server for the duration of a ``with`` block."""
    server = MotoS3(directory, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()
