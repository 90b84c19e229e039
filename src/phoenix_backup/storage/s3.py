"""Objects in an S3 bucket below a prefix: Amazon S3, Cloudflare R2, or any S3-compatible service.

- Every write is one request that makes the object appear whole (a PUT, or for large objects a
  multipart upload, which S3 also only shows once it is completed), so an object is either
  wholly there or absent.
- Exclusive creation (`config`, key slots, run keys, and every write to an append-only target)
  sends `If-None-Match: *`, which S3 (since 2024), R2 and moto enforce. A service that answers
  "not implemented" gets a HEAD-then-PUT instead, which is not atomic; the fallback is noted
  once. A service that silently ignores the header behaves like the fallback; `phx doctor` finds
  both (`conditional_writes`). The fallback is allowed, append-only targets included: what a
  racing writer could replace in its window is an object of the same name, which is either
  named by its content (the same bytes), or by 64 random bits (key slots, run keys), or the
  `config` of two `init`s at once; with Object Lock a PUT over a retained version only adds a
  newer one, and without it the same credentials can overwrite anyway (`doctor` fails that).
- Data packs go to the configured storage class; every other object stays STANDARD, so listing,
  browsing and structural checks never need a thaw. Reading a pack in GLACIER or DEEP_ARCHIVE
  requests a restore and waits up to the thaw timeout, saying so.
- With Object Lock (`object_lock_mode`), every object but the locks is written with a retention
  (governance or compliance) until `object_lock_days` from now: S3 itself then refuses to delete
  or overwrite that version, whoever asks (a version written over it stays readable by its id).
  The bucket must have Object Lock enabled; `protection` reports how it is set up.
- Errors are classified for the retry wrapper: refused connections and connect timeouts are
  TargetUnreachable, timeouts/5xx/throttling TransientStorageError, the rest permanent. Messages
  never contain credentials (only the error code is shown for authentication failures).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import io
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as bex
import botocore.loaders
import botocore.session
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPResponse,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.config import Config as BotoConfig

from phoenix_backup.errors import (
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    StorageError,
    TargetAuthError,
    TargetUnreachable,
    ThawPending,
    TransientStorageError,
)
from phoenix_backup.redaction import redact_url
from phoenix_backup.storage.base import (
    SLOW_LINK,
    Backend,
    ObjectInfo,
    Protection,
    is_slot_of,
    is_valid_name,
    max_object_size,
    refuse_oversized,
    validate_name,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
else:
    S3Client = Any

T = TypeVar("T")

# Objects larger than this are sent as a multipart upload in parts of PART_SIZE. Packs are cut at
# 8 MiB (plus at most one 8 MiB chunk), so ordinary packs are one PUT and only unusually large
# objects take the multipart path; both are parameters so tests can exercise multipart cheaply.
MULTIPART_THRESHOLD = 32 * 1024 * 1024
# An object's body is read BODY_CHUNK at a time and cut when no chunk arrived for
# BODY_STALL_SECONDS: a link that brings 256 KiB a minute (about 4.3 KiB/s, 35 kbit/s) is never cut, however
# large the object; a service that drips (a byte now and then, inside the 60 s read timeout)
# is cut after at most a minute, a transient error the retries handle.
BODY_CHUNK = 256 * 1024
BODY_STALL_SECONDS = 60.0
# Every request's status line and headers must be in within RESPONSE_SECONDS of the request
# having been sent: the read timeout bounds each wait for a byte, not the whole, so a service
# dripping its headers a byte now and then would be waited on for ever. The request is cut there,
# a transient error the retries handle. S3 answers in well under a second; a CopyObject or a
# CompleteMultipartUpload sends its status line at once and its result later (in the body).
RESPONSE_SECONDS = 120.0
# A request's body is handed to the socket SEND_BLOCK at a time: urllib3 sends with the connect
# timeout (3 s) as the socket's, and Python applies it to a whole `sendall`, so a send of 256 KiB
# would need 85 KiB/s; 8 KiB needs 2.7 KiB/s, below the body's limit above (4.3 KiB/s), which
# then decides alone how slow an upload may be.
SEND_BLOCK = 8 * 1024
PART_SIZE = 16 * 1024 * 1024
# Storage classes whose objects cannot be read before a restore (thaw).
COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# The minimum storage duration AWS bills per class, in days: prune must not repack a pack in one
# of these classes earlier (it would pay the rest of the period anyway, and again for the copy).
MIN_STORAGE_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}
# How long a thawed copy stays readable.
THAW_DAYS = 3
# Multipart uploads older than this are abandoned even if another writer holds a lock.
ABANDONED_AFTER = 24 * 3600

_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "InvalidSecurity",
        "403",
        "Forbidden",
    }
)


def within_minimum_storage(info: ObjectInfo, now: float | None = None) -> bool:
    """True while `info` is younger than the minimum storage period of its class (prune uses
    this to leave cold packs alone)."""
    days = MIN_STORAGE_DAYS.get(info.storage_class or "STANDARD")
    if days is None or info.modified is None:
        return False
    return (now if now is not None else time.time()) - info.modified < days * 86400


@dataclass
class S3Settings:
    """Everything needed to reach one bucket. `secret_access_key` never appears in repr."""

    target: str  # "s3" or "r2": names the config section in messages
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    storage_class: str = "STANDARD"
    max_connections: int = 8
    thaw_timeout: float = 0.0
    multipart_threshold: int = MULTIPART_THRESHOLD
    part_size: int = PART_SIZE
    object_lock_mode: str | None = None  # "governance" or "compliance": retention on every object but locks
    object_lock_days: int = 0
    # A diagnosis's deadline (`phx doctor`, `phx status`): seconds to connect and for each answer's
    # first byte, and such a wait is no transient error but the target not answering. None: a
    # backup's own timeouts (3 s to connect, 60 s a read, retried).
    answer_seconds: float | None = None


def normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


@functools.cache
def _models() -> botocore.loaders.Loader:
    """botocore's loader of its JSON service models, one for the process: a client made in a new
    session would read and parse the S3 model and the endpoint rules again (0.18 CPU-s a client,
    against 0.02 s with them loaded once); a `phx` command that opens several targets, and every
    backend a long-lived watch or a test opens, pays that once."""
    return botocore.loaders.create_loader()


class S3Backend(Backend):
    kind = "s3"

    def __init__(self, settings: S3Settings, notice: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = normalize_prefix(settings.prefix)
        self.notice = notice or (lambda _m: None)
        self.field = f"targets.{settings.target}"
        self._conditional = True  # whether the service honours If-None-Match
        self._thaw_deadline: float | None = None
        self._thaw_announced = False
        core = botocore.session.get_session()
        try:
            session = boto3.session.Session(
                botocore_session=core,
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                aws_session_token=settings.session_token,
                profile_name=settings.profile if settings.access_key_id is None else None,
                region_name=settings.region,
            )
        except bex.ProfileNotFound as exc:
            raise TargetAuthError(
                f"the AWS profile {settings.profile!r} (AWS_PROFILE) does not exist; fix AWS_PROFILE or set "
                f"{self.field}.accessKeyId and secretAccessKey"
            ) from exc
        # After boto3 set up its own loader (it adds its resource models' folder to that one).
        core.register_component("data_loader", _models())
        config = BotoConfig(
            # The retry wrapper is the only retry layer: botocore's own retries would multiply
            # its attempts and blow the 10 s budget for a refused connection.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=settings.answer_seconds or 3,
            read_timeout=settings.answer_seconds or 60,
            max_pool_connections=max(4, settings.max_connections + 2),
            s3={"addressing_style": "path" if settings.endpoint else "auto"},
            user_agent_extra="phoenix-backup",
        )
        self.client: S3Client = session.client("s3", endpoint_url=settings.endpoint, config=config)
        _bound_response_headers(self.client)
        if settings.answer_seconds is not None:
            _answer_within(self.client, settings.answer_seconds)

    # -- naming ----------------------------------------------------------------------------

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        if self.settings.endpoint:
            where += f" at {redact_url(self.settings.endpoint, path=True)}"
        return where

    def _key(self, name: str) -> str:
        return self.prefix + validate_name(name)

    # -- error mapping ----------------------------------------------------------------------

    def _error(self, exc: Exception, what: str) -> StorageError:
        where = self.location
        cut, _RESPONSE.cut = _RESPONSE.cut, ""
        waited = self.settings.answer_seconds
        if waited is not None and cut == "headers":
            return TargetUnreachable(
                f"no answer from {where} in {waited:g} s ({what}: its response did not come whole); check "
                f"{self.field}.endpoint, the network and that the service is up ({SLOW_LINK})"
            )
        if cut:
            return TransientStorageError(_cut_message(cut, where, what))
        if waited is not None and isinstance(exc, bex.ConnectTimeoutError | bex.ReadTimeoutError):
            return TargetUnreachable(
                f"no answer from {where} in {waited:g} s ({what}); check {self.field}.endpoint, the network and that "
                f"the service is up ({SLOW_LINK})"
            )
        if isinstance(exc, bex.ConnectTimeoutError | bex.EndpointConnectionError):
            return TargetUnreachable(
                f"cannot connect to {where} while {what}; check {self.field}.endpoint and that the service is up"
            )
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
            return TargetAuthError(
                f"no credentials for {self.field}; set {self.field}.accessKeyId and secretAccessKey, "
                "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or an AWS profile"
            )
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
                return ObjectNotFound(f"object {what} is missing from {where}")
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in ("PreconditionFailed", "412") or status == 412:
                return ObjectExists(f"object {what} already exists in {where}")
            if code in _AUTH_CODES or status == 403:
                return TargetAuthError(
                    f"{where} refused the credentials while {what} ({code or status}); check "
                    f"{self.field}.accessKeyId/secretAccessKey, the environment or the AWS profile, "
                    "and the bucket's permissions"
                )
            if code == "InvalidRequest" and self.settings.object_lock_mode is not None:
                return StorageError(
                    f"{where} refused an object with Object Lock retention while {what} (InvalidRequest): the bucket "
                    f"{self.bucket} has no Object Lock; enable it on the bucket, or remove {self.field}.objectLock"
                )
            if 300 <= status < 400 or code in ("PermanentRedirect", "TemporaryRedirect", "301", "307"):
                # Phoenix never follows a redirect: it could send the request, signed, elsewhere.
                return StorageError(
                    f"{where} redirected the request ({code or status}) while {what}; the bucket is in another "
                    f"region or the endpoint is not its own: fix {self.field}.region or {self.field}.endpoint"
                )
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientStorageError(f"{where} answered {code or status} while {what}")
            return StorageError(f"{where} answered {code or status} while {what}")
        if isinstance(exc, bex.BotoCoreError | ConnectionError | TimeoutError):
            # Read timeouts, dropped connections, truncated bodies: worth another attempt.
            return TransientStorageError(
                f"the connection to {where} failed while {what} ({type(exc).__name__}); check that "
                f"{self.field}.endpoint is an S3 service that answers, and the network, then run again"
            )
        return StorageError(f"{type(exc).__name__} while {what} at {where}")

    def _no_bucket(self) -> StorageError:
        return StorageError(
            f"the bucket {self.bucket} does not exist at {self.location}; create it or fix {self.field}.bucket"
        )

    def _do(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (bex.BotoCoreError, bex.ClientError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, what) from None

    @staticmethod
    def _code(exc: bex.ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    # -- repository presence ----------------------------------------------------------------

    def exists(self) -> bool:
        return self._head("config") is not None

    def repository_near(self, looks: int = 20) -> tuple[str, list[str]] | None:
        """Where a repository is when this prefix holds none: ("above", [PREFIX]) when a prefix
        this one is inside holds its `config` (`s3://BUCKET/argent/snapshots`), ("below",
        PREFIXES) for each prefix right below that holds one (`s3://BUCKET` for
        `s3://BUCKET/argent`; a bucket may hold several machines' repositories); None when
        neither (at most `looks` prefixes looked at, a failure to look counts as none)."""
        parts = self.prefix.rstrip("/").split("/") if self.prefix else []
        try:
            for i in range(len(parts) - 1, -1, -1):
                above = "".join(f"{part}/" for part in parts[:i])
                if self._head_key(f"{above}config"):
                    return "above", [above]
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/", MaxKeys=looks)
            below = [str(c.get("Prefix", "")) for c in page.get("CommonPrefixes", [])[:looks]]
            found = [p for p in below if p and self._head_key(f"{p}config")]
        except (bex.BotoCoreError, bex.ClientError, ConnectionError, TimeoutError):
            return None
        return ("below", sorted(found)) if found else None

    def _head_key(self, key: str) -> bool:
        """Whether the bucket holds `key` (any prefix): a 404 is no, other errors are raised."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except bex.ClientError as exc:
            mapped = self._error(exc, name)
            if isinstance(mapped, ObjectNotFound):
                return None
            raise mapped from None
        except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, name) from None
        return dict(head)

    def create(self, slots: Mapping[str, bytes] | None = None) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bex.ClientError as exc:
            # HEAD answers carry no body, so a missing bucket is a bare 404 here.
            if isinstance(self._error(exc, "bucket"), ObjectNotFound):
                raise self._no_bucket() from None
            raise self._error(exc, "checking the bucket") from None
        except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, "checking the bucket") from None
        if self.exists():
            raise RepositoryExists(f"a repository already exists at {self.location}; it was left untouched")
        found = [info.name for info in self._list_raw(self.prefix, limit=100)]
        if not found:
            return
        if all(name.startswith("keys/") for name in found) and len(found) < 100:
            # An init killed before it wrote `config`: its key slots wrap secrets nobody used.
            for name in found:
                if not is_slot_of(slots, name, self.read):  # else a racing copy of the same repository wrote it
                    self.delete(name)
            return
        raise RepositoryExists(
            f"{self.location} is not empty and holds no Phoenix repository; choose an empty prefix "
            f"({self.field}.prefix) or another bucket"
        )

    # -- reading ----------------------------------------------------------------------------

    def read(self, name: str) -> bytes:
        key = self._key(name)

        def get() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            body = resp["Body"]
            try:
                refuse_oversized(name, int(resp.get("ContentLength") or 0), self.location)
                # A reply may have no Content-Length (chunked): never read past the limit. The
                # last, empty read is where botocore checks a Content-Length it was given.
                limit = max_object_size(name)
                data = self._read_body(body, name, limit + 1)
                refuse_oversized(name, len(data), self.location)
                return data
            finally:
                body.close()

        return self._read_thawing(name, get)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        key = self._key(name)

        def get() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")
            body = resp["Body"]
            try:
                return self._read_body(body, name, length + 1)
            finally:
                body.close()

        data = self._read_thawing(name, get)
        if len(data) != length:
            raise ObjectNotFound(f"object {name} in {self.location} is shorter than the index says")
        return data

    def _read_body(self, body: Any, name: str, most: int) -> bytes:
        """At most `most` bytes of `body`, read BODY_CHUNK at a time: a body that brings less than
        one chunk in BODY_STALL_SECONDS (a service dripping a byte now and then, each inside the
        read timeout, which would be read for ever) is cut there, a transient error. The chunks
        go into one buffer whose bytes are handed back without a copy (a list joined at the end
        held the object twice)."""
        out = io.BytesIO()
        got = 0
        raw = getattr(body, "_raw_stream", None)
        guard = _StallGuard(_shutdown_of(raw), BODY_STALL_SECONDS)
        # A response of ours bounds every read of its body itself (`_BoundReader`, the same limit);
        # only one botocore made without our classes (`_bound_response_headers`) is bounded here.
        bound = isinstance(getattr(raw, "_fp", None), _BoundResponse)
        with contextlib.nullcontext(guard) if bound else guard:
            while got < most:
                try:
                    chunk = body.read(min(BODY_CHUNK, most - got))
                except (bex.BotoCoreError, ConnectionError, TimeoutError, OSError, ValueError):
                    if guard.cut:
                        break
                    raise
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                guard.progress += 1
        if guard.cut:
            raise TransientStorageError(_cut_message("body", self.location, name))
        return out.getvalue()

    def _read_thawing(self, name: str, get: Callable[[], bytes]) -> bytes:
        try:
            return get()
        except bex.ClientError as exc:
            if self._code(exc) != "InvalidObjectState":
                raise self._error(exc, name) from None
        except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, name) from None
        self._thaw([name])
        return self._do(name, get)

    # -- cold storage -----------------------------------------------------------------------

    def prepare_read(self, names: Iterable[str]) -> None:
        wanted = set(names)
        if not wanted:
            return
        # One listing tells the storage class of every pack (a lifecycle rule may have moved
        # packs even when the config says STANDARD); only cold ones cost a HEAD and a restore.
        folders = {n.split("/", 1)[0] + "/" for n in wanted}
        candidates = [
            info.name
            for folder in sorted(folders)
            for info in self.list(folder)
            if info.name in wanted and info.storage_class in COLD_CLASSES
        ]
        cold = [n for n in candidates if not _restored(self._head(n) or {})]
        if cold:
            self._thaw(cold)

    def _thaw(self, names: list[str]) -> None:
        """Request a restore of each object, then wait for all of them up to the thaw timeout."""
        if self._thaw_deadline is None:
            self._thaw_deadline = time.monotonic() + self.settings.thaw_timeout
        for name in names:
            try:
                self.client.restore_object(
                    Bucket=self.bucket,
                    Key=self._key(name),
                    RestoreRequest={"Days": THAW_DAYS, "GlacierJobParameters": {"Tier": "Standard"}},
                )
            except bex.ClientError as exc:
                if self._code(exc) == "RestoreAlreadyInProgress":
                    continue
                mapped = self._error(exc, f"requesting a restore of {name}")
                if not isinstance(mapped, ObjectNotFound):  # a missing object is the reader's error
                    raise mapped from None
            except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
                raise self._error(exc, f"requesting a restore of {name}") from None
        if not self._thaw_announced:
            self._thaw_announced = True
            self.notice(
                f"{len(names)} object(s) in {self.location} are in a cold storage class; requested a restore "
                f"(thaw) and waiting up to {self.settings.thaw_timeout:.0f} s (--thaw-timeout)"
            )
        pending = list(names)
        delay = 1.0
        while True:
            pending = [n for n in pending if not _restored(self._head(n) or {"Restore": 'ongoing-request="false"'})]
            if not pending:
                return
            remaining = self._thaw_deadline - time.monotonic()
            if remaining <= 0:
                raise ThawPending(
                    f"{len(pending)} object(s) in {self.location} are still being restored from cold storage "
                    f"(first: {pending[0]}); run the command again once S3 has thawed them (hours for GLACIER, "
                    "up to 48 h for DEEP_ARCHIVE), or give a longer --thaw-timeout"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 60.0)

    # -- writing ----------------------------------------------------------------------------

    def _class_args(self, cold: bool) -> dict[str, str]:
        cls = self.settings.storage_class
        return {"StorageClass": cls} if cold and cls and cls != "STANDARD" else {}

    def _lock_args(self, name: str) -> dict[str, Any]:
        """The Object Lock retention of a new object: every object but the locks, which must go
        when their process ends."""
        mode = self.settings.object_lock_mode
        if mode is None or name.startswith("locks/"):
            return {}
        until = datetime.now(UTC) + timedelta(days=self.settings.object_lock_days)
        return {"ObjectLockMode": mode.upper(), "ObjectLockRetainUntilDate": until}

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        key = self._key(name)
        if exclusive and not self._conditional and self._head(name) is not None:
            raise ObjectExists(f"object {name} already exists in {self.location}")
        conditional = {"IfNoneMatch": "*"} if exclusive and self._conditional else {}
        extra: dict[str, Any] = {**self._class_args(cold), **self._lock_args(name)}
        try:
            if len(data) > self.settings.multipart_threshold:
                self._multipart(key, name, data, extra, conditional)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra, **conditional)  # type: ignore[arg-type]
        except bex.ClientError as exc:
            if conditional and self._code(exc) in ("NotImplemented", "501"):
                self._conditional = False
                self.notice(
                    f"{self.location} does not support conditional writes (If-None-Match); exclusive "
                    "creation falls back to check-then-write, which is not atomic"
                )
                return self.write(name, data, exclusive=exclusive, cold=cold)
            raise self._error(exc, name) from None
        except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, name) from None

    def _multipart(self, key: str, name: str, data: bytes, extra: dict[str, Any], conditional: dict[str, str]) -> None:
        """Parts in order, then complete; on any failure the upload is aborted, so no half object
        and no billed leftover parts remain (a killed process's uploads are aborted later by
        `abort_abandoned_uploads`)."""
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        try:
            parts = []
            view = memoryview(data)
            size = self.settings.part_size
            for number, start in enumerate(range(0, len(data), size), start=1):
                resp = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(view[start : start + size]),
                )
                parts.append({"ETag": resp["ETag"], "PartNumber": number})
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                **conditional,  # type: ignore[arg-type]
            )
        except BaseException:
            cut = _RESPONSE.cut  # the abort's request clears it: the error raised is the part's
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (bex.BotoCoreError, bex.ClientError, ConnectionError, TimeoutError):
                self.notice(f"could not abort the multipart upload of {name}; a later run cleans it up")
            finally:
                _RESPONSE.cut = cut
            raise

    def abort_abandoned_uploads(self, *, everything: bool) -> int:
        cutoff = time.time() - ABANDONED_AFTER
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for up in page.get("Uploads", []):
                    started = up.get("Initiated")
                    old = started is not None and started.timestamp() < cutoff
                    if everything or old:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        aborted += 1
        except (bex.BotoCoreError, bex.ClientError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, "cleaning up abandoned multipart uploads") from None
        return aborted

    # -- protection -------------------------------------------------------------------------

    def conditional_writes(self) -> bool | None:
        """Whether the service refuses to create a name twice (`If-None-Match: *`); None when
        there is no `config` to probe with. The probe writes the `config` again, with its own bytes
        and the header: a service that honours it refuses (nothing changes), one that ignores it
        stores the same bytes again (on a versioned bucket, one more version of them), one that
        does not implement it says so (and the fallback is noted)."""
        try:
            data = self.read("config")
        except ObjectNotFound:
            return None
        try:
            self.write("config", data, exclusive=True)
        except ObjectExists:
            return self._conditional  # refused by the service, or found by the fallback's HEAD
        return False  # the header was ignored

    def protection(self) -> Protection:
        """Whether the bucket has Object Lock, and whether Phoenix sets retention on its objects
        (and, when the service does not honour conditional writes, that creating is not atomic)."""
        found = self._lock_protection()
        if self.conditional_writes() is not False:
            return found
        note = (
            "; the service does not honour conditional writes (If-None-Match), so Phoenix checks, then writes, "
            "when it creates an object, which is not atomic"
        )
        if found.enforced:
            note += " (a retained version outlives any later write)"
        return Protection(found.enforced, found.message + note, found.fix)

    def _lock_protection(self) -> Protection:
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
            lock = dict(answer.get("ObjectLockConfiguration") or {})
        except bex.ClientError as exc:
            if self._code(exc) != "ObjectLockConfigurationNotFoundError":
                raise self._error(exc, "reading the bucket's Object Lock configuration") from None
            lock = {}
        except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, "reading the bucket's Object Lock configuration") from None
        mode = self.settings.object_lock_mode
        if lock.get("ObjectLockEnabled") != "Enabled":
            return Protection(
                False,
                f"the bucket {self.bucket} has no Object Lock: these credentials can delete every object",
                "create a bucket with Object Lock enabled (or enable it on this one), then set "
                f'{self.field}.objectLock to {{"mode": "governance", "days": 30}}',
            )
        if mode is None:
            if lock.get("Rule"):
                return Protection(True, f"Object Lock on: the bucket {self.bucket} retains every object by default")
            return Protection(
                False,
                f"the bucket {self.bucket} has Object Lock, but Phoenix sets no retention on its objects",
                f'set {self.field}.objectLock to {{"mode": "governance", "days": 30}} (or "compliance")',
            )
        return Protection(
            True,
            f"Object Lock on: every object but the locks is retained {self.settings.object_lock_days} days in "
            f"{mode} mode",
        )

    # -- the rest ---------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._do(name, lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def stat(self, name: str) -> ObjectInfo | None:
        head = self._head(name)
        if head is None:
            return None
        modified = head.get("LastModified")
        return ObjectInfo(
            name,
            int(head["ContentLength"]),
            storage_class=str(head.get("StorageClass") or "STANDARD"),
            modified=modified.timestamp() if isinstance(modified, datetime) else None,
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in self._list_raw(self.prefix + prefix):
            if is_valid_name(info.name):  # foreign objects below the prefix are none of ours
                yield info

    def _list_raw(self, key_prefix: str, limit: int | None = None) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        count = 0
        last = ""  # the greatest key listed so far: every page must start after it
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
                contents = page.get("Contents", [])
                if contents and last and contents[0]["Key"] <= last:
                    # S3 lists in key order and each page continues after the last: a page that
                    # goes back (the same keys under a fresh token) would make the listing endless.
                    raise StorageError(
                        f"{self.location} listed {contents[0]['Key']} again after {last} while listing "
                        f"{key_prefix or 'the bucket'}: its listing does not advance (not a conforming S3 "
                        f"service); check {self.field}.endpoint"
                    )
                for obj in contents:
                    key = obj["Key"]
                    last = max(last, key)
                    modified = obj.get("LastModified")
                    yield ObjectInfo(
                        key[len(self.prefix) :],
                        int(obj.get("Size", 0)),
                        storage_class=str(obj.get("StorageClass") or "STANDARD"),
                        modified=modified.timestamp() if isinstance(modified, datetime) else None,
                    )
                    count += 1
                    if limit is not None and count >= limit:
                        return
        except (bex.BotoCoreError, bex.ClientError, ConnectionError, TimeoutError) as exc:
            raise self._error(exc, f"listing {key_prefix or 'the bucket'}") from None

    def close(self) -> None:
        self.client.close()


def _shutdown_of(raw: Any) -> Callable[[], None]:
    """What ends a read blocked in `raw` (a urllib3 response) from the watcher: a shutdown of its
    connection's socket while the response holds it, never a close (a close waits for the read
    blocked in it, and would hold up the one watcher thread, every later cut with it)."""

    def stop() -> None:
        sock = getattr(getattr(raw, "_connection", None), "sock", None)  # None once back in the pool
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)

    return stop


