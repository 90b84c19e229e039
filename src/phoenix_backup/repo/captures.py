"""Capture segments: what `phx watch` seals every second, and how a point in time is rebuilt.

A segment (`captures/<sha256>`, docs/repository-format.md §15) holds, per database, the commit
states `phx watch` saw since its previous segment: when each was seen, the database's size, and
the bytes of every page that changed. Segments of one watch run form a chain (`chain`, a random id;
`sequence`, from 0; `previous`, the id of the segment before). A database's history in a chain
starts from a base: an ordinary snapshot (scope `watch`) whose copy of the database the first
commit's pages apply to. From then on each commit's pages apply to the state before it.

A part also says since when its claims hold (`since`) and until when the watch saw nothing else
(`until`): the state at a time T is the last commit seen at or before T, as long as T lies in a
covered range (see `Timeline`). A watch that was stopped leaves a gap until it runs again, even
when it can prove that no state was missed (only that none was missed, not when they happened).

Everything is in one sealed object (like a snapshot): no pack, no index, so a segment is one
object per second at most, which prune never touches (it reads no segment), and which is
authenticated as a whole when it is opened.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from phoenix_backup.errors import CorruptObject, ObjectNotFound, PhoenixError, ToolMissing, UnsafePath
from phoenix_backup.repo.cache import entry_key, entry_mac, write_entry
from phoenix_backup.repo.crypto import same_bytes, sha256_hex, zstandard_module
from phoenix_backup.repo.repository import CAPTURE_AAD as CAPTURE_AAD  # the seal of a segment
from phoenix_backup.repo.repository import CAPTURES_PREFIX, Repository
from phoenix_backup.repo.tree import check_name

MAGIC = b"PHXC"
VERSION = 1
MERGED_VERSION = 2  # a segment thinning merged from several (it names `through` and `link`)
_HEAD = struct.Struct("<4sBI")
# A segment's plaintext is at most this large: a watch seals far smaller ones (one second of
# changes), and a reader never inflates a hostile one beyond it.
MAX_SEGMENT_SIZE = 1 << 30
MAX_HEADER_SIZE = 64 << 20
PREFIX = CAPTURES_PREFIX
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Base:
    snapshot: str  # the snapshot (scope `watch`) that holds the database's state before the first commit
    sha256: str  # of that copy (the tree node's sha256)

    def to_json(self) -> dict[str, str]:
        return {"snapshot": self.snapshot, "sha256": self.sha256}


@dataclass(frozen=True)
class Commit:
    at: int  # microseconds since the epoch: when the watch saw this state
    page_count: int
    pages: tuple[int, ...]  # ascending page numbers (from 1) whose bytes follow in the segment's data
    offset: int = 0  # where this commit's first page starts in the segment's data

    def to_json(self) -> dict[str, object]:
        return {"at": self.at, "pageCount": self.page_count, "pages": list(self.pages)}


@dataclass(frozen=True)
class Part:
    """One database's commits in one segment."""

    path: str  # logical path, as in snapshot trees
    page_size: int
    since: int  # µs: the state is known without interruption from then ...
    until: int  # µs: ... to then
    commits: tuple[Commit, ...] = ()
    base: Base | None = None  # the history of this database starts again here
    thinned: bool = False  # thinning dropped states seen from `since` to before the first commit

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {
            "path": self.path,
            "pageSize": self.page_size,
            "since": self.since,
            "until": self.until,
            "commits": [c.to_json() for c in self.commits],
        }
        if self.base is not None:
            d["base"] = self.base.to_json()
        if self.thinned:
            d["thinned"] = True
        return d


