"""The ``P:config`` handshake: every part agrees with the deployment on the settings that
must match (the bucket count) before it reads or writes a stream.

The first writer's values win (HSETNX), then the stored hash is read back and compared by
the pure ``Keys.check_config``, which raises ``ConfigMismatch`` naming the value to use.
The producer folds the same commands into its first write's pipeline
(``config_commands`` + ``check_config_reply``); the other parts call ``check_config`` or
``check_config_async`` when they first reach Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpa_bus import Keys
from rpa_bus.redisio._clients import AsyncClient, SyncClient


def config_commands(keys: Keys) -> list[tuple[str, ...]]:
    """The commands of the handshake, in order; the last one's reply is the stored hash."""
    cmds: list[tuple[str, ...]] = [
        ("HSETNX", keys.config, name, value) for name, value in keys.config_fields().items()
    ]
    cmds.append(("HGETALL", keys.config))
    return cmds


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_config_reply(keys: Keys, stored: Mapping[Any, Any]) -> dict[str, str]:
    """Decode the HGETALL reply and check it; raise ``ConfigMismatch`` on disagreement."""
    decoded = {_text(k): _text(v) for k, v in stored.items()}
    keys.check_config(decoded)
    return decoded


def check_config(client: SyncClient, keys: Keys) -> dict[str, str]:
    """Run the handshake on a sync client (one round trip; ``P:config`` is one key, so one
    node on a cluster). Redis errors propagate for the caller's classifier."""
    pipe = client.pipeline(transaction=False)
    for cmd in config_commands(keys):
        pipe.execute_command(*cmd)
    return check_config_reply(keys, pipe.execute()[-1])


async def check_config_async(client: AsyncClient, keys: Keys) -> dict[str, str]:
    """Run the handshake on an asyncio client; as ``check_config``."""
    pipe = client.pipeline(transaction=False)
    for cmd in config_commands(keys):
        pipe.execute_command(*cmd)
    return check_config_reply(keys, (await pipe.execute())[-1])
