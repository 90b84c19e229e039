"""What only the S3 backend does, against a real S3 API server (moto over HTTP): storage classes on
data packs only, thawing cold packs, conditional writes, multipart uploads and their cleanup,
refused connections, and credentials that never appear in an error."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, closed_port
from storage_support import s3_settings

from phoenix_backup.config import Config
from phoenix_backup.errors import ObjectExists, StorageError, TargetAuthError, TargetUnreachable
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.s3 import S3Backend, S3Settings, within_minimum_storage
from phoenix_backup.storage.targets import backend_for
from phoenix_backup.storage.wrappers import unwrap, wrap

PACK = "data/ab/" + "ab" * 32
TREE_PACK = "data/cd/" + "cd" * 32


def _s3(backend: Backend) -> S3Backend:
    inner = unwrap(backend)
    assert isinstance(inner, S3Backend)
    return inner


def _head(moto: MotoServer, backend: Backend, name: str) -> dict[str, object]:
    s3 = _s3(backend)
    return dict(moto.client().head_object(Bucket=s3.bucket, Key=s3.prefix + name))


def test_objects_live_under_the_prefix_with_the_format_names(
    moto: MotoServer, make_backend: Callable[..., Backend]
) -> None:
    b = make_backend("s3")
    b.create()
    b.write("config", b"{}")
    b.write(PACK, b"p")
    s3 = _s3(b)
    assert set(moto.keys(s3.bucket, s3.prefix)) == {s3.prefix + "config", s3.prefix + PACK}
    assert s3.prefix.endswith("/argent/")


def test_storage_class_applies_to_cold_writes_only(moto: MotoServer, make_backend: Callable[..., Backend]) -> None:
    b = make_backend("s3", storage_class="DEEP_ARCHIVE")
    b.create()
    b.write(PACK, b"data pack", cold=True)
    b.write(TREE_PACK, b"tree pack")
    b.write("config", b"{}")
    assert _head(moto, b, PACK).get("StorageClass") == "DEEP_ARCHIVE"
    assert _head(moto, b, TREE_PACK).get("StorageClass", "STANDARD") == "STANDARD"
    assert _head(moto, b, "config").get("StorageClass", "STANDARD") == "STANDARD"
    info = b.stat(PACK)
    assert info is not None and info.storage_class == "DEEP_ARCHIVE"
    assert within_minimum_storage(info), "a fresh DEEP_ARCHIVE pack is inside its 180-day minimum"
    assert not within_minimum_storage(info, now=time.time() + 181 * 86400)


def test_reading_a_cold_pack_requests_a_thaw_and_says_so(
    moto: MotoServer, make_backend: Callable[..., Backend]
) -> None:
    """moto completes a restore at once, so this shows the request and the wait loop's happy path;
    a real GLACIER thaw takes hours (then ThawPending names the fix)."""
    notices: list[str] = []
    b = make_backend("s3", storage_class="GLACIER", thaw_timeout=30, notices=notices)
    b.create()
    b.write(PACK, b"frozen bytes", cold=True)
    s3 = _s3(b)
    with pytest.raises(Exception, match="InvalidObjectState"):
        moto.client().get_object(Bucket=s3.bucket, Key=s3.prefix + PACK)  # really cold
    assert b.read_range(PACK, 0, 6) == b"frozen"
    assert b.read(PACK) == b"frozen bytes"
    assert 'ongoing-request="false"' in str(_head(moto, b, PACK).get("Restore"))
    assert any("cold storage class" in n and "--thaw-timeout" in n for n in notices), notices


def test_prepare_read_thaws_many_packs_in_one_go(moto: MotoServer, make_backend: Callable[..., Backend]) -> None:
    notices: list[str] = []
    b = make_backend("s3", storage_class="GLACIER", notices=notices)
    b.create()
    names = [f"data/{i:02x}/{i:02x}" + "e" * 62 for i in range(3)]
    for n in names:
        b.write(n, n.encode(), cold=True)
    b.prepare_read(names)
    assert [b.read(n) for n in names] == [n.encode() for n in names]
    assert len([n for n in notices if "cold storage class" in n]) == 1


def test_exclusive_create_uses_if_none_match(moto: MotoServer, make_backend: Callable[..., Backend]) -> None:
    b = make_backend("s3", wrapped=False)
    b.create()
    b.write("config", b"one", exclusive=True)
    with pytest.raises(ObjectExists):
        b.write("config", b"two", exclusive=True)
    assert _s3(b)._conditional, "moto honours If-None-Match: the atomic path was used, not the fallback"
    assert b.read("config") == b"one"


def test_create_over_an_interrupted_init_keeps_the_slots_of_the_repository_copied_there(
    moto: MotoServer, make_backend: Callable[..., Backend]
) -> None:
    """A prefix holding only key slots is an interrupted init's, started over; but a slot whose
    bytes are the repository's being copied there is a racing sync's, which may have written its
    config since: it stays (deleted, the replica would hold a repository no slot opens)."""
    b = make_backend("s3")
    b.create()
    b.write("keys/" + "a" * 16, b"the repository's own slot")
    b.write("keys/" + "b" * 16, b"another init's slot")
    b.create({"keys/" + "a" * 16: b"the repository's own slot", "keys/" + "b" * 16: b"not these bytes"})
    assert [i.name for i in b.list("keys/")] == ["keys/" + "a" * 16]


def test_doctor_finds_a_service_that_does_not_honour_conditional_writes(
    moto: MotoServer, make_backend: Callable[..., Backend]
) -> None:
    """A service that ignores If-None-Match, or does not implement it, makes creation
    check-then-write: `protection` (what `phx doctor` shows for an append-only target) says so,
    and the probe leaves the config as it was. Such services are emulated against the real S3 API
    server by dropping the header from the request, or by answering 501 in its place."""
    from botocore.exceptions import ClientError

    b = make_backend("s3", wrapped=False)
    b.create()
    b.write("config", b"the config", exclusive=True)
    s3 = _s3(b)
    assert s3.conditional_writes() is True
    assert "If-None-Match" not in b.protection().message

    def ignore(params: dict[str, object], **_kw: object) -> None:
        params.pop("IfNoneMatch", None)

    s3.client.meta.events.register("before-parameter-build.s3.PutObject", ignore)
    assert s3.conditional_writes() is False
    assert "does not honour conditional writes (If-None-Match)" in b.protection().message
    assert b.read("config") == b"the config"
    s3.client.meta.events.unregister("before-parameter-build.s3.PutObject", ignore)

    def not_implemented(params: dict[str, object], **_kw: object) -> None:
        if "IfNoneMatch" in params:
            raise ClientError({"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}}, "Put")

    notes: list[str] = []
    s3.notice = notes.append
    s3.client.meta.events.register("before-parameter-build.s3.PutObject", not_implemented)
    assert s3.conditional_writes() is False
    assert notes and "not atomic" in notes[0]
    with pytest.raises(ObjectExists):  # the fallback: HEAD, then PUT
        b.write("config", b"another config", exclusive=True)
    assert b.read("config") == b"the config"


def test_failed_multipart_upload_is_aborted(moto: MotoServer, make_backend: Callable[..., Backend]) -> None:
    """A multipart upload whose completion fails (here: the object exists and the write is
    exclusive) leaves neither a changed object nor billed parts behind."""
    b = make_backend("s3", wrapped=False, multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    b.create()
    b.write(PACK, b"original", exclusive=True)
    with pytest.raises(ObjectExists):
        b.write(PACK, b"x" * (6 * 1024 * 1024), exclusive=True)
    s3 = _s3(b)
    assert b.read(PACK) == b"original"
    assert moto.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix).get("Uploads", []) == []


def test_abandoned_multipart_uploads_are_aborted(moto: MotoServer, make_backend: Callable[..., Backend]) -> None:
    b = make_backend("s3")
    b.create()
    s3 = _s3(b)
    client = moto.client()
    # What a process killed mid-upload leaves: an upload that was never completed or aborted.
    up = client.create_multipart_upload(Bucket=s3.bucket, Key=s3.prefix + PACK)
    client.upload_part(Bucket=s3.bucket, Key=s3.prefix + PACK, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100)
    other = client.create_multipart_upload(Bucket=s3.bucket, Key="someone-else/file")
    assert b.abort_abandoned_uploads(everything=True) == 1
    left = client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]], "only uploads below our prefix are touched"
    assert b.stat(PACK) is None
    client.abort_multipart_upload(Bucket=s3.bucket, Key="someone-else/file", UploadId=other["UploadId"])


def test_refused_connection_fails_within_ten_seconds(moto: MotoServer) -> None:
    settings = s3_settings(moto, "nobucket", endpoint=f"http://127.0.0.1:{closed_port()}")
    b = wrap(S3Backend(settings), limit=4)
    start = time.monotonic()
    with pytest.raises(TargetUnreachable) as err:
        b.exists()
    took = time.monotonic() - start
    assert took < 10, f"took {took:.1f} s"
    assert "cannot connect" in str(err.value) and "targets.s3.endpoint" in str(err.value)
    # The wrapper remembers: the next call fails at once instead of waiting again.
    start = time.monotonic()
    with pytest.raises(TargetUnreachable):
        b.write(PACK, b"x")
    assert time.monotonic() - start < 0.5


def test_missing_bucket_is_a_clear_error(moto: MotoServer) -> None:
    b = S3Backend(s3_settings(moto, "phx-no-such-bucket-here"))
    with pytest.raises(StorageError, match="does not exist") as err:
        b.create()
    assert "targets.s3.bucket" in str(err.value)


def test_credentials_never_appear_in_errors(moto: MotoServer, bucket: str) -> None:
    for endpoint in (f"http://127.0.0.1:{closed_port()}", moto.endpoint):
        b = S3Backend(s3_settings(moto, "phx-absent-bucket", endpoint=endpoint))
        with pytest.raises(StorageError) as err:
            b.create()
        text = f"{err.value!s} {err.value!r} {b.location} {b.settings!r}"
        assert SECRET_ACCESS_KEY not in text
        assert ACCESS_KEY_ID not in text


def _config(tmp_path: Path, targets: dict[str, object], env: dict[str, str]) -> Config:
    from phoenix_backup.config import parse_config

    data = {"workspace": str(tmp_path), "backupDir": str(tmp_path / "repo"), "targets": targets}
    return parse_config(data, tmp_path / "phx.json", env)


def _settings(cfg: Config, name: str, env: dict[str, str]) -> S3Settings:
    backend = backend_for(cfg, name, env)
    try:
        return _s3(backend).settings
    finally:
        backend.close()


def test_r2_is_the_s3_code_at_the_account_endpoint(tmp_path: Path) -> None:
    account = "0123456789abcdef0123456789abcdef"
    env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    cfg = _config(tmp_path, {"r2": {"enabled": True, "accountId": account, "bucket": "agent-backups"}}, env)
    settings = _settings(cfg, "r2", env)
    assert settings.endpoint == f"https://{account}.r2.cloudflarestorage.com"
    assert settings.region == "auto"
    cfg = _config(
        tmp_path,
        {"r2": {"enabled": True, "bucket": "agent-backups", "endpoint": "http://127.0.0.1:9000"}},
        env,
    )
    assert _settings(cfg, "r2", env).endpoint == "http://127.0.0.1:9000", "endpoint wins; no accountId needed"


def test_credentials_come_from_config_then_environment_then_chain(tmp_path: Path) -> None:
    base = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    keys = {"accessKeyId": "AKIACONFIG", "secretAccessKey": "config-secret"}
    s3 = {"enabled": True, "bucket": "agent-backups"}
    r2 = {"enabled": True, "bucket": "agent-backups", "endpoint": "http://127.0.0.1:9000"}
    env = {**base, "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    env_r2 = {**env, "R2_ACCESS_KEY_ID": "R2ENV", "R2_SECRET_ACCESS_KEY": "r2-secret"}

    cfg = _config(tmp_path, {"s3": {**s3, **keys}}, env)
    assert _settings(cfg, "s3", env).access_key_id == "AKIACONFIG"
    cfg = _config(tmp_path, {"s3": s3}, env)
    assert _settings(cfg, "s3", env).access_key_id == "AKIAENV"
    cfg = _config(tmp_path, {"r2": r2}, env_r2)
    assert _settings(cfg, "r2", env_r2).access_key_id == "R2ENV"
    cfg = _config(tmp_path, {"s3": s3}, {**base, "AWS_PROFILE": "backup"})
    with pytest.raises(TargetAuthError, match="AWS_PROFILE"):
        _settings(cfg, "s3", {**base, "AWS_PROFILE": "backup"})  # no such profile in this HOME
    cfg = _config(tmp_path, {"s3": s3}, base)
    settings = _settings(cfg, "s3", base)
    assert settings.access_key_id is None and settings.profile is None, "left to the SDK's chain"
    assert "config-secret" not in repr(_settings(_config(tmp_path, {"s3": {**s3, **keys}}, env), "s3", env))


def test_a_read_timeout_names_the_endpoint_and_the_fix() -> None:
    """An endpoint that accepts and never answers ends in a read timeout: the error names the
    setting to check, not only "(ReadTimeoutError)"."""
    from botocore.exceptions import ReadTimeoutError

    settings = S3Settings(
        target="s3",
        bucket="b",
        prefix="argent/",
        endpoint="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    )
    error = S3Backend(settings)._error(ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b"), "reading config")
    assert "ReadTimeoutError" in str(error) and "targets.s3.endpoint" in str(error) and "run again" in str(error)