@dataclass
class Segment:
    chain: str
    sequence: int
    previous: str | None
    host: str
    parts: list[Part]
    data: bytes = b""
    id: str = ""
    stored_size: int = field(default=0, compare=False)
    # A merged segment stands for the segments `sequence` to `through`; the segment after them
    # names the last one's id (`link`) as its previous.
    through: int | None = None
    link: str | None = None
    # Held without its pages (the timeline keeps every segment's header only): `with_pages`.
    bare: bool = field(default=False, compare=False)

    @property
    def last_sequence(self) -> int:
        return self.sequence if self.through is None else self.through

    @property
    def link_id(self) -> str:
        """The id the next segment of the chain names as its previous."""
        return self.link or self.id

    def header(self) -> bytes:
        merged = self.through is not None
        doc: dict[str, object] = {
            "version": MERGED_VERSION if merged else VERSION,
            "chain": self.chain,
            "sequence": self.sequence,
            "previous": self.previous,
            "host": self.host,
            "databases": [p.to_json() for p in self.parts],
        }
        if merged:
            doc["through"], doc["link"] = self.through, self.link
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def page(self, part: Part, commit: Commit, i: int) -> bytes:
        if self.bare:
            raise ValueError(f"the pages of capture segment {self.id} were not loaded (captures.with_pages)")
        start = commit.offset + i * part.page_size
        return self.data[start : start + part.page_size]


def build(
    chain: str,
    sequence: int,
    previous: str | None,
    host: str,
    parts: Iterable[tuple[Part, list[bytes]]],
    *,
    through: int | None = None,
    link: str | None = None,
) -> Segment:
    """A segment of `parts`, each with the bytes of its commits' pages in order."""
    out: list[Part] = []
    data: list[bytes] = []
    offset = 0
    for part, pages in parts:
        commits = []
        it = iter(pages)
        for c in part.commits:
            commits.append(Commit(c.at, c.page_count, c.pages, offset))
            for _ in c.pages:
                page = next(it)
                if len(page) != part.page_size:
                    raise ValueError(f"a page of {part.path} has {len(page)} bytes, not {part.page_size}")
                data.append(page)
                offset += part.page_size
        out.append(Part(part.path, part.page_size, part.since, part.until, tuple(commits), part.base, part.thinned))
    return Segment(chain, sequence, previous, host, out, b"".join(data), through=through, link=link)


def seal(repo: Repository, segment: Segment) -> tuple[str, bytes]:
    """The segment's object name and stored bytes."""
    header = segment.header()
    version = VERSION if segment.through is None else MERGED_VERSION
    body = _HEAD.pack(MAGIC, version, len(header)) + header + segment.data
    zstandard = zstandard_module()
    raw = repo.sealer.seal(zstandard.ZstdCompressor(level=3).compress(body), CAPTURE_AAD)
    return PREFIX + sha256_hex(raw), raw


def open_segment(repo: Repository, name: str, raw: bytes) -> Segment:
    """The segment stored as `name` (CorruptObject when damaged, forged or malformed)."""
    sid = name.removeprefix(PREFIX)
    if sha256_hex(raw) != sid:
        raise CorruptObject(f"{name} does not match its name (damaged)")
    packed = repo.sealer.open(raw, CAPTURE_AAD, name)
    zstandard = zstandard_module()
    try:
        if zstandard.frame_content_size(packed) > MAX_SEGMENT_SIZE:
            raise CorruptObject(f"{name} claims to inflate beyond {MAX_SEGMENT_SIZE} bytes (damaged or hostile)")
        body = zstandard.ZstdDecompressor().decompress(packed, max_output_size=MAX_SEGMENT_SIZE)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"{name} does not decompress") from exc
    seg = decode(body, name)
    seg.id = sid
    seg.stored_size = len(raw)
    return seg


