"""The idempotent append: one Lua script per (session, batch), shared by every part that
appends (the producer, the relay's HTTP publish).

``KEYS``: the session stream, its meta hash, then on one server the sessions index stream
and the ``P:config`` hash; on a cluster, where the index and ``P:config`` live in other
slots, only the bucket's flag hash ``P:{B}:config`` (three keys, all in the bucket's slot),
and the index entries go to ``ONCE_LUA`` instead. The script tells the third and fourth
keys apart by name (a flag hash ends in ``:config``), so every layout a caller of any
version sends works: two keys (a cluster caller without the flag), three (one server
without the flag, or a cluster with it), four (one server).

``ARGV``: producer id, maxlen, retention ms, candidate epoch, now ms, index maxlen, the
folded state fields of the call's events (one JSON object of strings, merged in order),
then two per event: the seq (for ``started``/``finished``/``failed``: ``seq|s`` or ``seq|t``
followed by the index envelope) and the envelope bytes.

The meta hash holds ``seq:<producer id>``, the highest sequence number applied from that
producer. An event is applied only if its seq is higher, so a batch re-sent after a lost
reply (the server applied it, the reply never came) is skipped, not written twice. The
script runs atomically, so for one session either all of a batch's events are applied or
none; sequence numbers grow per producer across all its sessions, so the check holds
whichever way batches were cut.

The folded state is merged client-side per call (one ``cjson.decode`` and one ``HSET`` per
call instead of per event) and written when at least one event of the call is new. Only a
call that is applied in part (a journal replayed with other batch boundaries than the lost
attempt) writes fields of already-applied events again; with a second producer writing the
same session in between, such a field may step back until the next event.

Redis semantics relied on:
- A script cannot be interrupted half-way by another client, and since Redis refuses an
  out-of-memory write only before a script's first write, a script that started writing
  runs to its end.
- ``XADD``/``HSET`` on a key keep its TTL; ``PERSIST`` on ``started`` clears the TTL a
  previous run's terminal event set, so a reused session id does not vanish mid-run.
- Lua numbers are doubles: sequence numbers stay exact up to 2^53.

- WAIT counts a connection's last *propagated* write. A retry whose events were all
  applied by a lost attempt writes nothing, so its WAIT would return at once, proving
  nothing about that attempt; the script then rewrites the producer's ``seq:`` field (same
  value), so WAIT covers everything applied so far (``min_replicas``).

With the archive on (``P:config`` ``archive=1``) the script neither trims the stream or
the index nor expires a finished session's keys. It reads the flag itself, on every call
(so a producer started before the first archiver obeys it at once): on one server from
``P:config``, on a cluster from the bucket's copy ``P:{B}:config``, which the archiver
writes into every bucket before ``P:config`` (docs/contract.md, "The archive flag on a
cluster"). A producer whose handshake saw the flag also passes maxlen, retention and
index maxlen as ``0`` (``trim_args``). The archiver trims and expires once it has stored
the entries, so Redis grows while an archiver lags instead of losing what is not archived
yet.
"""

from __future__ import annotations

import hashlib
from typing import Final

