"""Bus health: Redis INFO, the running sessions, their last activity, each relay's lag.

Cost is what matters here: the monitor must stay cheap with thousands of sessions.

- Running sessions come from the ``P:sessions`` lifecycle index, read incrementally (XREAD
  from the last id seen) into an in-memory map, bounded by ``max_sessions``.
- Each sample, one Lua script probes up to ``streams_per_tick`` session streams (all of
  them when there are fewer; round-robin beyond) plus the index and this host's monitor
  stream. For each it returns the ms of the last entry (server clock, from the entry id)
  and, for every relay consumer group on it, the group's lag and pending count. The
  client sends the key names and gets back a flat list of integers, so the monitor's CPU
  per sample stays flat in the number of sessions; the server does about two small
  reads per stream.
- A session idle for longer than the stall limit is confirmed with one HMGET of its meta
  ``status`` before it is reported (the lifecycle index may have lost its end).

Multi-key scripts need every key on one server: the probe targets a single Redis (or
one shard), not a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final, cast

import orjson
import redis

from rpa_bus import Keys, StreamId

log = logging.getLogger(__name__)

INDEX_PAGE: Final = 1000
INDEX_PAGES_PER_TICK: Final = 10
CONFIRM_PER_TICK: Final = 200

# KEYS: streams. ARGV[1]: the relay group name prefix ("rpa:relay:").
# Returns {last_ms..., groups} where last_ms[i] is the ms of KEYS[i]'s last entry (-1: empty,
# missing or not a stream) and groups is a flat {i, relay, lag (-1: unknown), pending, ...}.
PROBE_LUA: Final = """
local prefix = ARGV[1]
local plen = string.len(prefix)
local last = {}
local groups = {}
for i = 1, #KEYS do
  local entries = redis.pcall('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  last[i] = -1
  if type(entries) == 'table' and entries.err == nil and #entries > 0 then
    local last_id = entries[1][1]
    last[i] = tonumber(string.match(last_id, '^(%d+)-'))
    local info = redis.pcall('XINFO', 'GROUPS', KEYS[i])
    if type(info) == 'table' and info.err == nil then
      for _, g in ipairs(info) do
        local f = {}
        for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
        local name = f['name']
        if type(name) == 'string' and string.sub(name, 1, plen) == prefix then
          local lag = f['lag']
          if type(lag) ~= 'number' then
            -- Redis < 7, or a lag Redis cannot tell (entries deleted mid-stream).
            if f['last-delivered-id'] == last_id then lag = 0 else lag = -1 end
          end
          table.insert(groups, i)
          table.insert(groups, string.sub(name, plen + 1))
          table.insert(groups, lag)
          table.insert(groups, f['pending'] or 0)
        end
      end
    end
  end
end
return {last, groups}
"""


# XREAD's reply on a RESP2 client without decode_responses.
XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def _ms_of(entry_id: bytes | str) -> int:
    return StreamId.parse(entry_id).ms


@dataclass(slots=True)
class BusReading:
    """One probe: the sample's ``bus`` object and the values alerts watch."""

    health: dict[str, Any]
    server_ms: int
    relay_lag: dict[str, float] = field(default_factory=dict)
    # session -> seconds idle, for sessions stalled (confirmed running) or asked about.
    idle_s: dict[str, float] = field(default_factory=dict)


class BusProbe:
    """Reads bus health each sample; keeps the running sessions between samples."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        host_name: str,
        streams_per_tick: int,
        max_sessions: int,
    ) -> None:
        self._client = client
        self._keys = keys
        self._host = host_name
        self._monitor_key = keys.monitor(host_name)
        self._relay_prefix = keys.relay_group("x")[:-1]
        self._streams_per_tick = streams_per_tick
        self._max_sessions = max_sessions
        self._script = client.register_script(PROBE_LUA)
        self._config_checked = False
        self._index_last = "0-0"
        # session -> ms (server clock) of its last known activity; insertion = start order.
        self._running: dict[str, int] = {}
        self._rr = 0
        self._evicted = 0
        # stream key -> relay -> (lag, pending), refreshed whenever the stream is probed.
        self._relays: dict[str, dict[str, tuple[int, int]]] = {}

    @property
    def running(self) -> Collection[str]:
        return self._running.keys()

    def probe(
        self, *, now_ms: int, stall_after_s: float, stalled: Collection[str] = ()
    ) -> BusReading:
        """Read everything; raise ``redis.RedisError``/``OSError`` if Redis does not answer.

        ``stalled``: sessions whose stall alert is firing; their idle time is reported
        whatever it is, so the alert can resolve once they move.
        """
        if not self._config_checked:
            self._check_config()
        pipe = self._client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("clients")
        pipe.info("stats")
        pipe.time()
        pipe.hset(self._keys.monitors, self._host, str(now_ms))
        memory, clients, stats, server_time, _ = pipe.execute()
        sec, usec = cast(tuple[int, int], server_time)
        server_ms = sec * 1000 + usec // 1000

        self._read_index()
        self._probe_streams()

        relays: dict[str, dict[str, int]] = {}
        for groups in self._relays.values():
            for name, (lag, pending) in groups.items():
                agg = relays.setdefault(name, {"lag": 0, "pending": 0, "streams": 0})
                agg["streams"] += 1
                agg["pending"] += pending
                if lag >= 0:
                    agg["lag"] += lag
                else:
                    agg["lag_unknown"] = agg.get("lag_unknown", 0) + 1

        health: dict[str, Any] = {
            "reachable": True,
            "used_memory": int(memory.get("used_memory", 0)),
            "connected_clients": int(clients.get("connected_clients", 0)),
            "ops_s": int(stats.get("instantaneous_ops_per_sec", 0)),
            "active_sessions": len(self._running),
            "relays": relays,
        }
        reading = BusReading(
            health=health,
            server_ms=server_ms,
            relay_lag={name: float(r["lag"]) for name, r in relays.items()},
        )
        reading.idle_s = self._stalls(server_ms, stall_after_s, stalled)
        return reading

    def _check_config(self) -> None:
        # The bucket count decides session key names: this monitor must agree with the
        # deployment (the first writer of P:config wins).
        pipe = self._client.pipeline(transaction=False)
        for name, value in self._keys.config_fields().items():
            pipe.hsetnx(self._keys.config, name, value)
        pipe.hgetall(self._keys.config)
        stored = cast(dict[bytes, bytes], pipe.execute()[-1])
        self._keys.check_config({k.decode(): v.decode() for k, v in stored.items()})
        self._config_checked = True

    def _read_index(self) -> None:
        for _ in range(INDEX_PAGES_PER_TICK):
            reply = cast(
                XReadReply,
                self._client.xread({self._keys.sessions: self._index_last}, count=INDEX_PAGE),
            )
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                self._index_entry(entry_id, fields)
            if entries:
                last = entries[-1][0]
                self._index_last = last.decode()
            if len(entries) < INDEX_PAGE:
                return

    def _index_entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            event = orjson.loads(fields[b"e"])
            kind, sid = event["type"], event["session"]
        except (KeyError, TypeError, orjson.JSONDecodeError):
            log.debug("skipping a malformed index entry %r", entry_id)
            return
        if not isinstance(sid, str):
            return
        if kind == "started":
            self._running.pop(sid, None)  # a re-run moves to the end of the start order
            self._running[sid] = _ms_of(entry_id)
            if len(self._running) > self._max_sessions:
                oldest = next(iter(self._running))
                self._forget(oldest)
                self._evicted += 1
                if self._evicted == 1 or self._evicted % 1000 == 0:
                    log.warning(
                        "more than %d running sessions: forgot the oldest (%d so far)",
                        self._max_sessions,
                        self._evicted,
                    )
        elif kind in ("finished", "failed"):
            self._forget(sid)

    def _forget(self, sid: str) -> None:
        if self._running.pop(sid, None) is not None:
            self._relays.pop(self._keys.session(sid), None)

    def _probe_streams(self) -> None:
        sids = list(self._running)
        if len(sids) > self._streams_per_tick:
            # Round-robin: each sample probes the next slice, wrapping around.
            start = self._rr % len(sids)
            sids = (sids[start:] + sids[:start])[: self._streams_per_tick]
            self._rr = start + self._streams_per_tick
        keys = [self._keys.session(sid) for sid in sids]
        keys += [self._keys.sessions, self._monitor_key]
        reply = cast(list[list[Any]], self._script(keys=keys, args=[self._relay_prefix]))
        last_ms, groups = reply
        for sid, ms in zip(sids, last_ms, strict=False):  # last_ms also has 2 more
            if ms > self._running[sid]:
                self._running[sid] = int(ms)
        for key in keys:
            self._relays.pop(key, None)
        for i in range(0, len(groups), 4):
            index, name, lag, pending = groups[i : i + 4]
            relay = name.decode() if isinstance(name, bytes) else str(name)
            self._relays.setdefault(keys[int(index) - 1], {})[relay] = (int(lag), int(pending))

    def _stalls(
        self, server_ms: int, stall_after_s: float, stalled: Collection[str]
    ) -> dict[str, float]:
        idle = {sid: max(0.0, (server_ms - ms) / 1000) for sid, ms in self._running.items()}
        out = {sid: round(idle[sid], 1) for sid in stalled if sid in idle}
        candidates = [s for s, v in idle.items() if v > stall_after_s and s not in out]
        candidates = candidates[:CONFIRM_PER_TICK]
        if not candidates:
            return out
        pipe = self._client.pipeline(transaction=False)
        for sid in candidates:
            pipe.hget(self._keys.meta(sid), "status")
        for sid, status in zip(candidates, pipe.execute(), strict=True):
            if status == b"running":
                out[sid] = round(idle[sid], 1)
            else:
                # Ended (or expired) without its end reaching the index: not stalled.
                self._forget(sid)
        return out