def decode(body: bytes, name: str) -> Segment:
    try:
        magic, version, hlen = _HEAD.unpack_from(body)
    except struct.error as exc:
        raise CorruptObject(f"{name} is too short to be a capture segment") from exc
    if magic != MAGIC or version not in (VERSION, MERGED_VERSION):
        raise CorruptObject(f"{name} has an unknown format (version {version}); a newer Phoenix wrote it")
    if hlen > MAX_HEADER_SIZE or _HEAD.size + hlen > len(body):
        raise CorruptObject(f"{name} claims a longer header than it holds")
    try:
        doc = json.loads(body[_HEAD.size : _HEAD.size + hlen])
        data = body[_HEAD.size + hlen :]
        if doc["version"] != version:
            raise ValueError(f"version {doc['version']!r} in a version {version} body")
        seg = _from_json(doc, data, name)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise CorruptObject(f"{name} is malformed ({exc})") from exc
    return seg


def _int(v: object, lo: int = 0, hi: int = 1 << 62) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{v!r} is not an integer from {lo} to {hi}")
    return v


# 9999-01-01 UTC in µs: a later time cannot be shown (a datetime ends with the year 9999), and a
# planted segment with one failed `restore --at` and `drill --at` as an internal error.
_LAST_US = 253_370_764_800_000_000


def _hex(v: object, n: int) -> str:
    if not isinstance(v, str) or len(v) != n or not set(v) <= _HEX:
        raise ValueError(f"{v!r} is not {n} hex digits")
    return v


def _logical_file(path: object) -> bool:
    """Whether `path` is a database's path as a snapshot tree holds one: a root and names below
    it, each one `check_name` accepts. Never absolute, `..`, `.`, empty or a root alone: a segment
    planted in an unencrypted repository naming `root` failed a restore in place as an internal
    error, and one naming an absolute path stopped every `restore --at`."""
    if not isinstance(path, str):
        return False
    names = path.split("/")
    try:
        for name in names:
            check_name(name)
    except UnsafePath:
        return False
    return len(names) >= 2


def _from_json(doc: dict[str, object], data: bytes, name: str, data_len: int | None = None) -> Segment:
    version = doc["version"]
    if version not in (VERSION, MERGED_VERSION):
        raise ValueError(f"version {version!r}")
    chain = _hex(doc["chain"], 32)
    sequence = _int(doc["sequence"])
    previous = None if doc["previous"] is None else _hex(doc["previous"], 64)
    if (previous is None) != (sequence == 0):
        raise ValueError("only the first segment of a chain has no previous one")
    through = link = None
    if version == MERGED_VERSION:
        through, link = _int(doc["through"], sequence), _hex(doc["link"], 64)
    host = doc["host"]
    if not isinstance(host, str):
        raise ValueError("host is not text")
    parts = []
    offset = 0
    raw_parts = doc["databases"]
    if not isinstance(raw_parts, list):
        raise ValueError("databases is not a list")
    seen: set[str] = set()
    for p in raw_parts:
        path = p["path"]
        if not _logical_file(path) or path in seen:
            raise ValueError(f"database path {path!r}")
        seen.add(path)
        page_size = _int(p["pageSize"], 512, 65536)
        if page_size & (page_size - 1):
            raise ValueError(f"page size {page_size}")
        since, until = _int(p["since"], 0, _LAST_US), _int(p["until"], 0, _LAST_US)
        if until < since:
            raise ValueError(f"{path}: until before since")
        commits = []
        last_at = since
        for c in p["commits"]:
            at = _int(c["at"])
            if not last_at <= at <= until:
                raise ValueError(f"{path}: commit times out of order")
            last_at = at
            count = _int(c["pageCount"], 0, 1 << 32)
            pages = tuple(_int(x, 1, count) for x in c["pages"])
            if any(a >= b for a, b in itertools.pairwise(pages)):
                raise ValueError(f"{path}: pages not in ascending order")
            commits.append(Commit(at, count, pages, offset))
            offset += len(pages) * page_size
        thinned = p.get("thinned", False)
        if type(thinned) is not bool or (thinned and version != MERGED_VERSION):
            raise ValueError(f"{path}: thinned {thinned!r}")
        base = None
        if "base" in p:
            b = p["base"]
            base = Base(_hex(b["snapshot"], 64), _hex(b["sha256"], 64))
            if not commits:
                raise ValueError(f"{path}: a base without a commit")
        parts.append(Part(path, page_size, since, until, tuple(commits), base, thinned))
    held = len(data) if data_len is None else data_len
    if offset != held:
        raise ValueError(f"its pages take {offset} bytes but it holds {held}")
    return Segment(chain, sequence, previous, host, parts, data, through=through, link=link)