APPEND_LUA: Final = """
local stream, meta = KEYS[1], KEYS[2]
local index, flag = nil, nil
-- KEYS[3..]: the index (one server) and the archive flag's hash, told apart by name.
for i = 3, #KEYS do
  if string.sub(KEYS[i], -7) == ':config' then flag = KEYS[i] else index = KEYS[i] end
end
local seqfield = 'seq:' .. ARGV[1]
local maxlen, retention, index_maxlen = ARGV[2], ARGV[3], ARGV[6]
if flag and redis.call('HGET', flag, 'archive') == '1' then
  maxlen, retention, index_maxlen = '0', '0', '0'  -- the archiver trims and expires
end
local stored = tonumber(redis.call('HGET', meta, seqfield) or '0')
redis.call('HSETNX', meta, 'epoch', ARGV[4])
redis.call('HSETNX', meta, 'created', ARGV[5])
local top = stored
local applied = 0
local expire = nil
for i = 8, #ARGV, 2 do
  local head = ARGV[i]
  local bar = string.find(head, '|', 1, true)
  local seq = tonumber(bar and string.sub(head, 1, bar - 1) or head)
  if seq > top then
    redis.call('XADD', stream, '*', 'e', ARGV[i + 1])
    if bar then
      if index and index_maxlen == '0' then
        redis.call('XADD', index, '*', 'e', string.sub(head, bar + 2))
      elseif index then
        redis.call('XADD', index, 'MAXLEN', '~', index_maxlen, '*', 'e', string.sub(head, bar + 2))
      end
      -- Only the batch's last lifecycle event counts: started then finished expires.
      expire = string.sub(head, bar + 1, bar + 1) == 't'
    end
    top = seq
    applied = applied + 1
  end
end
if applied > 0 then
  -- Trimmed once per call rather than per XADD: the same cap, fewer arguments per event.
  if maxlen ~= '0' then
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  end
  local fields = {seqfield, top}
  for k, v in pairs(cjson.decode(ARGV[7])) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  redis.call('HSET', meta, unpack(fields))
  if expire == true and retention ~= '0' then
    redis.call('PEXPIRE', stream, retention)
    redis.call('PEXPIRE', meta, retention)
  elseif expire == false then
    redis.call('PERSIST', stream)
    redis.call('PERSIST', meta)
  end
elseif stored > 0 then
  -- Nothing new: a retry after a lost reply. Propagate one no-op write so that a WAIT
  -- after this call covers what the lost attempt applied.
  redis.call('HSET', meta, seqfield, stored)
end
return {applied, top}
"""

APPEND_SHA: Final = hashlib.sha1(APPEND_LUA.encode()).hexdigest()

# Any stream outside a session (monitor samples and alerts, ``publish("sessions", ...)``,
# and on a cluster the sessions index entries): appended once, deduplicated like the
# append. KEYS: the stream, the producer's sidecar for it (``seen_key``: its hash tag is the
# stream's name, so both are in one slot). ARGV: the trim strategy (``MINID`` or
# ``MAXLEN``) and its threshold, the sidecar's ttl in ms, then seq and envelope per event,
# seq ascending. The sidecar holds the highest seq appended and expires after the
# retention period (a producer silent that long starts anew). An optional third key, for
# the sessions index only, is the archive flag's hash in the stream's slot (``P:config`` on
# one server, ``P:{P:sessions}:config`` on a cluster): with ``archive=1`` nothing is trimmed
# whatever the caller's cap.
ONCE_LUA: Final = """
local stream, seen = KEYS[1], KEYS[2]
local cap = ARGV[2]
if KEYS[3] and redis.call('HGET', KEYS[3], 'archive') == '1' then
  cap = '0'  -- the archive flag's hash in the stream's slot says the archive is on
end
local top = tonumber(redis.call('GET', seen) or '0')
local applied = 0
for i = 4, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > top and cap == '0' then  -- no cap: the archive is on, the archiver trims
    redis.call('XADD', stream, '*', 'e', ARGV[i + 1])
    top = seq
    applied = applied + 1
  elseif seq > top then
    redis.call('XADD', stream, ARGV[1], '~', cap, '*', 'e', ARGV[i + 1])
    top = seq
    applied = applied + 1
  end
end
-- Written even when nothing is new, like the append: WAIT then covers a lost attempt.
redis.call('SET', seen, top, 'PX', ARGV[3])
return applied
"""

ONCE_SHA: Final = hashlib.sha1(ONCE_LUA.encode()).hexdigest()

SCRIPTS: Final = (APPEND_LUA, ONCE_LUA)

# The sessions index holds two entries per session run; cap it like any stream. Plain
# (non-monitor) streams written through ``publish`` get the same cap.
INDEX_MAXLEN: Final = 100_000


def seen_key(prefix: str, key: str, producer_id: str) -> str:
    """The sidecar of ``ONCE_LUA`` for a stream key and producer (same slot)."""
    return f"{prefix}:{{{key}}}:seen:{producer_id}"


def trim_args(maxlen: int, retention_ms: int, *, archive: bool) -> tuple[int, int, int]:
    """The scripts' caps: (stream maxlen, retention ms, index maxlen); all ``0`` (no trim,
    no expiry) with the archive on, whose archiver trims and expires after storing."""
    return (0, 0, 0) if archive else (maxlen, retention_ms, INDEX_MAXLEN)
