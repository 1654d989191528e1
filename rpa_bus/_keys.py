"""Redis key names and client-facing stream names.

Every key of one session carries the session's bucket as a Redis Cluster hash tag
(``rpa:{009}:session:quote-123``), so a session's stream and meta hash share a slot and one
script can append and update both atomically, also on a cluster. All sessions of a bucket
share that slot too, so a relay on a cluster tails a bucket's streams with one XREADGROUP.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from rpa_bus._errors import ConfigMismatch, InvalidSessionId, InvalidStreamName

DEFAULT_PREFIX = "rpa"
DEFAULT_BUCKETS = 256
MAX_BUCKETS = 4096

# The P:config field the archiver sets to "1" (see ``Keys.archive_on``).
ARCHIVE_FIELD = "archive"

_IDENT = re.compile(r"[A-Za-z0-9_.-]{1,128}")

StreamKind = Literal["session", "sessions", "monitor"]


def validate_session_id(sid: object) -> str:
    """Return ``sid`` unchanged if it is a valid session id; raise ``InvalidSessionId`` if not.

    Ids are refused, never sanitised: two different ids must never map to one stream.
    """
    if not isinstance(sid, str) or _IDENT.fullmatch(sid) is None:
        raise InvalidSessionId(
            f"invalid session id {sid!r}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
        )
    return sid


def validate_host_name(host: object) -> str:
    """Return ``host`` if it is a valid monitor host name (same alphabet as session ids)."""
    if not isinstance(host, str) or _IDENT.fullmatch(host) is None:
        raise InvalidStreamName(
            f"invalid host name {host!r}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
        )
    return host


def validate_bucket_count(buckets: int) -> int:
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ConfigMismatch(f"bucket count must be between 1 and {MAX_BUCKETS}, got {buckets}")
    return buckets


def bucket_of(sid: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """The bucket of a session: CRC-32 (zlib's) of its UTF-8 id, modulo the bucket count."""
    return zlib.crc32(sid.encode()) % buckets


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment (one prefix and bucket count)."""

    prefix: str = DEFAULT_PREFIX
    buckets: int = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        validate_bucket_count(self.buckets)

    def bucket_tag(self, sid: str) -> str:
        return f"{{{bucket_of(sid, self.buckets):03x}}}"

    def session(self, sid: str) -> str:
        """The session's event stream, e.g. ``rpa:{009}:session:quote-123``."""
        validate_session_id(sid)
        return f"{self.prefix}:{self.bucket_tag(sid)}:session:{sid}"

    def meta(self, sid: str) -> str:
        """The session's meta hash: epoch, created, producer sequences, folded state."""
        return self.session(sid) + ":meta"

    @property
    def sessions(self) -> str:
        """The index stream of session lifecycle (started / finished / failed)."""
        return f"{self.prefix}:sessions"

    def index_seen(self, producer_id: str) -> str:
        """Cluster only: the highest sequence number of producer ``producer_id`` already
        in the sessions index (a string, expiring after the retention period). Its hash
        tag is the index's own key name, so it shares the index's slot and one script
        deduplicates index entries there: ``rpa:{rpa:sessions}:indexed:PID``."""
        validate_host_name(producer_id)
        return f"{self.prefix}:{{{self.sessions}}}:indexed:{producer_id}"

    def monitor(self, host: str) -> str:
        validate_host_name(host)
        return f"{self.prefix}:monitor:{host}"

    @property
    def monitors(self) -> str:
        """Hash of the hosts that report: host -> last sample time (ms since the epoch)."""
        return f"{self.prefix}:monitors"

    @property
    def config(self) -> str:
        """Deployment-wide settings every part must agree on (the bucket count)."""
        return f"{self.prefix}:config"

    def bucket_config(self, bucket: int) -> str:
        """Cluster only: a bucket's copy of the archive flag, ``P:{B}:config`` (field
        ``archive`` = ``1``), in the slot of the bucket's sessions so the append script
        reads it atomically with its write. Written by the archiver, before ``P:config``."""
        return f"{self.prefix}:{{{self.bucket_hex(bucket)}}}:config"

    def config_of(self, sid: str) -> str:
        """The archive flag hash in session ``sid``'s slot (``bucket_config`` of its bucket)."""
        return f"{self.prefix}:{self.bucket_tag(sid)}:config"

    @property
    def index_config(self) -> str:
        """Cluster only: the index's copy of the archive flag, in the index's slot:
        ``P:{P:sessions}:config``."""
        return f"{self.prefix}:{{{self.sessions}}}:config"

    def flag_keys(self) -> list[str]:
        """Every cluster copy of the archive flag: each bucket's, then the index's."""
        return [*(self.bucket_config(b) for b in range(self.buckets)), self.index_config]

    def job_profile(self, job: str) -> str:
        """The learned step profile of a job (JSON, set by the archiver when a run of the
        job ends, read by producers when a run starts), e.g. ``rpa:job:quote-robot:profile``."""
        if not isinstance(job, str) or _IDENT.fullmatch(job) is None:
            raise InvalidStreamName(
                f"invalid job name {job!r}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
            )
        return f"{self.prefix}:job:{job}:profile"

    def relay_group(self, name: str) -> str:
        """The consumer group of one relay instance; one per instance, so every one sees all."""
        validate_host_name(name)
        return f"{self.prefix}:relay:{name}"

    def worker_group(self, kind: str) -> str:
        """The consumer group of one kind of worker (``archiver``, ``webhooks``) on every
        stream that kind reads; the processes of the kind share it."""
        validate_host_name(kind)
        return f"{self.prefix}:{kind}"

    def workers(self, kind: str) -> str:
        """Sorted set of the live processes of a worker kind: consumer -> last heartbeat
        (ms since the epoch, the server's clock)."""
        validate_host_name(kind)
        return f"{self.prefix}:workers:{kind}"

    def lease(self, kind: str, tag: str) -> str:
        """A worker kind's lease on one unit of streams: ``P:{TAG}:lease:KIND``. ``tag`` is
        a bucket's three hex digits (``bucket_hex``) or a stream's key (``P:sessions``,
        ``P:monitor:HOST``), so on a cluster the lease lives in its streams' slot."""
        validate_host_name(kind)
        return f"{self.prefix}:{{{tag}}}:lease:{kind}"

    @staticmethod
    def bucket_hex(bucket: int) -> str:
        """A bucket as it appears in hash tags: three lowercase hex digits."""
        return f"{bucket:03x}"

    def key_for(self, stream: StreamRef) -> str:
        """The Redis key behind a client-facing stream name."""
        if stream.kind == "session":
            return self.session(stream.ident)
        if stream.kind == "monitor":
            return self.monitor(stream.ident)
        return self.sessions

    def meta_for(self, stream: StreamRef) -> str | None:
        """The meta hash behind a stream, if it has one (only sessions do)."""
        return self.meta(stream.ident) if stream.kind == "session" else None

    def check_config(self, stored: dict[str, str]) -> None:
        """Raise ``ConfigMismatch`` if the deployment's stored bucket count is not ours.

        The I/O around it (HSETNX of our value, then HGETALL) lives in the parts that talk
        to Redis; the first writer's value wins.
        """
        theirs = stored.get("buckets")
        if theirs is not None and theirs != str(self.buckets):
            raise ConfigMismatch(
                f"this deployment ({self.config}) uses {theirs} buckets but this process is "
                f"set to {self.buckets}: set RPA_BUS_BUCKETS={theirs}"
            )

    def config_fields(self) -> dict[str, str]:
        return {"buckets": str(self.buckets)}

    @staticmethod
    def archive_on(stored: Mapping[str, str]) -> bool:
        """Whether the deployment has an archive (``P:config`` field ``archive`` = ``1``,
        set by the archiver, never by the others): then no part trims a stream or expires
        a finished session's keys; the archiver does both once it has stored the entries."""
        return stored.get(ARCHIVE_FIELD) == "1"


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A stream as clients name it: ``session:SID``, ``sessions`` or ``monitor:HOST``."""

    kind: StreamKind
    ident: str = ""

    @property
    def name(self) -> str:
        return self.kind if self.kind == "sessions" else f"{self.kind}:{self.ident}"

    def __str__(self) -> str:
        return self.name


def parse_stream_name(name: object) -> StreamRef:
    """Parse a client-facing stream name; raise ``InvalidStreamName`` naming the problem."""
    if not isinstance(name, str):
        raise InvalidStreamName(f"stream name must be a string, got {type(name).__name__}")
    if name == "sessions":
        return StreamRef("sessions")
    kind, sep, ident = name.partition(":")
    if sep and kind == "session":
        try:
            return StreamRef("session", validate_session_id(ident))
        except InvalidSessionId as exc:
            raise InvalidStreamName(f"invalid stream {name!r}: {exc}") from exc
    if sep and kind == "monitor":
        try:
            return StreamRef("monitor", validate_host_name(ident))
        except InvalidStreamName as exc:
            raise InvalidStreamName(f"invalid stream {name!r}: {exc}") from exc
    raise InvalidStreamName(
        f"unknown stream {name!r}: expected 'session:SID', 'sessions' or 'monitor:HOST'"
    )