def segment_names(repo: Repository) -> list[str]:
    return sorted(info.name for info in repo.backend.list(PREFIX))


def with_pages(repo: Repository, seg: Segment) -> Segment:
    """`seg` with its pages, read again (a segment's name is the SHA-256 of its bytes: the
    same segment, authenticated again). Its header must be the one `seg` holds: one from the
    header cache whose key is no secret (an unencrypted repository) could otherwise place
    another page's bytes at a page's offset."""
    if not seg.bare:
        return seg
    full = load(repo, PREFIX + seg.id)
    if full.header() != seg.header():
        raise CorruptObject(
            f"{PREFIX}{seg.id} does not hold the header the local cache holds for it (the cache folder was "
            "changed): delete the folder `captures` in the cache folder, then run the command again"
        )
    return full


def load(repo: Repository, name: str) -> Segment:
    try:
        raw = repo.backend.read(name)
    except ObjectNotFound:
        raise
    return open_segment(repo, name, raw)


# -- the header cache ---------------------------------------------------------------------
#
# A segment never changes (its name is the SHA-256 of its bytes), so the timeline keeps each
# segment's header in the local cache (`<cache>/<repository id>/captures/<sha256>`) and reads the
# segment itself only once. An entry is authenticated with a key derived from the repository's
# secret id key and the sealing key's fingerprint, and bound to the segment's name: someone who
# can write the cache but lacks the repository's key can delete or damage entries (the segment is
# then read again), never make a reader believe another header; after a key rotation the entries
# of the segments it re-sealed away no longer count. Unencrypted repositories have no secret to key it with (their
# segments can be forged in the store too), as with every other object of theirs.

_CACHE_MAGIC = b"PHXH1"
_CACHE_HEAD = struct.Struct("<5s32sQQ")  # magic, MAC, stored size, page bytes


def _cache_key(repo: Repository) -> bytes:
    """Keyed by the secret id key, and bound to the key the segments are sealed with (its
    fingerprint): a `phx key rotate` keeps the id key, and the headers of the segments it re-sealed
    away, cached before, must not stand for segments that no longer open."""
    return entry_key(repo.ids.page_key, repo.fingerprint, "capture header cache")


def cached_header(folder: Path, name: str, key: bytes) -> Segment | None:
    """The header of segment `name` from the cache (without pages), or None: no entry, or one that
    does not authenticate or parse (it is then read again from the store)."""
    sid = name.removeprefix(PREFIX)
    try:
        raw = (folder / sid).read_bytes()
        magic, mac, stored, data_len = _CACHE_HEAD.unpack_from(raw)
    except (OSError, struct.error):
        return None
    rest = raw[_CACHE_HEAD.size - 16 :]
    if magic != _CACHE_MAGIC or not same_bytes(mac, entry_mac(key, name, rest)):
        return None
    try:
        seg = _from_json(json.loads(raw[_CACHE_HEAD.size :]), b"", name, data_len)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    seg.id, seg.stored_size, seg.bare = sid, stored, True
    return seg


def cache_header(folder: Path, seg: Segment, key: bytes) -> None:
    """Keep `seg`'s header (opened from the store) in the cache; a cache that cannot be written
    only means the segment is read again next time."""
    name = PREFIX + seg.id
    rest = struct.pack("<QQ", seg.stored_size, len(seg.data)) + seg.header()
    entry = _CACHE_HEAD.pack(_CACHE_MAGIC, entry_mac(key, name, rest), 0, 0)[: _CACHE_HEAD.size - 16] + rest
    write_entry(folder, seg.id, entry)


