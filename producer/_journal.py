"""The on-disk journal: events not yet in Redis, in order, one file per producer.

The first line names where the events go; then a line per event, orjson, written with
one ``write()`` per spill (no user-space buffer, so a killed process loses nothing it has
written)::

    {"journal":1,"target":"redis://10.0.0.5:6379/0","prefix":"rpa"}
    {"s":"session:quote-123","p":"<producer id>","q":42,"w":0,"e":{...envelope...}}

``target`` is the connection's identity without credentials (``target_of``) and
``prefix`` the key prefix: a journal is adopted only by a producer writing to that same
target and prefix; others leave it alone (``rpa-bus status`` lists it). A journal without
the header line (written before it existed) is adopted by any producer, as it was then.

``s`` is the client-facing stream name (keys are derived again when the line is written,
so a journal made under a wrong bucket count is still delivered right), ``p`` and ``q``
the producer id and sequence number the event got when it was emitted (a replay after a
partial write is deduplicated by the append scripts), ``w`` the time window of a monitor
stream in ms (0: capped by length), ``e`` the envelope.

Durability against a machine crash: ``fsync`` per ``FSYNC_POLICIES`` (like Redis's
``appendfsync``): ``always`` after every append, ``everysec`` at most about a second after
one (the default; by the flusher, outside its lock), ``no`` never (the OS writes it back
when it likes). A killed process loses
nothing it has written under any policy.

The owner holds an exclusive ``flock`` on its file for as long as it lives. A producer
starting up adopts every journal for its target in the spool folder whose lock it can
take (its process died) and writes it before its own events. A torn last line (killed
mid-write) is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson

from rpa_bus import ConfigError, EnvReader, InvalidInput, Settings, parse_stream_name

log = logging.getLogger(__name__)

SUFFIX = ".journal"
_READ_CHUNK = 1 << 20
FSYNC_POLICIES: Final = ("always", "everysec", "no")
DEFAULT_FSYNC: Final = "everysec"


def check_fsync(policy: str) -> str:
    if policy not in FSYNC_POLICIES:
        raise ConfigError(
            f"journal fsync policy must be one of {', '.join(FSYNC_POLICIES)}, got {policy!r}"
        )
    return policy


def journal_fsync_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``RPA_BUS_JOURNAL_FSYNC`` (``always``, ``everysec``, ``no``), default ``everysec``."""
    return check_fsync(EnvReader(environ).text("JOURNAL_FSYNC", DEFAULT_FSYNC))


def target_of(settings: Settings) -> str:
    """The Redis a producer writes to, without credentials: the topology, its hosts
    (sorted) and the db (Sentinel: and the service). Two URLs naming one server the same
    way give the same string; ``localhost`` and ``127.0.0.1`` do not."""
    t = settings.target
    if t.topology == "single":
        u = urlsplit(t.url)
        scheme = u.scheme.lower()
        query = parse_qs(u.query)
        db = u.path.strip("/") if scheme != "unix" else ""
        db = db or query.get("db", ["0"])[0]
        if scheme == "unix":
            return f"unix://{u.path}?db={db}"
        return f"{scheme}://{(u.hostname or '').lower()}:{u.port or 6379}/{db}"
    hosts = ",".join(sorted(f"[{h}]:{p}" if ":" in h else f"{h.lower()}:{p}" for h, p in t.hosts))
    scheme = ("rediss+" if t.tls else "redis+") + t.topology
    if t.topology == "sentinel":
        return f"{scheme}://{hosts}/{t.service}/{t.db}"
    return f"{scheme}://{hosts}"


def _header(target: str, prefix: str) -> bytes:
    return orjson.dumps({"journal": 1, "target": target, "prefix": prefix}) + b"\n"


def _read_header(fd: int) -> tuple[dict[str, Any] | None, int]:
    """The header of an open journal and the offset after it; (None, 0) for a journal
    without one (written before headers existed)."""
    head = os.pread(fd, 4096, 0)
    nl = head.find(b"\n")
    if not head.startswith(b'{"journal":') or nl < 0:
        return None, 0
    try:
        header = orjson.loads(head[:nl])
    except orjson.JSONDecodeError:
        return None, 0
    return (header if isinstance(header, dict) else None), nl + 1


