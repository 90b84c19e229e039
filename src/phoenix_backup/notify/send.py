"""Sending through Apprise, one URL at a time so a failure names which one (by its index, and the
URL as `redact_url` shows it: for many services even the host part is a token)."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.notify.message import BackupEvent, compose, secrets_of
from phoenix_backup.redaction import redact_url

# The longest a message may take to send, to all its URLs at once, in seconds. Apprise's timeouts
# (4 s to connect, 4 s per read) are each read's, not the message's: a webhook that accepts the connection and answers a
# byte every few seconds, or a `?rto=` in the URL, held the run forever, and under systemd
# (Type=oneshot, no start timeout) a run that never ends keeps its timer from starting the next
# night's one. Past it the URL is a problem like an unreachable one and the run goes on.
SEND_TIMEOUT = 60.0


@dataclass
class NotifyOutcome:
    sent: int = 0
    skipped: str | None = None  # why nothing was sent (disabled, silent, no URL)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"sent": self.sent, "skipped": self.skipped, "problems": self.problems}


def send(urls: Sequence[str], title: str, body: str, *, failure: bool) -> NotifyOutcome:
    """Send to every URL; never raises. Problems say which URL (scheme and host) and why."""
    outcome = NotifyOutcome()
    try:
        import apprise
    except ImportError:
        outcome.problems.append("the apprise package is not installed; pip install apprise")
        return outcome
    # Apprise logs its failures (sometimes with URL details) through `logging`; Phoenix reports
    # them itself, in one line without secrets, so its logger is silenced while sending.
    logger = logging.getLogger("apprise")
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    abandoned = False  # a send still going on in its thread: Apprise's logger stays silenced
    try:
        kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.SUCCESS
        # Every URL's send starts at once and all share one limit: one after the other, each with its
        # own, five webhooks that hang held the run five times SEND_TIMEOUT.
        deadline = time.monotonic() + SEND_TIMEOUT
        going: list[tuple[int, str, _Sending]] = []
        said: dict[int, str] = {}  # each URL's problem, said in the URLs' order
        for index, url in enumerate(urls):
            where = f"notifications.urls[{index}] ({redact_url(url)})"
            ap = apprise.Apprise(asset=_in_this_thread(apprise))
            try:
                if not ap.add(url):
                    said[index] = f"{where} is not a URL Apprise understands; fix it"
                    continue
                # Plain text, said as such: Apprise escapes it for a service that renders Markdown
                # or HTML (Telegram, Discord, Slack, e-mail), so a file name's `![x](https://...)` or
                # `<img>` in an error line is shown as written, never fetched nor made a link.
                sending = functools.partial(
                    ap.notify, title=title, body=body, notify_type=kind, body_format=apprise.NotifyFormat.TEXT
                )
                going.append((index, where, _Sending(sending)))
            except Exception as exc:  # a notifier bug must never fail the backup
                said[index] = f"{where} failed: {type(exc).__name__}"
        for index, where, started in going:
            try:
                answer = started.result(deadline)
                if answer is None:
                    abandoned = True
                    said[index] = f"{where} did not answer within {SEND_TIMEOUT:g} s; the message was dropped"
                elif answer:
                    outcome.sent += 1
                else:
                    said[index] = f"{where} could not be reached or refused the message"
            except Exception as exc:  # a notifier bug must never fail the backup
                said[index] = f"{where} failed: {type(exc).__name__}"
        outcome.problems = [said[index] for index in sorted(said)]
    finally:
        if not abandoned:
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
    return outcome


def _in_this_thread(apprise: Any) -> Any:
    """An asset that has Apprise send in the thread that calls it: by default (2.x) it sends
    through its own pool, whose threads are not daemons, and Python's exit waits for them. A
    webhook that never finished answering, given up after SEND_TIMEOUT, then held the process
    at its very end, and the scheduled run never ended all the same. `service_timeout` (2.3 and
    later) is off: SEND_TIMEOUT is the limit, and a limit of Apprise's own runs the send in its
    pool."""
    # An Apprise without `service_timeout` (before 2.3) has no pool for one service either.
    for settings in ({"async_mode": False, "service_timeout": 0}, {"async_mode": False}):
        with contextlib.suppress(Exception):
            return apprise.AppriseAsset(**settings)
    return None


class _Sending:
    """`call()` going on in a daemon thread, which never holds the process's exit: the run goes on
    without it when it has not returned by the deadline."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._done = threading.Event()
        self._answer: list[bool] = []
        self._failure: list[BaseException] = []
        self._call = call
        threading.Thread(target=self._run, name="phx-notify", daemon=True).start()

    def _run(self) -> None:
        try:
            self._answer.append(bool(self._call()))
        except Exception as exc:
            self._failure.append(exc)
        finally:
            self._done.set()

    def result(self, deadline: float) -> bool | None:
        """`call()`'s truth, or None when it has not returned by `deadline` (time.monotonic)."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            return None
        if self._failure:
            raise self._failure[0]
        return self._answer[0]


def notify_event(
    cfg: Config,
    env: dict[str, str] | None,
    event: BackupEvent,
    *,
    sender: Callable[..., NotifyOutcome] = send,
    extra_secrets: Iterable[str] = (),
) -> NotifyOutcome:
    """Send `event` if the config asks for it (onSuccess / onFailure)."""
    n = cfg.notifications
    if not n.enabled:
        return NotifyOutcome(skipped="notifications are disabled")
    if event.ok and n.on_success != "notify":
        return NotifyOutcome(skipped="onSuccess is silent")
    if not event.ok and n.on_failure != "alert":
        return NotifyOutcome(skipped="onFailure is silent")
    if not n.urls:
        return NotifyOutcome(
            skipped="no URL", problems=["notifications.enabled is true but notifications.urls is empty; add a URL"]
        )
    title, body = compose(event, [*secrets_of(cfg, env or {}), *extra_secrets])
    result: NotifyOutcome = sender(n.urls, title, body, failure=not event.ok)
    return result
