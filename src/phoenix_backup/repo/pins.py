"""The client's pins: each repository's id and master-key fingerprint as this user first saw them.

Anyone who can write a repository's storage can replace its key slots and objects with ones of
their own; an age or GPG slot can even be made to open with the owner's own identity. What they
cannot do is make their secrets have the owner's fingerprint. So the first time a user opens a
repository, the fingerprint is recorded here (trust on first use, as SSH's `known_hosts`), and a
later change is a hard error (`KeyChanged`) until the user says, with `phx key trust`, that they
checked it.

    <data dir>/pins.json   {"version": 1, "repositories": {id: {fingerprint, next, format,
                           before, writeOnly, pinned, locations: [...], retired: [...]}}}

It lives in the data dir, not the cache: losing it silently would turn every repository back into
a first use. It is per user, mode 0600, rewritten atomically (temp file, fsync, rename, fsync of
the folder) under an flock, so two `phx` processes never lose each other's pins.

- `locations` are where the repository was opened (target locations): a different repository
  id showing up at a pinned location is an error too, so replacing the whole repository (new id,
  new secrets) does not turn into a new first use.
- `next` is the fingerprint a `phx key rotate` is moving to: accepted beside `fingerprint` until
  the rotation finishes, so a rotation killed at any point leaves a repository this machine opens.
- `format` is the highest repository format seen authenticated: a lower one is a config put back
  from before (format 2 back to 1 loses its authentication, 3 back to 2 its write-only section)
  and is refused.
- `before` ({format, config}): when a `phx watch` raised `format` to 5 (`mark_captures`), the
  format the repository had just before (2, 3 or 4) and a digest of its config's fields
  (`RepoConfig.fields_digest`): a config of exactly that format, signed by the pinned key, with
  those fields, is a replica the watch never reached, used with a notice. A pin from before this
  field has none: only a format 4 config is taken so then.
- `writeOnly`: the repository was seen write-only. A format 4 repository stays format 4 when made
  write-only, so its format alone cannot tell its config from before the conversion.
- `retired` are the fingerprints this user moved away from: a repository that shows one again
  missed a rotation (a replica that was down) or was put back by someone; the error says so and
  never suggests trusting it.
- `snapshots` (per location): `seen`, the newest snapshots this machine wrote or listed there
  ([id, time], at most `SEEN_KEPT`), and `lost`, those a later listing no longer found while the
  newest snapshot there was older than the newest seen: an older copy of the repository put
  back, or a `phx forget` elsewhere. `lost` stays until the snapshots come back or the user
  accepts the repository as it is (`phx key trust`); `phx forget` and `phx prune` refuse until
  then. `forgot` are the ids this machine forgot itself (never counted as lost).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phoenix_backup.dirs import data_dir, make_dirs, trustworthy, write_private
from phoenix_backup.errors import ConfigError, KeyChanged, NoSpace
from phoenix_backup.repo.snapshot import FUTURE_SLACK

PINS_FILE = "pins.json"
PINS_VERSION = 1
SEEN_KEPT = 16  # the newest snapshots remembered per location
FORGOT_KEPT = 64  # the ids this machine forgot last

Seen = tuple[str, str]  # (snapshot id, its recorded time, RFC 3339)


@dataclass
class Pin:
    repo_id: str
    fingerprint: str
    next: str | None = None  # the fingerprint an unfinished `phx key rotate` moves to
    format: int = 1
    # (format, fields digest) of the config just before a watch made it format 5, when this machine did.
    before: tuple[int, str] | None = None
    write_only: bool = False  # seen write-only (a format 3 config, or a format 4 one with `writeOnly`)
    pinned: str = ""  # RFC 3339, when this user first trusted the repository (or last re-trusted it)
    locations: list[str] = field(default_factory=list)
    # Fingerprints this user moved away from (`phx key rotate`, `phx key trust`): a repository
    # that shows one again is a copy that missed the rotation, or an old copy put back.
    retired: list[str] = field(default_factory=list)
    seen: dict[str, list[Seen]] = field(default_factory=dict)  # per location, newest first
    lost: dict[str, list[Seen]] = field(default_factory=dict)  # per location, awaiting acceptance
    forgot: list[str] = field(default_factory=list)

    def accepts(self, fingerprint: str) -> bool:
        return fingerprint in (self.fingerprint, self.next)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "format": self.format,
            "pinned": self.pinned,
            "locations": sorted(set(self.locations)),
        }
        if self.before is not None:
            doc["before"] = {"format": self.before[0], "config": self.before[1]}
        if self.write_only:
            doc["writeOnly"] = True
        if self.next is not None:
            doc["next"] = self.next
        if self.retired:
            doc["retired"] = self.retired
        where = {
            loc: {"seen": [list(e) for e in self.seen.get(loc, [])], "lost": [list(e) for e in self.lost.get(loc, [])]}
            for loc in sorted(set(self.seen) | set(self.lost))
        }
        if where:
            doc["snapshots"] = where
        if self.forgot:
            doc["forgot"] = self.forgot
        return doc


class Pins:
    """The pin file of one user. Every change is one locked read-modify-write of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Why the snapshots seen could not be recorded (a full or read-only data dir), if so.
        self.unwritable: str | None = None

    @classmethod
    def for_env(cls, env: Mapping[str, str]) -> Pins:
        return cls(data_dir(env) / PINS_FILE)

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> dict[str, Pin]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(
                f"cannot read the pin file {self.path} ({exc.strerror}); fix its permissions (it must "
                "belong to you, mode 0600)"
            ) from None
        # Whoever can write the pin file decides which keys are trusted (as with ssh's StrictModes).
        if not trustworthy(st):
            raise ConfigError(
                f"the pin file {self.path} belongs to another user or others can write it, so it cannot be "
                f"trusted; check its content, then make it yours with mode 0600 (chown, chmod 600)"
            )
        try:
            doc = json.loads(raw)
            if doc.get("version") != PINS_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            pins: dict[str, Pin] = {}
            for repo_id, entry in doc["repositories"].items():
                pins[str(repo_id)] = Pin(
                    repo_id=str(repo_id),
                    fingerprint=str(entry["fingerprint"]),
                    next=str(entry["next"]) if entry.get("next") else None,
                    format=int(entry.get("format", 1)),
                    before=_before(entry.get("before")),
                    write_only=entry.get("writeOnly") is True,
                    pinned=str(entry.get("pinned", "")),
                    locations=[str(x) for x in entry.get("locations", [])],
                    retired=[str(x) for x in entry.get("retired", [])],
                    seen={str(k): _entries(v.get("seen", [])) for k, v in entry.get("snapshots", {}).items()},
                    lost={str(k): _entries(v.get("lost", [])) for k, v in entry.get("snapshots", {}).items()},
                    forgot=[str(x) for x in entry.get("forgot", [])],
                )
            return pins
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise ConfigError(
                f"the pin file {self.path} is damaged ({exc}); repair it from a backup of your home, or "
                "move it away (then every repository is trusted again on first use, so check its key "
                "fingerprint with `phx key list`)"
            ) from None

    def get(self, repo_id: str) -> Pin | None:
        return self._load().get(repo_id)

    def id_at(self, location: str) -> str | None:
        """The repository pinned at `location`, if any."""
        for pin in self._load().values():
            if location in pin.locations:
                return pin.repo_id
        return None

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, required: bool = True) -> Iterator[dict[str, Pin]]:
        """The pins to change, written back after. Not `required` (what a listing saw): a data
        dir that cannot be written (full, read-only) still gives the pins to compare with, and
        the reason nothing is recorded goes to `unwritable`, so a listing or restore still runs."""
        folder = self.path.parent
        lock = folder / ".pins.lock"
        try:
            failed = f"the pin file's folder {folder}"
            make_dirs(folder)
            failed = f"the pin file's lock {lock}"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if required:
                raise self._unwritable(exc, failed) from None
            self.unwritable = str(self._unwritable(exc, failed))
            yield self._load()  # nothing can be written: no writer to lock out
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            pins = self._load()
            before = self._document(pins)
            yield pins
            if self._document(pins) == before and self.path.exists():
                return  # nothing changed: no write, no fsync
            try:
                self._write(pins)
            except OSError as exc:
                failed = f"the pin file {self.path}"
                if required:
                    raise self._unwritable(exc, failed) from None
                self.unwritable = str(self._unwritable(exc, failed))
        finally:
            os.close(fd)  # closing releases the flock

    def _unwritable(self, exc: OSError, failed: str) -> ConfigError | NoSpace:
        """`failed`: the file that could not be written (the pin file, its lock or their folder)."""
        # Without its pin file Phoenix cannot tell a replaced repository from the owner's: an
        # error, never a silent first use on every run.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk, not a folder to fix (exit 1)
            return NoSpace(
                f"cannot write {failed}: {exc.strerror}; free space on the disk of {self.path.parent} "
                "(`df -h`), or set PHX_DATA_DIR to a folder on another disk, and run again"
            )
        return ConfigError(
            f"cannot write {failed} ({exc.strerror or exc}); make {self.path.parent} a folder "
            "you can write, or set PHX_DATA_DIR to one"
        )

    @staticmethod
    def _document(pins: dict[str, Pin]) -> bytes:
        doc = {"version": PINS_VERSION, "repositories": {k: pins[k].to_json() for k in sorted(pins)}}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def _write(self, pins: dict[str, Pin]) -> None:
        write_private(self.path, self._document(pins))

    def record(
        self,
        repo_id: str,
        location: str,
        fingerprint: str,
        *,
        format: int,
        before: tuple[int, str] | None = None,
        write_only: bool = False,
        next: str | None = None,
        keep_next: bool = False,
        retrust: bool = False,
        first: bool = False,
    ) -> Pin:
        """Pin `repo_id` at `location` to `fingerprint`. `location` moves to this repository (a
        location holds one repository). `next` sets the fingerprint a rotation moves to; with
        `keep_next` the one recorded stays. `retrust` marks an explicit `phx key trust`. `first`:
        a first use, refused if another process pinned another key in the meantime. `format` and
        `write_only` are what the config was seen as; neither is ever lowered. `before`: the
        format and fields digest of the config a watch raised to `format`, kept only when this
        raises the pin's format (a later one never replaces it)."""
        with self._locked() as pins:
            pin = pins.get(repo_id)
            if first and pin is not None:
                if pin.accepts(fingerprint):  # the same key, pinned by another process meanwhile
                    return pin
                raise KeyChanged(
                    f"repository {repo_id[:8]} at {location} has key {fingerprint} here, but another phx process "
                    f"pinned key {pin.fingerprint} for it at the same time: someone who can write the storage may "
                    "have replaced it in between; check the key fingerprint on a machine you trust (`phx key list`) "
                    "and run `phx key trust FINGERPRINT`"
                )
            for other in pins.values():
                if other.repo_id != repo_id and location in other.locations:
                    other.locations.remove(location)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            if pin is None:
                pin = pins[repo_id] = Pin(repo_id, fingerprint, pinned=now)
            elif retrust or pin.fingerprint != fingerprint:
                pin.pinned = now
            previous_next = pin.next
            if pin.fingerprint != fingerprint and pin.fingerprint not in pin.retired:
                pin.retired.append(pin.fingerprint)
            if fingerprint in pin.retired:  # trusted again, explicitly
                pin.retired.remove(fingerprint)
            pin.fingerprint = fingerprint
            pin.next = previous_next if keep_next else next
            if before is not None and format > pin.format:
                pin.before = before
            pin.format = max(pin.format, format)
            pin.write_only = pin.write_only or write_only
            if location not in pin.locations:
                pin.locations.append(location)
            if retrust:  # the user accepts the repository as it is now, snapshots included
                pin.seen, pin.lost, pin.forgot = {}, {}, []
            return pin

    # -- the snapshots this machine saw ----------------------------------------------------

    def observe(
        self, repo_id: str, location: str, present: Mapping[str, str | None], still_there: Callable[[str], bool]
    ) -> list[Seen]:
        """A listing of the snapshots at `location` (id: recorded time, None when not known):
        remember the newest, and return those lost there (this machine saw them, did not forget
        them, and the newest snapshot now is older than the newest it saw) that are still gone.
        `still_there(id)` looks again at one the listing lacks: a backup of this machine may have
        written and remembered it after the listing was taken. A repository this user has not
        pinned is not followed."""
        with self._locked(required=False) as pins:
            pin = pins.get(repo_id)
            if pin is None:
                return []
            seen = pin.seen.get(location, [])
            known = dict(seen) | dict(pin.lost.get(location, []))
            times = {sid: t or known.get(sid) for sid, t in present.items()}
            # A snapshot dated ahead of this clock (another machine's clock is wrong) is neither
            # the newest seen nor lost: forgetting it is what the retention notice asks for, and
            # written before a rollback point, it would hide every newer backup the rollback took.
            ahead = datetime.now(UTC) + FUTURE_SLACK
            missing = [e for e in seen if e[0] not in present and e[0] not in pin.forgot and _when(e[1]) <= ahead]
            for sid, t in [e for e in missing if still_there(e[0])]:
                missing.remove((sid, t))
                times[sid] = t
            newest_now = max((w for t in times.values() if t and (w := _when(t)) <= ahead), default=None)
            newest_seen = max((w for _i, t in seen if (w := _when(t)) <= ahead), default=None)
            rolled_back = bool(missing) and newest_seen is not None and (newest_now is None or newest_now < newest_seen)
            lost = [e for e in pin.lost.get(location, []) if e[0] not in times]
            if rolled_back:
                lost += [e for e in missing if e not in lost]
            # Otherwise the missing ones were forgotten elsewhere (the newest is still there).
            _put(pin.lost, location, _newest(lost))
            _put(pin.seen, location, _newest([(sid, t) for sid, t in times.items() if t]))
            return pin.lost.get(location, [])

    def remember(self, repo_id: str, location: str, sid: str, time: str) -> None:
        """This machine wrote snapshot `sid` at `location` (recorded when the data dir can be written)."""
        with self._locked(required=False) as pins:
            pin = pins.get(repo_id)
            if pin is not None:
                _put(pin.seen, location, _newest([*pin.seen.get(location, []), (sid, time)]))

    def started(self, repo_id: str, location: str) -> None:
        """`phx init` made `location` a new, empty copy of the repository (a lost first target
        continued from its replicas): the snapshots this machine saw there are not expected there
        any more, and their absence is no rollback."""
        with self._locked() as pins:
            pin = pins.get(repo_id)
            if pin is not None:
                for where in (pin.seen, pin.lost):
                    where.pop(location, None)

    def forgetting(self, repo_id: str, ids: list[str]) -> None:
        """This machine is about to forget `ids`: their absence is never a loss. They leave what
        it saw at every location too (the newest it saw is then older), so their absence is no loss
        even once `forgot` has let them go (a forget of more than `FORGOT_KEPT`, one at a time)."""
        with self._locked() as pins:
            pin = pins.get(repo_id)
            if pin is not None:
                pin.forgot = [*[i for i in pin.forgot if i not in ids], *ids][-FORGOT_KEPT:]
                for where in (pin.seen, pin.lost):
                    for location in list(where):
                        _put(where, location, [e for e in where[location] if e[0] not in ids])


def _when(time: str) -> datetime:
    when = datetime.fromisoformat(time)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _newest(entries: list[Seen]) -> list[Seen]:
    unique = dict(entries)
    return sorted(unique.items(), key=lambda e: (_when(e[1]), e[0]), reverse=True)[:SEEN_KEPT]


def _put(where: dict[str, list[Seen]], location: str, entries: list[Seen]) -> None:
    if entries:
        where[location] = entries
    else:
        where.pop(location, None)


def _before(raw: object) -> tuple[int, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("`before` is not an object")
    return int(raw["format"]), str(raw["config"])


def _entries(raw: object) -> list[Seen]:
    if not isinstance(raw, list):
        raise ValueError("a snapshot list is not a list")
    out = [(str(sid), str(t)) for sid, t in raw]
    for _sid, t in out:
        _when(t)  # a time that does not parse is damage
    return out