class _StallGuard:
    """Calls `stop` (a socket's shutdown, which ends a read or a send blocked in it) from the
    process's one watcher thread when `progress` has moved by less than `least` in `seconds`
    (the first window `first` long, if given); with no progress counted, that long after the
    start. `cut` says whether it did. Arming and disarming is a lock and a heap push, no thread of
    its own; leaving the block waits for a stop that is running, and no stop starts after it: a
    stop never reaches a connection that was handed on to the next request."""

    def __init__(
        self, stop: Callable[[], object] | None, seconds: float, least: int = 1, first: float | None = None
    ) -> None:
        self._stop = stop
        self._seconds = seconds
        self._first = seconds if first is None else first  # the first window's length
        self._least = least
        self._seen = 0
        self._armed = False
        self._stopping = False
        self._watcher = _WATCHER
        self.progress = 0
        self.cut = False

    def __enter__(self) -> _StallGuard:
        self._watcher = _WATCHER
        self._watcher.arm(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._watcher.disarm(self)


class _Watcher:
    """The one thread per process that cuts stalled guards: it sleeps until the earliest deadline
    of the armed guards, then cuts a guard whose progress fell short or sets its next deadline.
    A disarmed guard's entry is dropped when it comes up (or when such entries outnumber the
    armed ones), so disarming costs no heap search."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _StallGuard]] = []
        self._order = itertools.count()
        self._armed = 0
        self._until = 0.0  # the deadline the thread sleeps to (0: it is awake)
        self._thread: threading.Thread | None = None

    def arm(self, guard: _StallGuard) -> None:
        deadline = time.monotonic() + guard._first
        with self._cond:
            guard._armed = True
            self._armed += 1
            heapq.heappush(self._heap, (deadline, next(self._order), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="phx-s3-stall-watcher", daemon=True)
                self._thread.start()
            elif self._until and deadline < self._until:
                self._cond.notify()

    def disarm(self, guard: _StallGuard) -> None:
        with self._cond:
            while guard._stopping:  # the stop is running: the connection is not handed on before it ends
                self._cond.wait()
            if guard._armed:
                guard._armed = False
                self._armed -= 1
            if len(self._heap) > 64 and len(self._heap) > 4 * self._armed:
                self._heap = [entry for entry in self._heap if entry[2]._armed]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0][2]._armed:
                    heapq.heappop(self._heap)
                now = time.monotonic()
                if not self._heap or self._heap[0][0] > now:
                    self._until = self._heap[0][0] if self._heap else float("inf")
                    self._cond.wait(self._until - now if self._heap else None)
                    self._until = 0.0
                    continue
                _, _, guard = heapq.heappop(self._heap)
                if guard.progress - guard._seen >= guard._least:
                    guard._seen = guard.progress
                    heapq.heappush(self._heap, (now + guard._seconds, next(self._order), guard))
                    continue
                guard.cut = True
                guard._armed = False
                self._armed -= 1
                guard._stopping = True
                self._cond.release()
                try:
                    if guard._stop is not None:
                        with contextlib.suppress(Exception):
                            guard._stop()
                finally:
                    self._cond.acquire()
                    guard._stopping = False
                    self._cond.notify_all()


_WATCHER = _Watcher()


def _new_watcher() -> None:
    """A forked child has none of its parent's threads: it starts its own watcher when needed."""
    global _WATCHER
    _WATCHER = _Watcher()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_watcher)


