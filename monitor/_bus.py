"""Bus health: Redis INFO, the running sessions, their last activity, each relay's lag.

Cost is what matters here: the monitor must stay cheap with thousands of sessions.

- Running sessions come from the ``P:sessions`` lifecycle index, read incrementally (XREAD
  from the last id seen) into an in-memory map, bounded by ``max_sessions``.
- Each sample, one Lua script probes up to ``streams_per_tick`` session streams (all of
  them when there are fewer; round-robin beyond) plus the index and this host's monitor
  stream. For each it returns the meta hash's ``updated`` (every append rewrites it, so a
  change means the session moved) and, for every relay consumer group on the stream, the
  group's lag and pending count. One round trip, a compact reply, two O(1) reads per
  stream on the server (about 2 ms per 1,000 streams), and on the client a dict lookup
  and a bytes comparison per session.
- A session's last activity is the ``ts`` of its last event when first seen (or its
  ``started`` index entry), then the server time of the probe that saw ``updated`` change.
- A session idle for longer than the stall limit is confirmed with one HGET of its meta
  ``status`` before it is reported (the lifecycle index may have lost its end).

On a Redis Cluster (``redis+cluster://``) the same script runs once per slot: the keys
are grouped by slot (all sessions of a bucket share one, so at most one call per active
bucket, plus the index's and this host's), sent in one ClusterPipeline (one round trip
per node), and the replies merged; the meta hashes it reads undeclared are in their
stream's slot, which is all a cluster requires. Redis health is INFO from every master
(memory, clients and ops summed; ``masters`` counts them). On one server or Sentinel
(a plain client on the current master) nothing changes: one script call per sample.

Each master's ``INFO replication`` is read too: ``replicas`` maps each master to its
online replicas, which the ``replicas`` alert compares with ``RPA_BUS_MIN_REPLICAS``.

The monitor's firing alerts are kept in the hash ``P:monitor:HOST:alerts``
(``load_alerts``/``save_alerts``), so a restarted monitor takes them back.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

import orjson
import redis
from redis import exceptions as rx

from rpa_bus import InvalidSessionId, Keys, StreamId
from rpa_bus.redisio import archive_lag, master_label, online_replicas

log = logging.getLogger(__name__)

INDEX_PAGE: Final = 1000
INDEX_PAGES_PER_TICK: Final = 10
CONFIRM_PER_TICK: Final = 200

# KEYS: session streams. ARGV[1]: the relay group name prefix ("rpa:relay:"); ARGV[2]
# (cluster only) "0" when KEYS have no meta hash (the index, a monitor stream): their
# `KEYS[i]:meta` would be in another slot, which a cluster node refuses to touch.
# Returns {updated, groups}: updated[i] is the `updated` field of KEYS[i]'s meta hash ("" if
# none), which every append rewrites, so a change means the session moved; groups is a flat
# {i, relay, lag (-1: unknown), pending, ...} over the relay consumer groups of KEYS[i].
# The meta hash is KEYS[i] .. ":meta": not declared, but always in KEYS[i]'s slot.
# (Reading each stream's last entry instead costs this script three times as much: Redis
# converts the whole entry into Lua values.)
PROBE_LUA: Final = """
local prefix = ARGV[1]
local plen = string.len(prefix)
local updated = {}
local groups = {}
for i = 1, #KEYS do
  updated[i] = (ARGV[2] ~= '0' and redis.call('HGET', KEYS[i] .. ':meta', 'updated')) or ''
  local info = redis.pcall('XINFO', 'GROUPS', KEYS[i])
  if type(info) == 'table' and info.err == nil then
    for _, g in ipairs(info) do
      local f = {}
      for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
      local name = f['name']
      if type(name) == 'string' and string.sub(name, 1, plen) == prefix then
        local lag = f['lag']
        if type(lag) ~= 'number' then
          -- Redis < 7, or a lag Redis cannot tell (entries deleted mid-stream): 0 if the
          -- group has read the last entry, else unknown.
          lag = -1
          local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
          if #last == 0 or f['last-delivered-id'] == last[1][1] then lag = 0 end
        end
        table.insert(groups, i)
        table.insert(groups, string.sub(name, plen + 1))
        table.insert(groups, lag)
        table.insert(groups, f['pending'] or 0)
      end
    end
  end
