"""Which Redis server a call goes to: one server, a Sentinel-watched service, or a Cluster.

The command client (a small pool) serves XRANGE pages, HGETALL, XGROUP and XACK. On a
Cluster a keyed MULTI runs on a client pinned to the master of the key's hash slot, from
redis-py's slot map (re-read after a call failed in a way a failover explains). CLIENT
UNBLOCK/KILL name a client id, which only means something on the server that issued it, so
with Sentinel and Cluster they go through clients pinned to one server too.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from rpa_bus.redisio import (
    GUARDED_FAILURES,
    Address,
    AsyncClient,
    NodeClient,
    SlotMap,
    is_retryable,
)


class Servers:
    """The relay's Redis servers and how to reach each."""

    def __init__(self, client: AsyncClient, node_client: NodeClient | None) -> None:
        self._cmd = client
        # Cluster: keyed commands go through the RedisCluster client; a reader per hash slot.
        self.cluster = client if isinstance(client, aioredis.RedisCluster) else None
        # Sentinel and Cluster: clients pinned to one server, made by ``node_client``, for
        # CLIENT UNBLOCK/KILL and the cluster readers. None (one server): the command client.
        self._node_client = node_client
        if self.cluster is not None and node_client is None:
            raise ValueError(
                "a Redis Cluster client needs node_client (rpa_bus.redisio.node_client_factory)"
            )
        self._controls: dict[Address, aioredis.Redis] = {}
        # The cluster's slot map, re-read before the next pinned call once a call failed.
        self._slots = SlotMap(self.cluster) if self.cluster is not None else None

    @property
    def client(self) -> AsyncClient:
        """The command client (on a cluster: the RedisCluster client)."""
        return self._cmd

    async def close(self) -> None:
        for control in self._controls.values():
            await control.aclose()
        self._controls.clear()

    async def ping(self) -> bool:
        """Whether Redis answers: the server, or on a cluster any master (one lost master
        is a partial outage of its slots, reported per slot, not the relay's)."""
        try:
            if self.cluster is None:
                return bool(await self._cmd.ping())
            await self.fresh_map()
        except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
            if not is_retryable(exc):
                raise
            return False
        for node in self.cluster.get_primaries():
            try:
                if await self.cluster.ping(target_nodes=node):
                    return True
            except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
                if not is_retryable(exc):
                    raise
                continue
        return False

    def command_client(self) -> aioredis.Redis:
        """The command client of a hub on one server (or a Sentinel-watched service)."""
        assert self.cluster is None
        return self._cmd  # type: ignore[return-value]

    def node_client(self, addr: Address, *, single: bool = False) -> aioredis.Redis:
        assert self._node_client is not None
        return self._node_client(addr, single=single)

    def address(self, conn: Any) -> Address | None:
        """The server a connection is on, when control commands must be pinned to it."""
        if self._node_client is None or conn is None:
            return None
        return (str(conn.host), int(conn.port))

    def pinned(self, addr: Address | None) -> aioredis.Redis:
        """A client (a small pool) of the server on ``addr``: for CLIENT UNBLOCK/KILL aimed
        at a reader connection there, and on a cluster for what must run on one node."""
        if self._node_client is None or addr is None:
            return self.command_client()
        client = self._controls.get(addr)
        if client is None:
            client = self._controls[addr] = self._node_client(addr)
        return client

    def slots_changed(self) -> None:
        """A call failed in a way a failover or a slot move explains: the next call pinned
        to a slot's master re-reads the slot map first."""
        if self._slots is not None:
            self._slots.mark_stale()

    async def slot_master(self, slot: int) -> Address:
        """The master serving ``slot``, from redis-py's slot map, re-read first if a call
        failed since (one refresh for all readers that failed together)."""
        assert self._slots is not None
        return await self._slots.master(slot)

    async def fresh_map(self) -> None:
        assert self._slots is not None
        await self._slots.fresh()

    async def slot_client(self, key: str) -> AsyncClient:
        """The client for a MULTI over one slot's keys: the command client, or on a cluster
        one pinned to the slot's master (redis-py's cluster transactions pass routing
        arguments into reply callbacks and fail on HGETALL and XRANGE)."""
        if self.cluster is None:
            return self._cmd
        return self.pinned(await self.slot_master(self.cluster.keyslot(key)))

    def slot(self, key: str) -> int | None:
        return None if self.cluster is None else self.cluster.keyslot(key)