class _ResponseCut(threading.local):
    """What this thread's last request was cut for, if it was (`_cut_message` names that cause):
    "headers", "upload" (its body's sending) or "body" (its response's body)."""

    cut = ""


def _cut_message(cut: str, where: str, what: str) -> str:
    """The one sentence of a request cut by a stall guard: the cause, where, and the fix."""
    if cut == "headers":
        return (
            f"{where} sent no complete response headers in {RESPONSE_SECONDS:g} s while {what} (the request was "
            "cut there); check the network or the service"
        )
    if cut == "upload":
        return (
            f"{where} took less than {BODY_CHUNK // 1024} KiB of the request's body in {BODY_STALL_SECONDS:g} s "
            f"while {what} (the request was cut there); check the network or the service"
        )
    return (
        f"{where} sent less than {BODY_CHUNK // 1024} KiB of the response's body in {BODY_STALL_SECONDS:g} s "
        f"while {what} (the read was cut there); check the network or the service"
    )


_RESPONSE = _ResponseCut()


class _HeadersBound:
    """The status line and headers of a response read within RESPONSE_SECONDS of the request
    having been sent: the final response's (`getresponse`) and, for a request that asked
    `Expect: 100-continue` (botocore asks it for large PUTs), the interim one's, read before the
    body is sent (its sending has the body's bound, `send`, not this one: a slow link may take
    long). The connection is this request's alone while it sends and reads them, and leaving a
    guard waits for its cut, so the cut can reach no other request."""

    sock: socket.socket | None
    response_class: Any
    _phx_response_seconds: float | None = None  # a diagnosis's: its deadline (`_answering_within`)
    _phx_guard: _StallGuard | None = None
    _phx_send_guard: _StallGuard | None = None

    def request(self, *args: Any, **kwargs: Any) -> None:
        """The request sent with at least BODY_CHUNK bytes taken by the peer in every
        BODY_STALL_SECONDS (the socket's timeout bounds each send, not the whole: a peer taking an
        upload's body a byte now and then would be sent to for ever); cut there otherwise."""
        _RESPONSE.cut = ""  # a new request: the last one's cut is said (or not) already
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._phx_sent()

    def _phx_arm(self) -> None:
        self._phx_guard = _StallGuard(self._phx_stop, self._phx_response_seconds or RESPONSE_SECONDS).__enter__()

    def _phx_disarm(self) -> None:
        guard, self._phx_guard = self._phx_guard, None
        if guard is not None:
            guard.__exit__()
            if guard.cut:
                _RESPONSE.cut = "headers"

    def _phx_stop(self) -> None:
        sock = self.sock  # read when the guard fires: the socket the read waits on
        if sock is not None:
            with contextlib.suppress(OSError):  # closed already: the read it would end is over
                sock.shutdown(socket.SHUT_RDWR)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        self._phx_sent()  # sent by now, whatever path sent it (a proxy's CONNECT, say)
        self._phx_arm()
        try:
            response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._phx_disarm()
        if _RESPONSE.cut == "headers":
            # Cut after the status line: http.client takes the end of the stream for the end of the
            # headers and hands on a response that lacks some (a HEAD that found the object, a GET
            # of an empty one). It is the cut's error instead.
            response.close()
            raise http.client.RemoteDisconnected("the response's headers were cut")
        return response

    def _handle_expect_response(self, message_body: Any) -> None:
        self._phx_sent()
        self._phx_arm()
        try:
            super()._handle_expect_response(message_body)  # type: ignore[misc]
        finally:
            self._phx_disarm()
        # A final answer instead of `100 Continue`: botocore reads it with its own response class
        # (the status line given), whose body would not be bounded; it is read with ours.
        status = getattr(self.response_class, "keywords", {}).get("status_tuple")
        if status is not None:
            self.response_class = functools.partial(_BoundResponse, status_tuple=status)

    def _send_message_body(self, message_body: Any) -> None:
        self._phx_disarm()  # the 100 Continue is in: the body's sending has its own bound (`send`)
        super()._send_message_body(message_body)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        """A piece of the request (its headers, its body or a block of it) counted as the progress
        of the request's sending (`_phx_send_guard`)."""
        guard = self._phx_send_guard
        if guard is None:
            guard = self._phx_send_guard = _StallGuard(self._phx_stop, BODY_STALL_SECONDS, least=BODY_CHUNK).__enter__()
        if hasattr(data, "read"):
            super().send(_CountedReader(data, guard))  # type: ignore[misc]
        elif isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data).cast("B")
            for start in range(0, len(view), SEND_BLOCK):
                part = view[start : start + SEND_BLOCK]
                super().send(part)  # type: ignore[misc]
                guard.progress += len(part)
        else:
            super().send(data)  # type: ignore[misc]

    def _phx_sent(self) -> None:
        """The request's sending is over (or waits on a `100 Continue`, whose wait has its own bound)."""
        guard, self._phx_send_guard = self._phx_send_guard, None
        if guard is not None:
            guard.__exit__()
            if guard.cut:
                _RESPONSE.cut = "upload"


