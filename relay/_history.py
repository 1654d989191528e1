"""What the HTTP API reads: pages of a stream's history, sessions and their folded state.

``History`` is the seam: ``RedisHistory`` reads what Redis retains; the archive (issue 14)
adds an implementation that reaches past Redis's retention with the same ids, and the API
handlers do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from relay._frames import MAX_ID
from rpa_bus import Keys, StreamId, StreamRef, now_ts, state_from_meta
from rpa_bus.redisio import AsyncClient

Order = Literal["asc", "desc"]

# Stored envelope bytes per entry: embedded in answers as they are (orjson.Fragment).
Entry = tuple[str, bytes | None]


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
        limit: int,
        cursor: StreamId | None,
    ) -> SessionsPage: ...


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
                if order == "asc":
                    pipe.xrange(key, min=low, max=high, count=limit + 1)
                else:
                    pipe.xrevrange(key, max=high, min=low, count=limit + 1)
            if meta is not None:
                pipe.hget(meta, "epoch")
            replies = await pipe.execute()
        head, tail = replies[0], replies[1]
        rows = [] if empty else replies[2]
        epoch = _opt_text(replies[-1]) if meta is not None else None
        more = len(rows) > limit
        entries = [(_text(entry_id), fields.get(b"e")) for entry_id, fields in rows[:limit]]
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
        limit: int,
        cursor: StreamId | None,
    ) -> SessionsPage:
        """Sessions newest first by their ``started`` index entry, each once per page."""
        needle = query.casefold() if query else None
        found: list[SessionState] = []
        seen: set[str] = set()
        if cursor is not None and cursor <= StreamId(0, 0):
            return SessionsPage(found, next=None)  # nothing is older than 0-0
        high = "+" if cursor is None else f"({cursor}"
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
            for (entry_id, _sid), state in zip(candidates, states, strict=True):
                if state is not None and _matches(state, status, needle):
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


def _opt_text(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)
