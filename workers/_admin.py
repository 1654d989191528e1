"""Operator actions on the webhook sender's Redis state (sync, for the CLI): pause and
resume an endpoint, replay dead letters, list dead letters, and each endpoint's backlog."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

from rpa_bus.redisio import SyncClient
from workers._outbox import REPLAY_LUA, WebhookKeys


def pause(client: SyncClient, keys: WebhookKeys, name: str) -> None:
    """Stop deliveries to ``name`` (every process, within about a second); events keep
    queuing in its outbox up to the backlog cap."""
    client.hset(keys.state(name), "paused", "1")


def resume(client: SyncClient, keys: WebhookKeys, name: str) -> None:
    client.hdel(keys.state(name), "paused")


def replay(
    client: SyncClient, keys: WebhookKeys, name: str, *, ids: list[str] | None = None,
    limit: int = 1000,
) -> int:  # fmt: skip
    """Move dead letters of ``name`` (the given ids, else the oldest ``limit``) back to the
    end of its outbox, same ``webhook-id``; returns how many moved."""
    script = client.register_script(REPLAY_LUA)
    moved = script(keys=[keys.dead(name), keys.outbox(name)], args=[limit, *(ids or [])])
    return int(cast(int, moved))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    webhook_id: str
    stream: str
    entry_id: str
    type: str
    attempts: int
    error: str
    at_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dead_letters(
    client: SyncClient, keys: WebhookKeys, name: str, *, limit: int = 100
) -> list[DeadLetter]:
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]],
                client.xrange(keys.dead(name), count=limit))  # fmt: skip
    found = []
    for oid, f in rows:
        at = f.get(b"at", b"")
        found.append(
            DeadLetter(
                id=oid.decode(),
                webhook_id=f.get(b"w", b"").decode(),
                stream=f.get(b"s", b"").decode(),
                entry_id=f.get(b"i", b"").decode(),
                type=f.get(b"t", b"").decode(),
                attempts=int(f.get(b"n", b"0") or 0),
                error=f.get(b"err", b"").decode(errors="replace"),
                at_ms=int(at) if at.isdigit() else None,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    name: str
    backlog: int
    dead: int
    paused: bool
    delivering: bool  # some process holds the lease
    last_error: str | None
    last_error_at_ms: int | None
    last_ok_at_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(value: bytes | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def endpoint_status(
    client: SyncClient, keys: WebhookKeys, names: list[str] | None = None
) -> list[EndpointStatus]:
    """Backlog (jobs in the outbox), dead letters, pause flag and last error per endpoint;
    ``names`` default to those running senders registered."""
    if names is None:
        members = cast(set[bytes], client.smembers(keys.endpoints))
        names = sorted(m.decode() for m in members)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xlen(keys.outbox(name))
        pipe.xlen(keys.dead(name))
        pipe.hgetall(keys.state(name))
        pipe.exists(keys.lease(name))
    replies = pipe.execute()
    rows = []
    for i, name in enumerate(names):
        backlog, dead, state, lease = replies[4 * i : 4 * i + 4]
        state = cast(dict[bytes, bytes], state)
        error = state.get(b"last_error")
        rows.append(
            EndpointStatus(
                name=name,
                backlog=int(backlog),
                dead=int(dead),
                paused=state.get(b"paused", b"") not in (b"", b"0"),
                delivering=bool(lease),
                last_error=error.decode(errors="replace") if error else None,
                last_error_at_ms=_ms(state.get(b"last_error_at")),
                last_ok_at_ms=_ms(state.get(b"last_ok_at")),
            )
        )
    return rows