def forget_cached(folder: Path | None, names: Iterable[str]) -> None:
    """Drop the cache entries of deleted segments."""
    if folder is None:
        return
    for name in names:
        with contextlib.suppress(OSError):
            (folder / name.removeprefix(PREFIX)).unlink()


# -- the timeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    path: str
    start: int  # µs
    end: int  # µs
    chain: str
    first: int  # the sequence whose part begins the range
    # None: every state the watch saw is kept. A tuple: a thinned range, where only the states
    # seen at these times are kept (a time in it gives the newest kept state at or before it).
    points: tuple[int, ...] | None = None

    def covers(self, at: int) -> bool:
        return self.start <= at <= self.end


@dataclass
class Timeline:
    """Covered ranges per database, from every readable segment."""

    segments: dict[str, Segment]  # by id
    chains: dict[str, list[Segment]]  # by chain id, in sequence order, up to the first missing link
    ranges: list[Range]
    problems: dict[str, str]  # segment name -> why it was not read
    broken: list[str]  # chains cut by a missing or unreadable segment
    unreadable: list[str] = field(default_factory=list)  # names of segments that did not open
    # Segments sealed with the other key of this machine's unfinished `phx key rotate`: its
    # leftovers (their copies under this key are read), not damage; its re-run removes them.
    rotation: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # ids a merged segment stands for (left by a crash)
    orphaned: list[str] = field(default_factory=list)  # chains none of whose base snapshots is left

    def gap(self, chain: str) -> int:
        """The place of the first segment missing (or unreadable) in the broken `chain`."""
        held = self.chains.get(chain, [])
        return held[-1].last_sequence + 1 if held else 0

    def after_gap(self, chain: str) -> list[Segment]:
        """The segments of the broken `chain` past its gap: no reader reaches them."""
        start = self.gap(chain)
        return [s for s in self.segments.values() if s.chain == chain and s.sequence >= start]

    def for_path(self, path: str) -> list[Range]:
        return [r for r in self.ranges if r.path == path]

    def paths(self) -> list[str]:
        return sorted({r.path for r in self.ranges})

    def at(self, path: str, when: int, chain: str | None = None) -> Range | None:
        """The range that gives `path` at `when` (of `chain` only, when given: two watches of one
        logical path, on two machines, may cover the same time)."""
        found = [r for r in self.for_path(path) if r.covers(when) and chain in (None, r.chain)]
        return max(found, key=lambda r: r.start) if found else None


# Consecutive parts of a database whose times touch within this much are one range (a watch's
# `since` is its previous segment's `until`: equal, but allow for a clock step).
TOUCH_US = 2_000_000


