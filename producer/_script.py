"""The idempotent append: one Lua script per (session, batch).

``KEYS``: the session stream, its meta hash, the sessions index stream.

``ARGV``: producer id, maxlen, retention ms, candidate epoch, now ms, index maxlen, then
five per event: seq, envelope bytes, state fields (JSON object of strings), index envelope
or ``""``, flag (``s`` started, ``t`` terminal, ``""`` neither).

The meta hash holds ``seq:<producer id>``, the highest sequence number applied from that
producer. An event is applied only if its seq is higher, so a batch re-sent after a lost
reply (the server applied it, the reply never came) is skipped, not written twice. The
script runs atomically, so for one session either all of a batch's events are applied or
none; sequence numbers grow per producer across all its sessions, so the check holds
whichever way batches were cut.

Redis semantics relied on:
- A script cannot be interrupted half-way by another client, and since Redis refuses an
  out-of-memory write only before a script's first write, a script that started writing
  runs to its end.
- ``XADD``/``HSET`` on a key keep its TTL; ``PERSIST`` on ``started`` clears the TTL a
  previous run's terminal event set, so a reused session id does not vanish mid-run.
- Lua numbers are doubles: sequence numbers stay exact up to 2^53.

On a cluster the index stream lives in another slot; splitting its ``XADD`` out into a
separate command is a change local to ``session_call()`` and the two index lines below.
"""

from __future__ import annotations

import hashlib
from typing import Final

APPEND_LUA: Final = """
local stream, meta, index = KEYS[1], KEYS[2], KEYS[3]
local seqfield = 'seq:' .. ARGV[1]
local maxlen, retention, index_maxlen = ARGV[2], ARGV[3], ARGV[6]
local stored = tonumber(redis.call('HGET', meta, seqfield) or '0')
redis.call('HSETNX', meta, 'epoch', ARGV[4])
redis.call('HSETNX', meta, 'created', ARGV[5])
local top = stored
local applied = 0
local state = {}
local expire = nil
for i = 7, #ARGV, 5 do
  local seq = tonumber(ARGV[i])
  if seq > top then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i + 1])
    for k, v in pairs(cjson.decode(ARGV[i + 2])) do state[k] = v end
    if ARGV[i + 3] ~= '' then
      redis.call('XADD', index, 'MAXLEN', '~', index_maxlen, '*', 'e', ARGV[i + 3])
    end
    local flag = ARGV[i + 4]
    if flag == 's' then expire = false elseif flag == 't' then expire = true end
    top = seq
    applied = applied + 1
  end
end
if applied > 0 then
  local fields = {seqfield, top}
  for k, v in pairs(state) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  redis.call('HSET', meta, unpack(fields))
  -- Only the last lifecycle flag of the batch counts: started then finished expires.
  if expire == true then
    redis.call('PEXPIRE', stream, retention)
    redis.call('PEXPIRE', meta, retention)
  elseif expire == false then
    redis.call('PERSIST', stream)
    redis.call('PERSIST', meta)
  end
end
return {applied, top}
"""

APPEND_SHA: Final = hashlib.sha1(APPEND_LUA.encode()).hexdigest()

# The sessions index holds two entries per session run; cap it like any stream.
INDEX_MAXLEN: Final = 100_000