end
return {updated, groups}
"""
PROBE_SHA: Final = hashlib.sha1(PROBE_LUA.encode()).hexdigest()

SyncClient = redis.Redis | redis.RedisCluster


# XREAD's reply on a RESP2 client without decode_responses.
XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def _ms_of(entry_id: bytes | str) -> int:
    return StreamId.parse(entry_id).ms


def _iso_ms(ts: bytes) -> int:
    """ms since the epoch of an envelope ``ts``; 0 if it is not one."""
    try:
        return int(datetime.fromisoformat(ts.decode().replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, UnicodeDecodeError):
        return 0


@dataclass(slots=True)
class _Tracked:
    """A running session: its stream key (computed once) and its last activity."""

    key: str
    last_ms: int
    # The meta hash's `updated` as last probed; None until the first probe.
    updated: bytes | None = None


@dataclass(slots=True)
class BusReading:
    """One probe: the sample's ``bus`` object and the values alerts watch."""

    health: dict[str, Any]
    server_ms: int
    relay_lag: dict[str, float] = field(default_factory=dict)
    # session -> seconds idle, for sessions stalled (confirmed running) or asked about.
    idle_s: dict[str, float] = field(default_factory=dict)
    # master -> online replicas.
    replicas: dict[str, float] = field(default_factory=dict)
    # ``{"": entries}`` not yet archived when measured this sample (``{}``: archive off);
    # None when not measured this time (every ``archive_lag_interval_s``).
    archive_lag: dict[str, float] | None = None


def alerts_key(keys: Keys, host: str) -> str:
    """``P:monitor:HOST:alerts``: the firing alerts of one host's monitor (a hash). Host
    names hold no colon, so this never names another host's stream."""
    return f"{keys.monitor(host)}:alerts"


