"""Fixtures and helpers of the storage integration tests (issue #6): the S3 API server is the
session's `moto` fixture (moto_support.py); here are a bucket, bare Git repositories on disk, and
`make_backend(kind)` giving a fresh, empty backend of each kind, wrapped like Phoenix wraps it
(retries and a concurrency limit). conftest.py imports the fixtures."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, bare_repo

from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.git import GitBackend
from phoenix_backup.storage.local import LocalBackend
from phoenix_backup.storage.s3 import S3Backend, S3Settings
from phoenix_backup.storage.wrappers import wrap

KINDS = ("local", "s3", "git")


@pytest.fixture(scope="session")
def bucket(moto: MotoServer) -> str:
    return moto.make_bucket("conformance")


def s3_settings(moto: MotoServer, bucket: str, **changes: Any) -> S3Settings:
    settings = S3Settings(
        target="s3",
        bucket=bucket,
        prefix=f"t-{secrets.token_hex(4)}/argent/",
        endpoint=moto.endpoint,
        region="us-east-1",
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    )
    for k, v in changes.items():
        setattr(settings, k, v)
    return settings


@pytest.fixture
def make_backend(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(kind: str, *, wrapped: bool = True, notices: list[str] | None = None, **s3: Any) -> Backend:
        notice = notices.append if notices is not None else None
        inner: Backend
        if kind == "local":
            inner = LocalBackend(tmp_path / f"local-{len(made)}")
        elif kind == "s3":
            server: MotoServer = request.getfixturevalue("moto")
            name: str = request.getfixturevalue("bucket")
            inner = S3Backend(s3_settings(server, name, **s3), notice)
        elif kind == "git":
            require_git()
            remote = bare_repo(tmp_path / f"remote-{len(made)}.git")
            inner = GitBackend(
                str(remote),
                "main",
                True,
                tmp_path / f"data-{len(made)}" / "git" / "clone",
                {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                notice,
            )
        else:
            raise AssertionError(kind)
        backend = wrap(inner, limit=8, notice=notice) if wrapped else inner
        made.append(backend)
        return backend

    yield make
    for b in made:
        b.close()


def require_git() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed (scripts/test.sh installs it)")
