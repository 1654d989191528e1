"""What the HTTP API reads: pages of a stream's history, sessions and their folded state.

``History`` is the seam: ``RedisHistory`` reads what Redis retains; ``ArchiveHistory``
(with ``RPA_BUS_ARCHIVE_URL``) wraps it and reaches past Redis's retention into the archive
with the same ids, so the API handlers do not change:

- a page whose range reaches below Redis's first entry, on a stream Redis has trimmed
  (XINFO STREAM: ``entries-added`` > ``length``), or of a stream Redis no longer holds,
  takes the older part from the archive (the current epoch's entries only) and the rest
  from Redis; ``next`` crosses the boundary both ways (asc and desc);
- the session list gives Redis's sessions first (newest first by the index), then the
  archive's that Redis no longer holds (most recently updated first), with one cursor;
- one session's state comes from Redis, else from the archive.

A read that needs the archive while it is down raises ``ArchiveUnavailable`` (the API
answers 503 ``unavailable``); reads Redis alone answers never touch the archive.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import orjson

from relay._archive import Archive, trimmed_count
from relay._frames import MAX_ID
from rpa_bus import InvalidOffset, Keys, StreamId, StreamRef, now_ts, state_from_meta
from rpa_bus.archive import MAX_PAGE, ArchivedSession, Store, session_cursor
from rpa_bus.redisio import AsyncClient

Order = Literal["asc", "desc"]

# Stored envelope bytes per entry: embedded in answers as they are (orjson.Fragment).
Entry = tuple[str, bytes | None]

# A parse option the relay's XRANGE/XREVRANGE reply callback honours (``relay._relay``):
# hand the reply over as Redis sent it, ``[[id, [field, value, ...]], ...]``.
RAW_ENTRIES: Final = "raw_entries"
_RAW: Final = {RAW_ENTRIES: True}

# Which of these sessions have the query in an earlier message (``RedisHistory.indexed``).
Searched = Callable[[list[str]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a stream's entries, in the order asked for."""

    epoch: str | None
    first: str | None
    last: str | None
    entries: list[Entry]
    # Where the following page starts (exclusive): ``after`` for asc, ``before`` for desc.
    next: str | None


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session's folded state, as ``GET /v1/sessions/{SID}`` answers it."""

    session: str
    epoch: str | None
    started: str | None
    first: str | None
    last: str | None
    state: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session": self.session}
        for name in ("status", "step", "total", "percent", "eta_s", "message", "error"):
            out[name] = self.state.get(name)
        out["started"] = self.started
        out["updated"] = self.state.get("updated")
        out["first"] = self.first
        out["last"] = self.last
        out["epoch"] = self.epoch
        # The job view (issue 16): the job this session is a run of, and the basis of
        # eta_s (how many past runs it rests on; 0 = the run's own pace).
        out["job"] = self.state.get("job")
        out["eta_runs"] = self.state.get("eta_runs")
        return out


@dataclass(frozen=True, slots=True)
class SessionsPage:
    sessions: list[SessionState]
    # Pass as ``cursor`` for older sessions; None when the index has nothing older.
    next: str | None


class History(Protocol):
    """Reads for the HTTP API. Each call raises redis-py's errors (or the archive's) as
    they come; the API maps them to 503."""

    async def page(
        self,
        stream: StreamRef,
        *,
        after: StreamId | None,
        before: StreamId | None,
        limit: int,
        order: Order,
    ) -> Page: ...

    async def session(self, sid: str) -> SessionState | None: ...

    async def sessions(
        self,
        *,
        status: str | None,
        query: str | None,
        since: StreamId | None,
        until: StreamId | None = None,
        limit: int,
        cursor: str | None,
    ) -> SessionsPage:
        """``cursor``: the ``next`` of a previous answer (``InvalidOffset`` if malformed)."""
        ...