class BusProbe:
    """Reads bus health each sample; keeps the running sessions between samples."""

    def __init__(
        self,
        client: SyncClient | None,
        keys: Keys,
        *,
        host_name: str,
        streams_per_tick: int,
        max_sessions: int,
        connect: Callable[[], SyncClient] | None = None,
        archive_lag_interval_s: float = 30.0,
    ) -> None:
        """``client``, or ``connect`` to build one at the first probe (a Cluster client
        reads the slot map when built, which fails while the cluster is down: the probe's
        caller retries each sample)."""
        if (client is None) == (connect is None):
            raise ValueError("pass client= or connect=, exactly one")
        self._client_or_none = client
        self._connect = connect
        self._keys = keys
        self._host = host_name
        self._monitor_key = keys.monitor(host_name)
        self.alerts_key = alerts_key(keys, host_name)
        self._relay_prefix = keys.relay_group("x")[:-1]
        self._streams_per_tick = streams_per_tick
        self._max_sessions = max_sessions
        self._config_checked = False
        self._script: Any = None  # one server: the registered probe script
        self._refresh = False  # cluster: read the slot map again before the next probe
        self._index_last = "0-0"
        # session -> its stream key and the ms (server clock) of its last known activity;
        # insertion order is start order. The key is computed once per session: per sample
        # and session, the probe costs a dict lookup, not a CRC and a format.
        self._running: dict[str, _Tracked] = {}
        # The probe's (sessions, keys) while the running set does not change.
        self._probe_list: tuple[list[str], list[str]] | None = None
        self._rr = 0
        self._evicted = 0
        # stream key -> relay -> (lag, pending), refreshed whenever the stream is probed.
        self._relays: dict[str, dict[str, tuple[int, int]]] = {}
        # The archive lag costs a SCAN of the session streams: measured this often.
        self._archive_every_s = archive_lag_interval_s
        self._archive_due = 0.0
        self._archive: dict[str, Any] | None = None

    @property
    def _client(self) -> SyncClient:
        client = self._client_or_none
        if client is None:
            connect = cast(Callable[[], SyncClient], self._connect)  # __init__: one is set
            client = self._client_or_none = connect()
        return client

    @property
    def client(self) -> SyncClient | None:
        """The client, once built."""
        return self._client_or_none

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
        client = self._client
        if isinstance(client, redis.RedisCluster):
            try:
                return self._probe(client, now_ms, stall_after_s, stalled)
            except (redis.RedisError, OSError, rx.RedisClusterException) as exc:
                # MOVED, a dead or demoted master: read the slot map again next sample.
                self._refresh = True
                if isinstance(exc, rx.RedisClusterException):
                    raise redis.ConnectionError(f"cluster unavailable: {exc}") from exc
                raise
        return self._probe(client, now_ms, stall_after_s, stalled)

    def _probe(
        self, client: SyncClient, now_ms: int, stall_after_s: float, stalled: Collection[str]
    ) -> BusReading:
        masters = 1
        if isinstance(client, redis.RedisCluster):
            if self._refresh:
                client.nodes_manager.initialize()
                self._refresh = False
            memory, clients, stats, server_ms, replication = self._cluster_info(client)
            masters = len(replication)
            client.hset(self._keys.monitors, self._host, str(now_ms))
        else:
            pipe = client.pipeline(transaction=False)
            pipe.info("memory")
            pipe.info("clients")
            pipe.info("stats")
            pipe.info("replication")
            pipe.time()
            pipe.hset(self._keys.monitors, self._host, str(now_ms))
            memory, clients, stats, repl, server_time, _ = pipe.execute()
            replication = {master_label(client): repl}
            sec, usec = cast(tuple[int, int], server_time)
            server_ms = sec * 1000 + usec // 1000
        replicas = {name: online_replicas(info) for name, info in replication.items()}

        self._read_index()
        probed = self._probe_streams(server_ms)

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
            "replicas": replicas,
        }
        if isinstance(client, redis.RedisCluster):
            health["masters"] = masters
        measured = self._archive_lag(client)
        if self._archive is not None:
            health["archive"] = self._archive
        reading = BusReading(
            health=health,
            server_ms=server_ms,
            relay_lag={name: float(r["lag"]) for name, r in relays.items()},
            replicas={name: float(n) for name, n in replicas.items()},
            archive_lag=measured,
        )
        reading.idle_s = self._stalls(server_ms, stall_after_s, stalled, probed)
        return reading

    def _archive_lag(self, client: SyncClient) -> dict[str, float] | None:
        """The archive lag (``rpa_bus.redisio.archive_lag``, as ``rpa-bus status`` shows
        it) when due; the archiver does not run on a cluster, so neither does this."""
        now = time.monotonic()
        if isinstance(client, redis.RedisCluster) or now < self._archive_due:
            return None
        self._archive_due = now + self._archive_every_s
        lag = archive_lag(client, self._keys)
        if not lag.on:
            self._archive = None
            return {}
        self._archive = lag.as_dict()
        return {"": float(lag.lag)}

    def _cluster_info(
        self, client: redis.RedisCluster
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int, dict[str, Any]]:
        """INFO from every master (one pipeline each), summed; the first one's clock; each
        master's INFO replication by its ``host:port``."""
        totals: list[dict[str, Any]] = [
            {"used_memory": 0},
            {"connected_clients": 0},
            {"instantaneous_ops_per_sec": 0},
        ]
        server_ms = 0
        replication: dict[str, Any] = {}
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        for node in primaries:
            pipe = client.get_redis_connection(node).pipeline(transaction=False)
            pipe.info("memory")
            pipe.info("clients")
            pipe.info("stats")
            pipe.info("replication")
            pipe.time()
            *sections, repl, server_time = pipe.execute()
            replication[node.name] = repl
            for total, section in zip(totals, sections, strict=True):
                ((name, value),) = total.items()
                total[name] = value + int(section.get(name, 0))
            if not server_ms:
                sec, usec = cast(tuple[int, int], server_time)
                server_ms = sec * 1000 + usec // 1000
        return totals[0], totals[1], totals[2], server_ms, replication

    def _run_probe(self, keys: list[str]) -> tuple[list[Any], list[Any]]:
        """The probe script's reply for ``keys``: one call on one server, one per slot on
        a cluster (merged, indexes as if one call had covered every key)."""
        client = self._client
        if not isinstance(client, redis.RedisCluster):
            if self._script is None:
                self._script = client.register_script(PROBE_LUA)
            reply = cast(list[list[Any]], self._script(keys=keys, args=[self._relay_prefix]))
            return reply[0], reply[1]
        # redis-py's ClusterPipeline refuses EVALSHA, so: one plain pipeline per node,
        # one script call per slot in it.
        # Keyed by (slot, has a meta hash): the index or a monitor stream may share a
        # slot with a bucket by chance, and must not be probed for a meta hash.
        plain = (self._keys.sessions, self._monitor_key)
        by_slot: dict[tuple[int, bool], list[int]] = {}
        for i, key in enumerate(keys):
            slot = client.keyslot(key)  # type: ignore[no-untyped-call]
            by_slot.setdefault((slot, key not in plain), []).append(i)
        by_node: dict[str, tuple[Any, list[list[int]]]] = {}
        for indexes in by_slot.values():
            node = client.get_node_from_key(keys[indexes[0]])  # type: ignore[no-untyped-call]
            by_node.setdefault(node.name, (node, []))[1].append(indexes)
        merged: list[tuple[list[int], Any]] = []
        for node, groups_of_node in by_node.values():
            conn = client.get_redis_connection(node)
            for attempt in (1, 2):
                pipe = conn.pipeline(transaction=False)
                for indexes in groups_of_node:
                    slot_keys = [keys[i] for i in indexes]
                    has_meta = slot_keys[0] not in plain
                    pipe.evalsha(
                        PROBE_SHA,
                        len(slot_keys),
                        *slot_keys,
                        self._relay_prefix,
                        "1" if has_meta else "0",
                    )
                try:
                    replies = pipe.execute()
                    break
                except rx.NoScriptError:
                    if attempt == 2:
                        raise
                    # A new or restarted master (or a promoted replica) without it.
                    conn.script_load(PROBE_LUA)
            merged += zip(groups_of_node, replies, strict=True)
        updated: list[Any] = [b""] * len(keys)
        groups: list[Any] = []
        for indexes, (part_updated, part_groups) in merged:
            for j, value in enumerate(part_updated):
                updated[indexes[j]] = value
            for g in range(0, len(part_groups), 4):
                local, name, lag, pending = part_groups[g : g + 4]
                groups += [indexes[int(local) - 1] + 1, name, lag, pending]
        return updated, groups

    def load_alerts(self) -> dict[bytes, bytes]:
        """The alerts hash as a previous run of this host's monitor left it."""
        return cast(dict[bytes, bytes], self._client.hgetall(self.alerts_key))

    def save_alerts(self, fields: dict[str, bytes]) -> None:
        """Replace the alerts hash with ``fields`` (one MULTI: a reader never sees half)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self.alerts_key)
        if fields:
            pipe.hset(self.alerts_key, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()

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
            try:
                key = self._keys.session(sid)
            except InvalidSessionId:
                log.debug("skipping an index entry with a bad session id %r", sid)
                return
            self._running.pop(sid, None)  # a re-run moves to the end of the start order
            self._running[sid] = _Tracked(key, _ms_of(entry_id))
            self._probe_list = None
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
        tracked = self._running.pop(sid, None)
        if tracked is not None:
            self._relays.pop(tracked.key, None)
            self._probe_list = None

    def _probe_streams(self, server_ms: int) -> list[str]:
        """Refresh the last activity and relay groups of the next slice; return its sessions."""
        if self._probe_list is None:
            sids = list(self._running)
            keys = [self._running[sid].key for sid in sids]
            keys += [self._keys.sessions, self._monitor_key]
            self._probe_list = sids, keys
        sids, keys = self._probe_list
        every = len(sids) <= self._streams_per_tick
        if not every:
            # Round-robin: each sample probes the next slice, wrapping around.
            n, per = len(sids), self._streams_per_tick
            start = self._rr % n
            picked = [(start + i) % n for i in range(per)]
            self._rr = start + per
            sids = [sids[i] for i in picked]
            keys = [keys[i] for i in picked] + keys[n:]
        updated, groups = self._run_probe(keys)
        running = self._running
        for sid, value in zip(sids, updated, strict=False):  # `updated` also has 2 more
            tracked = running[sid]
            if value == tracked.updated:
                continue
            if tracked.updated is None:
                # First look: the session's own time of its last event. Afterwards, the
                # probe that saw the change, in server time, whatever the event's ts says
                # (a producer back from an outage writes old events now: it moves now).
                tracked.last_ms = max(tracked.last_ms, _iso_ms(value))
            else:
                tracked.last_ms = max(tracked.last_ms, server_ms)
            tracked.updated = value
        if every:
            self._relays = {}
        else:
            for key in keys:
                self._relays.pop(key, None)
        for i in range(0, len(groups), 4):
            index, name, lag, pending = groups[i : i + 4]
            relay = name.decode() if isinstance(name, bytes) else str(name)
            self._relays.setdefault(keys[int(index) - 1], {})[relay] = (int(lag), int(pending))
        return sids

    def _stalls(
        self,
        server_ms: int,
        stall_after_s: float,
        stalled: Collection[str],
        probed: list[str],
    ) -> dict[str, float]:
        # Only the sessions just probed are candidates: their last activity is fresh, and
        # the cost per sample stays bounded by streams_per_tick.
        running = self._running

        def idle_s(sid: str) -> float:
            return round(max(0.0, (server_ms - running[sid].last_ms) / 1000), 1)

        out = {sid: idle_s(sid) for sid in stalled if sid in running}
        cutoff = server_ms - stall_after_s * 1000
        candidates = [sid for sid in probed if running[sid].last_ms < cutoff and sid not in out][
            :CONFIRM_PER_TICK
        ]
        if not candidates:
            return out
        pipe = self._client.pipeline(transaction=False)
        for sid in candidates:
            pipe.hget(running[sid].key + ":meta", "status")
        for sid, status in zip(candidates, pipe.execute(), strict=True):
            if status == b"running":
                out[sid] = idle_s(sid)
            else:
                # Ended (or expired) without its end reaching the index: not stalled.
                self._forget(sid)
        return out