def timeline(repo: Repository, cache: Path | None = None) -> Timeline:
    """The covered ranges, from every segment's header: from the header cache in the folder
    `cache` (see `cached_header`) where it holds one, else read from the store (and kept there)."""
    present = {info.name.removeprefix("snapshots/") for info in repo.backend.list("snapshots/")}
    segments: dict[str, Segment] = {}
    problems: dict[str, str] = {}
    unreadable: list[str] = []
    rotation: list[str] = []
    key = _cache_key(repo) if cache is not None else b""
    for name in segment_names(repo):
        seg = cached_header(cache, name, key) if cache is not None else None
        if seg is not None:
            segments[seg.id] = seg
            continue
        try:
            seg = load(repo, name)
        except ToolMissing:
            raise  # zstandard cannot be loaded (its first use may be here): no segment is to blame
        except (PhoenixError, OSError) as exc:
            if repo.left_by_rotation(name):
                rotation.append(name)  # not damage, nor a state lost: the re-sealed copy holds it
            else:
                problems[name] = str(exc)
                unreadable.append(name)
            continue
        if cache is not None:
            cache_header(cache, seg, key)
        # Only the header is kept: a day of segments under a busy agent is gigabytes of pages.
        seg.data, seg.bare = b"", True
        segments[seg.id] = seg
    by_chain: dict[str, dict[int, list[Segment]]] = {}
    for seg in segments.values():
        by_chain.setdefault(seg.chain, {}).setdefault(seg.sequence, []).append(seg)
    chains: dict[str, list[Segment]] = {}
    broken: list[str] = []
    superseded: list[str] = []
    for chain, seqs in by_chain.items():
        ordered: list[Segment] = []
        expect: str | None = None
        n, top = 0, max(s.last_sequence for found in seqs.values() for s in found)
        while n <= top:
            # Of the segments linked here, the one that stands for the most: a merged segment
            # wins over the segments it was merged from (left behind by a thinning cut short),
            # also over the one segment it thinned alone (the same `through`).
            linked = [s for s in seqs.get(n, ()) if s.previous == expect]
            if not linked:
                broken.append(chain)
                break
            found = max(linked, key=lambda s: (s.last_sequence, s.through is not None, s.id))
            ordered.append(found)
            expect, n = found.link_id, found.last_sequence + 1
        on_path = {s.id for s in ordered}
        spans = [(s.sequence, s.last_sequence) for s in ordered]
        for others in seqs.values():
            for seg in others:
                if seg.id in on_path or seg.sequence >= n:
                    continue
                if any(a <= seg.sequence and seg.last_sequence <= b for a, b in spans):
                    superseded.append(seg.id)
                else:
                    problems[PREFIX + seg.id] = f"a second segment {seg.sequence} of chain {chain[:8]}"
        if ordered:
            chains[chain] = ordered
    ranges: list[Range] = []
    orphaned: list[str] = []
    for chain, ordered in chains.items():
        open_: dict[str, Range] = {}
        based: set[str] = set()
        bases = {p.base.snapshot for s in ordered for p in s.parts if p.base is not None}
        if bases and not bases & present:
            orphaned.append(chain)
        for seg in ordered:
            for part in seg.parts:
                cur = open_.get(part.path)
                # A compacted part (`compacted`) continues the history before it: the state
                # before its commit is the previous segment's, up to its commit.
                continues = cur is not None and compacted(seg, part) and part.since <= cur.end + TOUCH_US
                if part.base is not None:
                    if part.path in open_ and not continues:
                        ranges.append(open_.pop(part.path))
                    if part.base.snapshot not in present:
                        # Forgotten: nothing from this base on can be rebuilt.
                        based.discard(part.path)
                        problems[PREFIX + seg.id] = (
                            f"the base snapshot {part.base.snapshot[:8]} of {part.path} is gone (forgotten or pruned)"
                        )
                        continue
                    based.add(part.path)
                if part.path not in based:
                    continue  # a history without a base in this chain (never written so)
                points = tuple(c.at for c in part.commits) if part.thinned else None
                cur = open_.get(part.path)
                if (
                    cur is not None
                    and (part.base is None or continues)
                    and part.since <= cur.end + TOUCH_US
                    and (cur.points is None) == (points is None)
                ):
                    kept = None if cur.points is None or points is None else cur.points + points
                    open_[part.path] = Range(part.path, cur.start, max(cur.end, part.until), chain, cur.first, kept)
                    continue
                if cur is not None:
                    ranges.append(cur)
                start = part.commits[0].at if part.commits and part.base is not None and not continues else part.since
                open_[part.path] = Range(part.path, start, part.until, chain, seg.sequence, points)
        ranges.extend(open_.values())
    ranges.sort(key=lambda r: (r.path, r.start))
    return Timeline(
        segments,
        chains,
        ranges,
        problems,
        broken,
        unreadable,
        superseded=superseded,
        orphaned=orphaned,
        rotation=rotation,
    )


# -- thinning -----------------------------------------------------------------------------