class _CountedReader:
    """A request body's file whose reads count as the progress of `guard` (http.client reads a
    block, then sends it whole before it reads the next)."""

    def __init__(self, inner: Any, guard: _StallGuard) -> None:
        self._inner = inner
        self._guard = guard

    def read(self, size: int = -1) -> Any:
        block = self._inner.read(size)
        self._guard.progress += len(block)
        return block

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _BoundReader:
    """A response's socket file whose every read brings at least BODY_CHUNK bytes in
    BODY_STALL_SECONDS, or is cut (the socket shut down, the read failed): a body botocore reads
    itself (a listing, an error) is bounded as an object's is."""

    def __init__(self, inner: Any, sock: socket.socket) -> None:
        self._inner = inner
        self._sock = sock
        self._moved = 0  # bytes read since the window began
        self._waited = 0.0  # seconds spent inside reads since then (never the caller's own between them)

    def _stop(self) -> None:
        with contextlib.suppress(OSError):  # closed already: the read it would end is over
            self._sock.shutdown(socket.SHUT_RDWR)

    def _bounded(self, step: Callable[[int], int], size: int | None, once: bool = False) -> None:
        """`step(n)` (a read of at most n bytes, giving how many it got) BODY_CHUNK at a time up to
        `size` (None: to the end), or `once`; each step counts as progress. The window is the
        body's, not the call's: the time spent inside this response's reads since its last
        BODY_CHUNK bytes came, so a body read in many small reads (a chunked one's size lines and
        chunks of a byte) is cut as one read in one call is; the caller's own time between reads
        (a slow consumer) is never counted."""
        start = time.monotonic()
        first = max(0.0, BODY_STALL_SECONDS - self._waited)
        with _StallGuard(self._stop, BODY_STALL_SECONDS, first=first) as guard:
            try:
                left, got = size, 0
                while left is None or left > 0:
                    want = BODY_CHUNK if left is None else min(left, BODY_CHUNK)
                    got = step(want)
                    guard.progress += 1
                    self._moved += got
                    if self._moved >= BODY_CHUNK:
                        self._moved, self._waited, start = 0, 0.0, time.monotonic()
                    if left is not None:
                        left -= got
                    if once or got < want:
                        break
                self._waited += time.monotonic() - start
                if not guard.cut and self._waited >= BODY_STALL_SECONDS and (got or self._moved):
                    guard.cut = True  # small reads, each quick, too few bytes in all: this request's own cut
                    self._stop()
            except OSError:
                if not guard.cut:
                    raise
                # Cut: the read may end in the peer's reset (its writes after the shutdown drew one)
                # rather than an end of stream; it is the cut all the same (below).
            finally:
                if guard.cut:
                    _RESPONSE.cut = "body"
        if guard.cut:  # the shutdown may end the read as if the body had ended
            # botocore's own error, no OSError: urllib3 passes it on as it is (an OSError it would
            # wrap in its own, which escapes botocore where botocore reads a body itself); every
            # caller maps it, and `_error` names the cut.
            raise bex.ConnectionClosedError(endpoint_url="the S3 service (the read was cut)")

    def _collect(self, read: Callable[[int], bytes], size: int | None, once: bool = False) -> bytes:
        parts: list[bytes] = []

        def step(want: int) -> int:
            parts.append(read(want))
            return len(parts[-1])

        self._bounded(step, size, once)
        return b"".join(parts)

    def read(self, size: int | None = -1) -> bytes:
        return self._collect(self._inner.read, None if size is None or size < 0 else size)

    def read1(self, size: int = -1) -> bytes:
        return self._collect(self._inner.read1, BODY_CHUNK if size < 0 else size, once=True)

    def readline(self, size: int | None = -1) -> bytes:
        return self._collect(lambda _want: self._inner.readline(size), 1, once=True)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0

        def step(want: int) -> int:
            nonlocal done
            got = int(self._inner.readinto(view[done : done + want]) or 0)
            done += got
            return got

        self._bounded(step, len(view))
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _BoundResponse(AWSHTTPResponse):
    """A response whose body is read through `_BoundReader` once its headers are in (they have
    their own bound, RESPONSE_SECONDS as a whole)."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("status_tuple", None)  # botocore's own status line, read from the socket
        super().__init__(sock, *args, **kwargs)
        self._phx_sock = sock

    def begin(self) -> None:
        super().begin()
        if self.fp is not None:
            self.fp = _BoundReader(self.fp, self._phx_sock)  # type: ignore[assignment]


class _BoundHTTPConnection(_HeadersBound, AWSHTTPConnection):  # type: ignore[misc]  # botocore-stubs
    response_class = _BoundResponse


class _BoundHTTPSConnection(_HeadersBound, AWSHTTPSConnection):  # type: ignore[misc]  # botocore-stubs
    response_class = _BoundResponse


class _BoundHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = _BoundHTTPConnection


class _BoundHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = _BoundHTTPSConnection


@functools.cache
def _answering_within(seconds: float) -> dict[str, type]:
    """The pool classes of a diagnosis's client (`S3Settings.answer_seconds`): a response's status
    line and headers in within `seconds` of its request, not RESPONSE_SECONDS: a service that
    drips them a byte at a time, each inside the read timeout, is said not to answer then."""
    http = type("_AnsweringHTTPConnection", (_BoundHTTPConnection,), {"_phx_response_seconds": seconds})
    https = type("_AnsweringHTTPSConnection", (_BoundHTTPSConnection,), {"_phx_response_seconds": seconds})
    return {
        "http": type("_AnsweringHTTPConnectionPool", (_BoundHTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("_AnsweringHTTPSConnectionPool", (_BoundHTTPSConnectionPool,), {"ConnectionCls": https}),
    }


def _bound_response_headers(client: Any) -> None:
    """Have every request of `client` read its response headers within RESPONSE_SECONDS. botocore
    has no such bound (its read_timeout is the socket's, per read) and no public way to choose
    the connection class: its HTTP session's pool classes, which it creates connections from
    lazily, are replaced by ones whose connections bound `getresponse`, the sending (`send`) and
    every read of a response's body (`_BoundResponse`). A botocore whose session
    has no such table (a later release) keeps its own behaviour: every read still has its timeout
    and every body its stall limit, only a response's headers are not bounded as a whole — a
    backup tool that stopped working for every S3 user at a botocore upgrade would lose far more
    (docs/targets.md says so; the header tests of `tests/integration/test_hostile_network.py` fail
    first, and `::test_a_botocore_without_the_pool_table_still_makes_an_s3_backend` keeps the fallback)."""
    pools = getattr(getattr(getattr(client, "_endpoint", None), "http_session", None), "_pool_classes_by_scheme", None)
    if isinstance(pools, dict) and set(pools) == {"http", "https"}:
        pools.update({"http": _BoundHTTPConnectionPool, "https": _BoundHTTPSConnectionPool})


def _answer_within(client: Any, seconds: float) -> None:
    """A diagnosis's `client` (bound by `_bound_response_headers`): each response's headers in
    within `seconds` of its request (`_answering_within`)."""
    pools = getattr(getattr(getattr(client, "_endpoint", None), "http_session", None), "_pool_classes_by_scheme", None)
    if isinstance(pools, dict) and pools.get("http") is _BoundHTTPConnectionPool:
        pools.update(_answering_within(seconds))


def _restored(head: dict[str, Any]) -> bool:
    """Whether a HEAD answer says a cold object's thawed copy is readable."""
    restore = str(head.get("Restore") or "")
    return 'ongoing-request="false"' in restore


def r2_endpoint(account_id: str) -> str:
    return f"https://{account_id}.r2.cloudflarestorage.com"
