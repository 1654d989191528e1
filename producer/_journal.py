"""The on-disk journal: events not yet in Redis, in order, one file per producer.

A line per event, orjson, written with one ``write()`` per spill (no user-space buffer,
so a killed process loses nothing it has written; no fsync, so a machine crash may)::

    {"s":"session:quote-123","p":"<producer id>","q":42,"w":0,"e":{...envelope...}}

``s`` is the client-facing stream name (keys are derived again when the line is written,
so a journal made under a wrong bucket count is still delivered right), ``p`` and ``q``
the producer id and sequence number the event got when it was emitted (a replay after a
partial write is deduplicated by the append script), ``w`` the time window of a monitor
stream in ms (0: capped by length), ``e`` the envelope.

The owner holds an exclusive ``flock`` on its file for as long as it lives. A producer
starting up adopts every journal in the spool folder whose lock it can take (its process
died) and writes it before its own events. A torn last line (killed mid-write) is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from rpa_bus import InvalidInput, parse_stream_name

log = logging.getLogger(__name__)

SUFFIX = ".journal"
_READ_CHUNK = 1 << 20


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
    def from_record(cls, line: bytes) -> Item:
        """Parse a journal line; raise ``ValueError`` if it is not a complete record."""
        d = orjson.loads(line)
        if not isinstance(d, dict) or not isinstance(d.get("e"), dict):
            raise ValueError("not a journal record")
        stream = d["s"]
        parse_stream_name(stream)
        # The envelope's bytes as emitted: "e" is the last field, and the ones before it
        # cannot contain its marker (validated names, numbers).
        env = line[line.index(b',"e":') + 5 : line.rindex(b"}")]
        return cls(stream, str(d["p"]), int(d["q"]), env, d["e"], int(d["w"]))


class Journal:
    """An open, locked journal file: appended by its owner, read back from ``read_pos``."""

    def __init__(self, path: Path, fd: int, *, adopted: bool) -> None:
        self.path = path
        self.fd = fd
        self.adopted = adopted
        self.read_pos = 0
        self.size = os.fstat(fd).st_size
        self.count = 0  # records appended by this process

    @classmethod
    def create(cls, spool_dir: Path, producer_id: str) -> Journal:
        spool_dir.mkdir(parents=True, exist_ok=True)
        path = spool_dir / f"{os.getpid()}-{producer_id}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, adopted=False)

    @classmethod
    def try_adopt(cls, path: Path) -> Journal | None:
        """Open and lock a journal whose owner died; ``None`` if it is alive or gone."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The owner unlinks a drained journal before it lets go of the lock; if we
            # opened it just before that, the lock is ours but the file is gone: skip it.
            st = os.fstat(fd)
            if st.st_nlink == 0 or os.stat(path).st_ino != st.st_ino:
                raise FileNotFoundError(path)
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd, adopted=True)

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
                    items.append(Item.from_record(line))
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
        if self.read_pos > 0:
            rest = os.pread(self.fd, self.size - self.read_pos, self.read_pos)
            tmp = self.path.with_name(self.path.name + ".tmp")  # not *.journal: not adopted
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(rest)
            while view:
                view = view[os.write(fd, view) :]
            os.replace(tmp, self.path)  # the path now names the new, still locked, file
            os.close(self.fd)
            self.fd = fd
        self.close()

    def remove(self) -> None:
        """Unlink, then unlock by closing: an adopter racing us sees the link count 0."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)

    def close(self) -> None:
        """Release the lock and keep the file, for the next start to deliver."""
        os.close(self.fd)


def adopt_all(spool_dir: Path) -> list[Journal]:
    """Lock every orphaned journal in ``spool_dir``, oldest first."""

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    paths = sorted(spool_dir.glob("*" + SUFFIX), key=mtime)
    adopted = []
    for path in paths:
        journal = Journal.try_adopt(path)
        if journal is not None:
            log.info("adopting journal %s (%d bytes) left by a dead process", path, journal.size)
            adopted.append(journal)
    return adopted
