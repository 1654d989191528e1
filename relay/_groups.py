"""Our consumer group on each tailed stream, and the Lua scripts that make and drop it."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from relay._frames import ZERO_ID, Id, parse_id
from relay._servers import Servers

log = logging.getLogger(__name__)

# Begin tailing a key: a fresh group at "$" (dropping one a crashed run of this relay left
# behind, with its stale pending entries). MKSTREAM so a session that has not started yet
# can be tailed; its first XADD then goes live at once.
_CREATE_GROUP = """
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
return redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
"""

# Stop tailing a key: drop our group; if that leaves an empty stream nobody else reads and
# no session owns (no meta hash), delete it, so subscribing to a session that never starts
# leaves nothing behind. Atomic, so a producer's first XADD cannot slip in between.
_DROP_GROUP = """
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XLEN', KEYS[1]) == 0 then
  local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
  if #groups == 0 and (KEYS[2] == KEYS[1] or redis.call('EXISTS', KEYS[2]) == 0) then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
"""

# The same, returning the id of the stream's last entry (nil if none) at that instant:
# with ``min_replicas``, where replay may go until entries are known to be replicated.
_CREATE_GROUP_AT = """
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then
  return false
end
return last[1][1]
"""


class Groups:
    """Creates, drops and recreates the relay's group ``group`` on stream keys."""

    def __init__(
        self, servers: Servers, group: str, *, min_replicas: int = 0, wait_timeout_ms: int = 1000
    ) -> None:
        client = servers.client
        self.servers = servers
        self.group = group
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._create_group = client.register_script(_CREATE_GROUP)
        self._create_group_at = client.register_script(_CREATE_GROUP_AT)
        self._drop_group = client.register_script(_DROP_GROUP)

    async def create(self, key: str, slot: int | None) -> Id:
        """Create our group on ``key`` at "$"; return what is known to be replicated then
        (with ``min_replicas``; else ZERO_ID, which nothing needs)."""
        if self.min_replicas:
            return await self._create_replicated(key, slot)
        await self._create_group(keys=[key], args=[self.group])
        return ZERO_ID

    async def drop(self, key: str, meta: str | None) -> None:
        """Drop our group; delete the key if that leaves an empty stream nobody owns."""
        await self._drop_group(keys=[key, meta or key], args=[self.group])

    async def recreate(self, key: str) -> bool:
        """Create our group on ``key`` if it is gone (True), else leave it (False)."""
        try:
            await self.servers.client.xgroup_create(key, self.group, "$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        log.info("recreated group %s on %s", self.group, key)
        return True

    async def _create_replicated(self, key: str, slot: int | None) -> Id:
        """Create our group on ``key`` and return the id of its last entry then, once
        ``min_replicas`` replicas hold everything up to it (WAIT on the same connection:
        the script's group creation propagated after every earlier write). On a cluster
        that connection is one to the master serving the key's slot."""
        if slot is None:
            client: aioredis.Redis = self.servers.command_client()
        else:
            client = self.servers.pinned(await self.servers.slot_master(slot))
        async with client.pipeline(transaction=False) as pipe:
            await self._create_group_at(keys=[key], args=[self.group], client=pipe)
            pipe.execute_command("WAIT", self.min_replicas, self.wait_timeout_ms)
            last, acked = await pipe.execute()
        if int(acked) < self.min_replicas:
            raise RedisConnectionError(
                f"{acked} of {self.min_replicas} replicas acknowledged; replay waits for them"
            )
        return ZERO_ID if last is None else parse_id(last)
