"""A real S3 API server for tests: moto in server mode (`python -m moto.server`) on a free loopback
port, plus helpers for buckets and Git remotes. Used by the integration and end-to-end tests.

Nothing here mocks S3: requests go over HTTP to the moto process, which implements the S3 API
(conditional writes, multipart uploads, storage classes and restore_object included).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

# Credentials the tests give Phoenix: moto accepts any, and the distinctive secret lets tests
# prove it never shows up in output, logs, errors or the state file.
ACCESS_KEY_ID = "AKIAPHXTESTKEY000001"
SECRET_ACCESS_KEY = "phx-secret-" + "Zq9xW7vT3kL0pR8sN2mB5cY1dF6gH4jA"


# `python -m moto.server` with two of its costs per request taken out: moto matches a request's
# host against its service folders, which it lists from disk at every request (about 170 folders,
# 1 ms), here listed once; werkzeug writes a log line per request, here none (its start-up lines,
# which name the port, and its errors still are). The requests are served by the same code.
_MOTO_SERVER = """
import runpy, sys

import moto.backends
import werkzeug.serving

_modules = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: _modules
werkzeug.serving.WSGIRequestHandler.log_request = lambda self, code="-", size="-": None
sys.argv[0] = "moto.server"
runpy.run_module("moto.server", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    return free_port()


class MotoServer:
    def __init__(self) -> None:
        self._client: Any = None
        self.log = tempfile.NamedTemporaryFile(prefix="phx-moto-", suffix=".log", delete=False)  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # Port 0: the server binds a port the kernel chooses and names it in its log, so servers
        # of parallel test workers (pytest-xdist) can never take each other's port.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, "-H", "127.0.0.1", "-p", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            found = re.search(rb"Running on http://127\.0\.0\.1:(\d+)", Path(self.log.name).read_bytes())
            if found:
                self.port = int(found.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not start; see {self.log.name}")
            time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10):
            pass

    def client(self) -> Any:
        """The server's one boto3 client, made at the first call: a client costs 0.18 CPU-s (botocore
        parses the S3 model), and the tests asked for a new one at each bucket made or listed."""
        if self._client is None:
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
                region_name="us-east-1",
            )
        return self._client

    def make_bucket(self, stem: str = "phx") -> str:
        name = f"{stem}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def target(self, bucket: str, prefix: str = "argent/") -> dict[str, Any]:
        """An enabled `targets.s3` config section for `bucket` on this server, with credentials."""
        return {
            "enabled": True,
            "bucket": bucket,
            "prefix": prefix,
            "endpoint": self.endpoint,
            "accessKeyId": ACCESS_KEY_ID,
            "secretAccessKey": SECRET_ACCESS_KEY,
        }

    def keys(self, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every object below `prefix`: key -> {size, storageClass}."""
        out: dict[str, dict[str, Any]] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = {"size": obj["Size"], "storageClass": obj.get("StorageClass", "STANDARD")}
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server for the whole test session; every user makes its own buckets."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


def git_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, check=True)
    return proc.stdout


def bare_repo(path: Path, *, reject_pushes: bool = False) -> Path:
    """An empty bare Git repository on disk, the remote of a Git target. With `reject_pushes`, a
    pre-receive hook declines every push (like a protected branch)."""
    git("init", "-q", "--bare", str(path))
    if reject_pushes:
        hook = path / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'pushes to this branch are not allowed' >&2\nexit 1\n")
        hook.chmod(0o755)
    return path