def merge(run: list[Segment], loaded: Callable[[Segment], Segment] | None = None) -> Segment:
    """One segment standing for the consecutive segments `run` of one chain: per database, the
    newest state the run holds (the newest version of every page any of its commits wrote, cut
    to that state's size) as ONE commit at the time it was seen; the states before it are
    dropped, so the part is marked thinned. Parts without a commit merge into one that says the
    state did not change from the first one's `since` to the last one's `until`.

    `loaded` gives a segment with its pages (the timeline holds them without, see `timeline`):
    one segment's pages are held at a time, besides the newest version of each page."""
    first, last = run[0], run[-1]
    parts: dict[str, list[Part]] = {}
    newest: dict[str, dict[int, bytes]] = {}
    commits: dict[str, list[Commit]] = {}
    for seg in run:
        full = loaded(seg) if loaded is not None and any(p.commits for p in seg.parts) else seg
        for part in full.parts:
            parts.setdefault(part.path, []).append(part)
            pages = newest.setdefault(part.path, {})
            for c in part.commits:
                commits.setdefault(part.path, []).append(c)
                for i, page in enumerate(c.pages):
                    pages[page] = full.page(part, c, i)
    out: list[tuple[Part, list[bytes]]] = []
    for path, items in parts.items():
        head, tail = items[0], items[-1]
        seen = commits.get(path, [])
        thinned = len(seen) > 1 or any(p.thinned for p in items)
        if not seen:
            out.append((Part(path, head.page_size, head.since, tail.until, (), head.base, thinned), []))
            continue
        final = seen[-1]
        kept = sorted(page for page in newest[path] if page <= final.page_count)
        commit = Commit(final.at, final.page_count, tuple(kept))
        part = Part(path, head.page_size, head.since, tail.until, (commit,), head.base, thinned)
        out.append((part, [newest[path][page] for page in kept]))
    return build(
        first.chain, first.sequence, first.previous, first.host, out, through=last.last_sequence, link=last.link_id
    )


HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