class Item:
    """One event on its way to Redis."""

    __slots__ = ("env", "event", "pid", "seq", "stream", "window_ms")

    def __init__(
        self,
        stream: str,
        pid: str,
        seq: int,
        env: bytes,
        event: dict[str, Any],
        window_ms: int = 0,
    ) -> None:
        self.stream = stream
        self.pid = pid
        self.seq = seq
        self.env = env
        self.event = event
        self.window_ms = window_ms

    def record(self) -> bytes:
        """The journal line; the envelope bytes are embedded as they are, not re-encoded."""
        return b'{"s":"%s","p":"%s","q":%d,"w":%d,"e":%s}\n' % (
            self.stream.encode(),
            self.pid.encode(),
            self.seq,
            self.window_ms,
            self.env,
        )

    @classmethod
    def from_record(cls, line: bytes, streams: set[str] | None = None) -> Item:
        """Parse a journal line; raise ``ValueError`` if it is not a complete record.
        ``streams``: names already validated (checked once each, not once per line)."""
        d = orjson.loads(line)
        if d.__class__ is not dict or d.get("e").__class__ is not dict:
            raise ValueError("not a journal record")
        stream = d["s"]
        if streams is None or stream not in streams:
            parse_stream_name(stream)
            if streams is not None and len(streams) < 10_000:
                streams.add(stream)
        # The envelope's bytes as emitted: "e" is the last field, and the ones before it
        # cannot contain its marker (validated names, numbers).
        env = line[line.index(b',"e":') + 5 : line.rindex(b"}")]
        return cls(stream, str(d["p"]), int(d["q"]), env, d["e"], int(d["w"]))


class Journal:
    """An open, locked journal file: appended by its owner, read back from ``read_pos``."""

    def __init__(
        self, path: Path, fd: int, *, adopted: bool, start: int, fsync: str = DEFAULT_FSYNC
    ) -> None:
        self.path = path
        self.fd = fd
        self.adopted = adopted
        self.start = start  # the offset after the header: the first record
        self.read_pos = start
        self.size = os.fstat(fd).st_size
        self.count = 0  # records appended by this process
        self.fsync = fsync
        self.syncs = 0  # fsync() calls made
        self._dirty = False
        self._synced_at = time.monotonic()
        self._streams: set[str] = set()  # stream names of records read, validated

    @classmethod
    def create(
        cls, spool_dir: Path, producer_id: str, target: str, prefix: str, fsync: str
    ) -> Journal:
        spool_dir.mkdir(parents=True, exist_ok=True)
        path = spool_dir / f"{os.getpid()}-{producer_id}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = _header(target, prefix)
            os.write(fd, header)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return cls(path, fd, adopted=False, start=len(header), fsync=fsync)

    @classmethod
    def try_adopt(cls, path: Path, target: str, prefix: str, fsync: str) -> Journal | None:
        """Open and lock a journal whose owner died and whose events go to ``target`` and
        ``prefix``; ``None`` if its owner is alive, it is gone, or it is for another
        target (then it is left as it is, for a producer writing there)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            _lock_orphan(fd)
            # The owner unlinks a drained journal before it lets go of the lock; if we
            # opened it just before that, the lock is ours but the file is gone: skip it.
            st = os.fstat(fd)
            if st.st_nlink == 0 or os.stat(path).st_ino != st.st_ino:
                raise FileNotFoundError(path)
            header, start = _read_header(fd)
        except OSError:
            os.close(fd)
            return None
        if header is not None and (header.get("target"), header.get("prefix")) != (
            target,
            prefix,
        ):
            os.close(fd)  # not ours: unlocked again, untouched
            return None
        return cls(path, fd, adopted=True, start=start, fsync=fsync)

    @property
    def pending(self) -> bool:
        return self.read_pos < self.size

    def append(self, items: list[Item]) -> None:
        if not items:
            return
        data = memoryview(b"".join(item.record() for item in items))
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            # A partial record (disk full) would glue onto the next one: cut it off. The
            # events stay in memory and are appended again later.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size = os.fstat(self.fd).st_size
        self.count += len(items)
        self._dirty = True
        if self.fsync == "always":
            try:
                self.sync()
            except OSError as exc:  # written, maybe not durable: no reason to write it again
                log.error("cannot fsync journal %s: %s", self.path, exc)

    def sync(self) -> None:
        """fsync() what was appended (policy ``no``: nothing)."""
        if self._dirty and self.fsync != "no":
            os.fsync(self.fd)
            self.syncs += 1
            self._dirty = False
            self._synced_at = time.monotonic()

    def sync_if_due(self) -> None:
        """``everysec``: fsync() if something was appended and the last one is a second
        old."""
        fd = self.due_fd()
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def due_fd(self) -> int | None:
        """``everysec``: if an fsync is due (something appended, the last one a second
        old), a duplicate of the file descriptor to fsync, counted as done; else None.
        The flusher fsyncs it after letting go of its lock, so a slow disk never holds up
        an emit() that spills."""
        due = time.monotonic() - self._synced_at >= 1.0
        if not (self._dirty and self.fsync == "everysec" and due):
            return None
        self.syncs += 1
        self._dirty = False
        self._synced_at = time.monotonic()
        return os.dup(self.fd)

    def read(self, max_items: int) -> tuple[list[Item], int]:
        """Up to ``max_items`` complete records from ``read_pos``, and the offset after them.

        A line without its newline at the end of the file is a torn write: left unread.
        A complete line that does not parse is logged and skipped.
        """
        items: list[Item] = []
        pos = self.read_pos
        chunk_size = _READ_CHUNK
        while len(items) < max_items and pos < self.size:
            chunk = os.pread(self.fd, min(chunk_size, self.size - pos), pos)
            if not chunk:
                break
            start = 0
            while len(items) < max_items:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    break
                line = chunk[start:nl]
                start = nl + 1
                try:
                    items.append(Item.from_record(line, self._streams))
                except (ValueError, KeyError, TypeError, InvalidInput) as exc:
                    log.error("skipping a damaged line in journal %s: %s", self.path, exc)
            if start == 0:
                if pos + len(chunk) >= self.size:
                    # No newline up to the end of the file: a torn last line.
                    log.warning("ignoring a torn last line in journal %s", self.path)
                    self.size = pos
                    break
                chunk_size *= 2  # a line longer than the chunk (a big event): read more
                continue
            pos += start
        return items, pos

    def release(self) -> None:
        """Let go of the journal for the next start: removed if fully delivered, else the
        delivered head is cut off (so it is not replayed) and the lock released."""
        if not self.pending:
            self.remove()
            return
        if self.read_pos > self.start:
            head = os.pread(self.fd, self.start, 0)  # the header, kept
            rest = os.pread(self.fd, self.size - self.read_pos, self.read_pos)
            tmp = self.path.with_name(self.path.name + ".tmp")  # not *.journal: not adopted
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(head + rest)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync != "no":
                os.fsync(fd)
            os.replace(tmp, self.path)  # the path now names the new, still locked, file
            os.close(self.fd)
            self.fd = fd
            self._dirty = False
        self.close()

    def remove(self) -> None:
        """Unlink, then unlock by closing: an adopter racing us sees the link count 0."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)

    def close(self) -> None:
        """Release the lock and keep the file, for the next start to deliver."""
        with contextlib.suppress(OSError):
            self.sync()
        os.close(self.fd)