class RedisHistory:
    """``History`` over what Redis retains: XRANGE/XREVRANGE with exclusive bounds, the meta
    hashes, and the ``P:sessions`` index read newest first."""

    # Index entries read per round trip, and at most per request (a search that matches
    # little answers what it found so far and a cursor to go on from).
    INDEX_PAGE = 500
    INDEX_BUDGET = 20_000

    def __init__(self, client: AsyncClient, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    @property
    def client(self) -> AsyncClient:
        return self._client

    @property
    def keys(self) -> Keys:
        return self._keys

    async def held(self, sids: Sequence[str]) -> list[bool]:
        """Whether Redis still holds each session: its meta hash, which every append
        writes. Not its stream: a relay's consumer group (MKSTREAM) keeps an empty one
        under the name while a client follows a session Redis no longer holds."""
        async with self._client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.exists(self._keys.meta(sid))
            replies = await pipe.execute()
        return [bool(n) for n in replies]

    async def page(
        self,
        stream: StreamRef,
        *,
        after: StreamId | None,
        before: StreamId | None,
        limit: int,
        order: Order,
    ) -> Page:
        key = self._keys.key_for(stream)
        meta = self._keys.meta_for(stream)
        empty = _empty_range(after, before)
        low = "-" if after is None else f"({after}"
        high = "+" if before is None else f"({before}"
        # Transaction-free pipeline: one round trip; a session's keys share a slot.
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
            if not empty:
                # The reply as Redis sent it (RAW_ENTRIES): the page needs each entry's id
                # and its one field, not redis-py's tuple and dict per entry.
                if order == "asc":
                    pipe.execute_command("XRANGE", key, low, high, "COUNT", limit + 1, **_RAW)
                else:
                    pipe.execute_command("XREVRANGE", key, high, low, "COUNT", limit + 1, **_RAW)
            if meta is not None:
                pipe.hget(meta, "epoch")
            replies = await pipe.execute()
        head, tail = replies[0], replies[1]
        rows = [] if empty else replies[2]
        epoch = _opt_text(replies[-1]) if meta is not None else None
        more = len(rows) > limit
        entries = _entries(rows[:limit])
        return Page(
            epoch=epoch,
            first=_text(head[0][0]) if head else None,
            last=_text(tail[0][0]) if tail else None,
            entries=entries,
            next=entries[-1][0] if more else None,
        )

    async def session(self, sid: str) -> SessionState | None:
        (state,) = await self._states([sid])
        return state

    async def _states(self, sids: Sequence[str]) -> list[SessionState | None]:
        async with self._client.pipeline(transaction=False) as pipe:
            for sid in sids:
                key = self._keys.session(sid)
                pipe.hgetall(self._keys.meta(sid))
                pipe.xrange(key, count=1)
                pipe.xrevrange(key, count=1)
            replies = await pipe.execute()
        out: list[SessionState | None] = []
        for i, sid in enumerate(sids):
            meta, head, tail = replies[3 * i : 3 * i + 3]
            if not meta and not head:
                out.append(None)
                continue
            fields = {_text(k): _text(v) for k, v in meta.items()}
            out.append(
                SessionState(
                    session=sid,
                    epoch=fields.get("epoch"),
                    started=_created(fields.get("created")),
                    first=_text(head[0][0]) if head else None,
                    last=_text(tail[0][0]) if tail else None,
                    state=state_from_meta(meta),
                )
            )
        return out

    async def sessions(
        self,
        *,
        status: str | None,
        query: str | None,
        since: StreamId | None,
        until: StreamId | None = None,
        limit: int,
        cursor: str | None,
        searched: Searched | None = None,
    ) -> SessionsPage:
        """Sessions newest first by their ``started`` index entry, each once per page."""
        return await self.indexed(
            status=status,
            query=query,
            since=since,
            until=until,
            limit=limit,
            cursor=None if cursor is None else StreamId.parse(cursor),
            searched=searched,
        )

    async def indexed(
        self,
        *,
        status: str | None,
        query: str | None,
        since: StreamId | None,
        until: StreamId | None = None,
        limit: int,
        cursor: StreamId | None,
        searched: Searched | None = None,
    ) -> SessionsPage:
        """``searched(sids)``: which of the sessions whose meta hash (id, last message,
        last error) does not match ``query`` have it in an earlier message (the archive's
        text); asked once per index page read, for those only."""
        needle = query.casefold() if query else None
        found: list[SessionState] = []
        seen: set[str] = set()
        if cursor is not None and cursor <= StreamId(0, 0):
            return SessionsPage(found, next=None)  # nothing is older than 0-0
        high = "+" if cursor is None else f"({cursor}"
        if until is not None and (cursor is None or until < cursor):
            high = str(until)  # inclusive, as ``since``
        low = "-" if since is None else str(since)
        scanned = 0
        position: str | None = None  # the last index entry this request has looked at
        exhausted = full = False
        while not full and scanned < self.INDEX_BUDGET:
            rows: list[Any] = await self._client.xrevrange(  # type: ignore[assignment]
                self._keys.sessions, max=high, min=low, count=self.INDEX_PAGE
            )
            candidates: list[tuple[str, str]] = []
            for entry_id, fields in rows:
                scanned += 1
                entry = _index_entry(fields.get(b"e"))
                if entry is None or entry[0] != "started" or entry[1] in seen:
                    continue
                seen.add(entry[1])
                candidates.append((_text(entry_id), entry[1]))
            states = await self._states([sid for _, sid in candidates]) if candidates else []
            matched = [s is not None and _matches(s, status, needle) for s in states]
            if searched is not None and query:
                others = [
                    s.session
                    for s, ok in zip(states, matched, strict=True)
                    if s is not None and not ok and _matches(s, status, None)
                ]
                if others:
                    more = await searched(others)
                    matched = [
                        ok or (s is not None and s.session in more)
                        for s, ok in zip(states, matched, strict=True)
                    ]
            for (entry_id, _sid), state, ok in zip(candidates, states, matched, strict=True):
                if state is not None and ok:
                    found.append(state)
                    if len(found) == limit:
                        position, full = entry_id, True
                        break
            if full:
                break
            if rows:
                position = _text(rows[-1][0])
                high = f"({position}"
            if len(rows) < self.INDEX_PAGE:
                exhausted = True
                break
        return SessionsPage(found, next=None if exhausted else position)


class ArchiveHistory:
    """``History`` over Redis and the archive, without a seam (module docstring)."""

    # Archive cursors of the session list carry this prefix (Redis's are stream ids).
    ARCHIVE_CURSOR = "a."
    # Archive pages one request reads at most while skipping sessions Redis still holds.
    ARCHIVE_ROUNDS = 20

    def __init__(self, redis: RedisHistory, archive: Archive) -> None:
        self._redis = redis
        self._archive = archive

    async def page(
        self,
        stream: StreamRef,
        *,
        after: StreamId | None,
        before: StreamId | None,
        limit: int,
        order: Order,
    ) -> Page:
        recent = await self._redis.page(
            stream, after=after, before=before, limit=limit, order=order
        )
        if stream.kind not in ("session", "sessions"):
            return recent  # monitor streams are not archived
        if order == "desc" and recent.next is not None:
            return recent  # a full page of what Redis holds: the archive has only older ones
        head = None if recent.first is None else StreamId.parse(recent.first)
        # The archive holds what is older than Redis's first entry.
        upto = head if before is None or (head is not None and head < before) else before
        if upto is not None and _empty_range(after, upto):
            return recent
        if head is not None and not await self._trimmed(stream):
            return recent  # Redis has the stream's whole history past ``after``
        epoch = recent.epoch
        if stream.kind == "session" and epoch is None:
            # Gone from Redis: the archive's newest run of the session.
            known = await self._archive.run(lambda s: s.session(stream.ident))
            epoch = known.epoch if known is not None else None
        if order == "asc":
            return await self._asc(stream, recent, after, upto, limit, epoch)
        return await self._desc(stream, recent, after, upto, limit, epoch)

    async def _trimmed(self, stream: StreamRef) -> bool:
        """Whether Redis removed entries from the stream's head (the archive may have them)."""
        removed = await trimmed_count(self._redis.client, self._redis.keys.key_for(stream))
        return removed is None or removed > 0  # None: Redis before 7.0 does not say

    async def _older(
        self,
        stream: StreamRef,
        after: StreamId | None,
        upto: StreamId | None,
        limit: int,
        order: Order,
        epoch: str | None,
    ) -> tuple[list[Entry], str | None, str | None, str | None]:
        """The archive's entries in (after, upto), and its first and last ids and ``next``."""
        kept_epoch = epoch if stream.kind == "session" else None

        async def read(store: Store) -> Any:
            return await store.events(
                stream.name,
                after=None if after is None else str(after),
                before=None if upto is None else str(upto),
                limit=limit,
                order=order,
                epoch=kept_epoch,
            )

        page = await self._archive.run(read)
        entries: list[Entry] = [(e.id, e.data) for e in page.events]
        return entries, page.first, page.last, page.next

    async def _asc(
        self,
        stream: StreamRef,
        recent: Page,
        after: StreamId | None,
        upto: StreamId | None,
        limit: int,
        epoch: str | None,
    ) -> Page:
        older, first, last, more_older = await self._older(stream, after, upto, limit, "asc", epoch)
        room = limit - len(older)
        if more_older is not None or room == 0:
            entries = older
            more = more_older is not None or bool(recent.entries)
        else:
            # Redis's page started at ``after`` too; its entries are all past the archive's.
            entries = older + recent.entries[:room]
            more = len(recent.entries) > room or recent.next is not None
        return Page(
            epoch=epoch,
            first=first or recent.first,
            last=recent.last or last,
            entries=entries,
            next=entries[-1][0] if more and entries else None,
        )

    async def _desc(
        self,
        stream: StreamRef,
        recent: Page,
        after: StreamId | None,
        upto: StreamId | None,
        limit: int,
        epoch: str | None,
    ) -> Page:
        room = limit - len(recent.entries)  # >= 1: a full Redis page returned earlier
        older, first, last, more_older = await self._older(stream, after, upto, room, "desc", epoch)
        entries = recent.entries + older
        return Page(
            epoch=epoch,
            first=first or recent.first,
            last=recent.last or last,
            entries=entries,
            next=entries[-1][0] if more_older is not None and entries else None,
        )

    def _searched(self, query: str) -> Searched:
        async def searched(sids: list[str]) -> set[str]:
            return await self._archive.run(lambda s: s.searched(sids, query))

        return searched

    async def session(self, sid: str) -> SessionState | None:
        state = await self._redis.session(sid)
        if state is not None:
            return state
        archived = await self._archive.run(lambda s: s.session(sid))
        return None if archived is None else _from_archive(archived)

    async def sessions(
        self,
        *,
        status: str | None,
        query: str | None,
        since: StreamId | None,
        until: StreamId | None = None,
        limit: int,
        cursor: str | None,
    ) -> SessionsPage:
        """Redis's sessions first (its index, newest first), then the archive's sessions
        Redis no longer holds (most recently updated first); ``next`` moves through both.
        With ``query``, a session Redis holds also matches on an earlier message or error
        the archive has stored (``Store.searched``)."""
        found: list[SessionState] = []
        archive_cursor: str | None = None
        if cursor is not None and cursor.startswith(self.ARCHIVE_CURSOR):
            archive_cursor = cursor[len(self.ARCHIVE_CURSOR) :]
            if not archive_cursor:
                raise InvalidOffset(f"invalid sessions cursor {cursor!r}")
        else:
            page = await self._redis.sessions(
                status=status,
                query=query,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
                searched=None if query is None else self._searched(query),
            )
            if page.next is not None:
                return page
            found = list(page.sessions)
        since_ts = None if since is None else now_ts(since.ms / 1000)
        until_ts = None if until is None else now_ts(until.ms / 1000)
        for _ in range(self.ARCHIVE_ROUNDS):
            room = limit - len(found)
            if room <= 0:
                break
            want = min(MAX_PAGE, max(2 * room, 100))
            chunk = await self._archive.run(
                lambda s, c=archive_cursor, n=want: s.sessions(  # type: ignore[misc]
                    status=status, q=query, since=since_ts, until=until_ts, limit=n, cursor=c
                )
            )
            # Sessions Redis still holds are listed from its index: skip them here.
            held = await self._redis.held([s.session for s in chunk.sessions])
            taken = 0
            for archived, there in zip(chunk.sessions, held, strict=True):
                if len(found) == limit:
                    break
                taken += 1
                if not there:
                    found.append(_from_archive(archived))
            if taken < len(chunk.sessions):
                return SessionsPage(
                    found, next=self.ARCHIVE_CURSOR + session_cursor(chunk.sessions[taken - 1])
                )
            if chunk.next is None:
                return SessionsPage(found, next=None)
            archive_cursor = chunk.next
        # Full, or looked at enough for one request: go on from here next time.
        return SessionsPage(found, next=self.ARCHIVE_CURSOR + (archive_cursor or ""))


def _from_archive(s: ArchivedSession) -> SessionState:
    state: dict[str, Any] = {
        "status": s.status,
        "step": s.step,
        "total": s.total,
        "percent": s.percent,
        "eta_s": s.eta_s,
        "message": s.message,
        "error": s.error,
        "updated": s.updated,
        "job": s.job,
        "eta_runs": s.eta_runs,
    }
    return SessionState(
        session=s.session,
        epoch=s.epoch,
        started=s.started,
        first=s.first,
        last=s.last,
        state={k: v for k, v in state.items() if v is not None},
    )


def _matches(state: SessionState, status: str | None, needle: str | None) -> bool:
    if status is not None and state.state.get("status") != status:
        return False
    if needle is None:
        return True
    texts = (state.session, state.state.get("message") or "", state.state.get("error") or "")
    return any(needle in text.casefold() for text in texts)


def _index_entry(raw: bytes | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    kind, sid = value.get("type"), value.get("session")
    if not isinstance(kind, str) or not isinstance(sid, str):
        return None
    return kind, sid


def _empty_range(after: StreamId | None, before: StreamId | None) -> bool:
    """Whether (after, before) holds no id at all. Redis refuses ``(`` + the largest id as
    a start and ``(0-0`` as an end (their neighbours overflow), so those never reach it."""
    if after is not None and after >= StreamId(*MAX_ID):
        return True
    if before is not None and before <= StreamId(0, 0):
        return True
    if after is not None and before is not None:
        # Exclusive on both sides: nothing between ids that are equal or adjacent.
        return before <= after or (before.ms == after.ms and before.seq == after.seq + 1)
    return False


def _created(value: str | None) -> str | None:
    """The meta hash's ``created`` (ms since the epoch) as an envelope timestamp."""
    if value is None or not value.isdigit():
        return None
    return now_ts(int(value) / 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(rows: list[Any]) -> list[Entry]:
    """``(id, envelope bytes)`` per stream entry, from a raw reply or (a client without the
    relay's reply callback, e.g. on a cluster) redis-py's ``[(id, {field: value})]``."""
    if rows and isinstance(rows[0][1], dict):
        return [(_text(entry_id), fields.get(b"e")) for entry_id, fields in rows]
    return [
        (entry_id.decode(), fields[1] if len(fields) == 2 and fields[0] == b"e" else _field(fields))
        for entry_id, fields in rows
    ]


def _field(fields: list[bytes] | None) -> bytes | None:
    """The ``e`` field of a raw entry that is not just ``[b"e", value]``."""
    if not fields:
        return None
    pairs = iter(fields)
    return dict(zip(pairs, pairs, strict=False)).get(b"e")


def _opt_text(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)