def _period(seg: Segment, now: int, every: int, hourly: int, horizon: int | None) -> tuple[str, int] | None:
    """Which kept point a segment's states thin to: None (kept every one), its hour, its day
    (UTC), or one point for everything before `horizon`."""
    end = max((p.until for p in seg.parts), default=0)
    if end >= now - every:
        return None
    if horizon is not None and end < horizon:
        return ("before", 0)
    if end >= now - hourly:
        return ("hour", end // HOUR_US)
    return ("day", end // DAY_US)


def _joins(run: list[Segment], seg: Segment, *, bases: bool = False) -> bool:
    """Whether `seg` continues `run` for every database: no new base (unless `bases`: a
    compaction rebuilds each state from whatever base), no gap, the same page size."""
    for part in seg.parts:
        before = [p for s in run for p in s.parts if p.path == part.path]
        if before and (
            (part.base is not None and not bases)
            or part.since > before[-1].until + TOUCH_US
            or part.page_size != before[-1].page_size
        ):
            return False
    return True


def long_term(seg: Segment, now: int, every: int, hourly: int, horizon: int | None) -> bool:
    """Whether the state `seg`'s states thin to is kept a day at a time or less often (older than
    `hourly`, or before `horizon`): such a state is compacted into a snapshot (`compacted`)."""
    k = _period(seg, now, every, hourly, horizon)
    return k is not None and k[0] in ("day", "before")


def thinning(
    tl: Timeline, now: int, every: int, hourly: int, horizon: int | None, *, compact: bool = False
) -> list[list[Segment]]:
    """The runs of consecutive segments to merge, each into one (see `merge`): segments seen
    within `every` µs of `now` are kept as they are, older ones thin to one state an hour up to
    `hourly` µs, then one a day, and everything before `horizon` (when given) to one state. A
    run may be one segment, when it holds more than one state of a database.

    With `compact`, the runs of the daily periods and before `horizon` (`long_term`) may cross a
    base, and one whose kept state is not yet a snapshot's (`compacted`) is a run even when it
    drops no state: it becomes a compacted segment (ops/compact.py)."""
    runs: list[list[Segment]] = []
    for ordered in tl.chains.values():
        run: list[Segment] = []
        key: tuple[str, int] | None = None
        for seg in ordered:
            k = _period(seg, now, every, hourly, horizon)
            bases = compact and k is not None and k[0] in ("day", "before")
            if run and k is not None and k == key and _joins(run, seg, bases=bases):
                run.append(seg)
                continue
            if thins(run) or (compact and key is not None and key[0] in ("day", "before") and _uncompacted(run)):
                runs.append(run)
            run, key = ([seg] if k is not None else []), k
        if thins(run) or (compact and key is not None and key[0] in ("day", "before") and _uncompacted(run)):
            runs.append(run)
    return runs


def compacted(seg: Segment, part: Part) -> bool:
    """Whether `part` is compacted: a merged segment's part whose one state is its base snapshot's
    copy (a commit without pages). Its `since` may be before that commit: from `since` to the
    commit the state is the previous segment's (format §15)."""
    return seg.through is not None and part.base is not None and len(part.commits) == 1 and not part.commits[0].pages


def _uncompacted(run: list[Segment]) -> bool:
    """Whether a run's newest state of some database is not yet a snapshot's copy."""
    last: dict[str, tuple[Segment, Part]] = {}
    for seg in run:
        for part in seg.parts:
            if part.commits:
                last[part.path] = (seg, part)
    return any(not compacted(seg, part) for seg, part in last.values())


def thins(run: list[Segment]) -> bool:
    """Whether merging `run` drops a state: it has more than one segment, or its one segment
    holds more than one state of a database (alone in its hour or day: the watch sealed no other
    segment there, or the rest of the hour is still within `every`)."""
    return len(run) > 1 or any(len(p.commits) > 1 for s in run for p in s.parts)


def lineage(tl: Timeline, rng: Range, when: int) -> tuple[Base, list[tuple[Segment, Part]]]:
    """The base and the parts (oldest first) whose commits rebuild `rng.path` at `when`."""
    ordered = tl.chains[rng.chain]
    # A compacted part's state holds from its commit; before that, the previous segment's.
    upto = max(
        i
        for i, s in enumerate(ordered)
        if any(p.path == rng.path and p.since <= when and (p.base is None or p.commits[0].at <= when) for p in s.parts)
    )
    parts: list[tuple[Segment, Part]] = []
    for seg in reversed(ordered[: upto + 1]):
        part = next((p for p in seg.parts if p.path == rng.path), None)
        if part is None:
            continue
        parts.append((seg, part))
        if part.base is not None:
            parts.reverse()
            return part.base, parts
    raise CorruptObject(f"chain {rng.chain[:8]} holds no base for {rng.path}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return (_EPOCH + timedelta(microseconds=us)).astimezone()


def describe(us: int, *, up: bool = False, exact: bool = False) -> str:
    """A time for people: whole seconds (rounded up with `up`: a range's start, so that the second
    shown is covered), or to the microsecond with `exact` (JSON)."""
    if exact:
        return from_us(us).isoformat(timespec="microseconds")
    if up and us % 1_000_000:
        us += 1_000_000 - us % 1_000_000
    return from_us(us).isoformat(timespec="seconds")


def asked(us: int) -> str:
    """A time the user gave (`--at`), as precise as it was given: whole seconds, milliseconds or
    microseconds. Cut to whole seconds, 12:00:05.5 read as 12:00:05 beside a range shown as
    12:00:05.300 to 12:00:05.900, which holds it."""
    spec = "seconds" if not us % 1_000_000 else "milliseconds" if not us % 1_000 else "microseconds"
    return from_us(us).isoformat(timespec=spec)


def span(start: int, end: int) -> str:
    """A covered range for people: the whole seconds it covers, or to the millisecond when it
    covers less than one whole second."""
    first, last = describe(start, up=True), describe(end)
    if to_us(datetime.fromisoformat(first)) > end:
        first, last = (from_us(t).isoformat(timespec="milliseconds") for t in (start, end))
    return f"{first} to {last}"
