"""Appends over HTTP (``POST /v1/sessions/{SID}/events``), idempotent per ``Idempotency-Key``.

The dedup is the producer's own: the shared append script (``rpa_bus.redisio``; sequence
numbers per producer id in the session's meta hash), run with a producer id derived from
the request's ``Idempotency-Key`` (``h`` + 32 hex digits of its SHA-256) and sequence
numbers 1..n for the request's n events. A retry of a request whose reply was lost
presents the same id and the same numbers, so the script skips every event the first
attempt applied.

Around that script, in the same atomic call, a guard keeps a record per key in the meta
hash (field ``idem:<producer id>`` = ``<SHA-256 of the body> <id> <id> ...``): a retry gets
the first attempt's entry ids back, and a key reused with a different body is refused
before anything is written. The record and the ``seq:`` field live as long as the meta hash
(the retention period after the session ends). A request without a key gets a random
producer id whose ``seq:`` field the guard removes again, so plain appends leave nothing
behind.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from rpa_bus import Envelope, Keys, Settings, state_fields
from rpa_bus.redisio import APPEND_LUA, INDEX_MAXLEN, ONCE_LUA, AsyncClient

_INDEX_TYPES: Final = frozenset({"started", "finished", "failed"})

# KEYS and ARGV as APPEND_LUA, plus two trailing ARGV: the record field ('' without an
# Idempotency-Key) and the body's digest. Returns {1, "id id ..."} when it appended,
# {0, record} when the key was seen before (the caller compares the digest).
GUARDED_APPEND_LUA: Final = (
    """
local digest = table.remove(ARGV)
local record_field = table.remove(ARGV)
if record_field ~= '' then
  local record = redis.call('HGET', KEYS[2], record_field)
  if record then
    return {0, record}
  end
end
-- The append's own trim would run before the new entries' ids are read back (a POST of
-- more events than maxlen would answer only the survivors' ids): it trims after, below.
local maxlen = ARGV[2]
ARGV[2] = '0'
local function append()
"""
    + APPEND_LUA
    + """
end
local applied = append()[1]
local ids = {}
if applied > 0 then
  -- The script runs atomically: the newest `applied` entries are the ones it just added.
  local rows = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', applied)
  for i = #rows, 1, -1 do
    ids[#ids + 1] = rows[i][1]
  end
  -- The append's trim, as it would have done it: none while the archive is on (the
  -- flag's hash is the key after the session's two whose name ends in ':config').
  local flag = nil
  for i = 3, #KEYS do
    if string.sub(KEYS[i], -7) == ':config' then flag = KEYS[i] end
  end
  if maxlen ~= '0' and not (flag and redis.call('HGET', flag, 'archive') == '1') then
    redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen)
  end
end
local joined = table.concat(ids, ' ')
if record_field ~= '' then
  redis.call('HSET', KEYS[2], record_field, digest .. ' ' .. joined)
else
  redis.call('HDEL', KEYS[2], 'seq:' .. ARGV[1])
end
return {1, joined}
"""
)


@dataclass(frozen=True, slots=True)
class Appended:
    """The entry ids of a request's events; ``replayed``: a retry, nothing was written."""

    ids: list[str]
    replayed: bool


class KeyReused(Exception):
    """The Idempotency-Key was used before with a different body; nothing was written."""


def producer_id(idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return "h" + secrets.token_hex(16)
    return "h" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _fold(events: Sequence[Envelope]) -> dict[str, str]:
    state: dict[str, str] = {}
    for event in events:
        state.update(state_fields(event))
    return state


async def append(
    client: AsyncClient,
    *,
    keys: Keys,
    settings: Settings,
    sid: str,
    events: Sequence[Envelope],
    encoded: Sequence[bytes],
    idempotency_key: str | None,
    digest: str,
) -> Appended:
    """Append validated, encoded ``events`` to session ``sid`` in one atomic call.

    Raises ``KeyReused`` if ``idempotency_key`` was used with another body (``digest``),
    and redis-py's errors as they come (the caller maps them to 503): the call either
    applied every event or none.
    """
    cluster = isinstance(client, aioredis.RedisCluster)
    pid = producer_id(idempotency_key)
    now_ms = int(time.time() * 1000)
    tail: list[Any] = []
    index_entries: list[tuple[int, bytes]] = []
    for seq, (event, raw) in enumerate(zip(events, encoded, strict=True), start=1):
        kind = event["type"]
        if kind in _INDEX_TYPES:
            entry = orjson.dumps({"type": kind, "session": sid, "ts": event["ts"]})
            flag = b"s" if kind == "started" else b"t"
            tail += (b"%d|%s%s" % (seq, flag, b"" if cluster else entry), raw)
            index_entries.append((seq, entry))
        else:
            tail += (seq, raw)
    # On one server the index and P:config (the archive flag: no trim before archive) are
    # keys of the same call; on a cluster they live in other slots, and the bucket's copy
    # of the flag (P:{B}:config, written by the archiver) stands in for P:config.
    stream_keys = [
        keys.session(sid),
        keys.meta(sid),
        *((keys.config_of(sid),) if cluster else (keys.sessions, keys.config)),
    ]
    argv = [
        pid,
        settings.maxlen,
        int(settings.retention_s * 1000),
        secrets.token_hex(8),
        now_ms,
        INDEX_MAXLEN,
        orjson.dumps(_fold(events)),
        *tail,
        f"idem:{pid}" if idempotency_key is not None else "",
        digest,
    ]
    # EVAL, not EVALSHA: a POST is one call, and the script text is small next to a body.
    reply = await client.eval(GUARDED_APPEND_LUA, len(stream_keys), *stream_keys, *argv)
    fresh, text = int(reply[0]), _text(reply[1])
    if not fresh:
        stored_digest, _, joined = text.partition(" ")
        if stored_digest != digest:
            raise KeyReused(
                "this Idempotency-Key was used with a different request body; nothing was "
                "appended (use a new key for a new request)"
            )
    else:
        joined = text
    if cluster and index_entries:
        # The index lives in another slot on a cluster: its own script, deduplicated per
        # producer id like the append (a retry with the same key indexes nothing twice).
        args: list[Any] = ["MAXLEN", INDEX_MAXLEN, int(settings.retention_s * 1000)]
        for seq, entry in index_entries:
            args += (seq, entry)
        # The index's copy of the archive flag: no trim while the archive is on.
        await client.eval(
            ONCE_LUA, 3, keys.sessions, keys.index_seen(pid), keys.index_config, *args
        )
    return Appended(joined.split() if joined else [], replayed=not fresh)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