def _lock_orphan(fd: int, wait_s: float = 0.5) -> None:
    """Take the exclusive lock of a journal whose owner died; ``OSError`` if its owner
    lives. A shared lock (a reader such as ``list_journals``, held for a moment) is waited
    out for up to ``wait_s``, so a producer starting then still adopts the journal."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # raises if the owner holds it
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # converts our shared lock
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def _by_age(spool_dir: Path) -> list[Path]:
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    return sorted(spool_dir.glob("*" + SUFFIX), key=mtime)


def adopt_all(spool_dir: Path, target: str, prefix: str, fsync: str) -> list[Journal]:
    """Lock every orphaned journal in ``spool_dir`` for ``target``/``prefix``, oldest
    first (journals for other targets are left as they are: ``list_journals`` shows
    them)."""
    adopted = []
    for path in _by_age(spool_dir):
        journal = Journal.try_adopt(path, target, prefix, fsync)
        if journal is not None:
            log.info("adopting journal %s (%d bytes) left by a dead process", path, journal.size)
            adopted.append(journal)
    return adopted


@dataclass(frozen=True, slots=True)
class JournalInfo:
    """A journal in a spool folder, as ``list_journals`` sees it."""

    path: Path
    target: str | None  # None: written before journals named their target
    prefix: str | None
    events: int  # complete records, delivered ones included until the owner cuts them
    live: bool  # its owner is running (it holds the lock)


def list_journals(spool_dir: Path | str) -> list[JournalInfo]:
    """Every journal in ``spool_dir``, oldest first, read without taking it over (its
    lock is probed with a shared lock let go at once; an adopter waits that out)."""
    folder = Path(spool_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in _by_age(folder):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            header, _start = _read_header(fd)
            try:  # its owner holds it exclusively while it lives
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)  # at once: an adopter waits for no reader
                live = False
            except OSError:
                live = True
            lines = 0
            pos = 0
            while chunk := os.pread(fd, _READ_CHUNK, pos):
                lines += chunk.count(b"\n")
                pos += len(chunk)
        finally:
            os.close(fd)
        found.append(
            JournalInfo(
                path=path,
                target=None if header is None else header.get("target"),
                prefix=None if header is None else header.get("prefix"),
                events=lines - (header is not None),
                live=live,
            )
        )
    return found
