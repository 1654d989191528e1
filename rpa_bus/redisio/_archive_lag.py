"""How far the archive is behind Redis, read from Redis alone (``P:archiver``'s groups), so
it shows also when no archiver runs. ``rpa-bus status`` prints it; the monitor alerts on
it (``archive_lag`` rule)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

from rpa_bus import Keys
from rpa_bus.redisio._clients import SyncClient

# What redis-py returns for XRANGE on a client without decode_responses.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class ArchiveLag:
    """How far the archive is behind Redis: entries not yet stored, over all streams."""

    on: bool  # P:config archive=1
    lag: int  # pending in P:archiver plus not yet delivered (whole stream if no group yet)
    streams: int  # streams looked at
    behind: int  # of which with lag > 0
    capped: bool  # more streams exist than were looked at

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def archive_lag(client: SyncClient, keys: Keys, *, max_streams: int = 10_000) -> ArchiveLag:
    """The archive lag as Redis shows it (so it counts also when no archiver runs): for
    every session stream and the index, the group ``P:archiver``'s pending entries plus
    those not yet delivered, or the stream's length where the group does not exist yet.
    Bounded: at most ``max_streams`` streams (SCAN + one pipelined XINFO GROUPS each)."""
    config = cast(dict[bytes, bytes], client.hgetall(keys.config))
    on = Keys.archive_on({k.decode(): v.decode() for k, v in config.items()})
    group = keys.worker_group("archiver")
    names: list[str] = [keys.sessions] if client.exists(keys.sessions) else []
    capped = False
    for key in client.scan_iter(match=f"{keys.prefix}:{{*}}:session:*", count=1000, _type="stream"):
        if len(names) >= max_streams:
            capped = True
            break
        names.append(key.decode() if isinstance(key, bytes) else str(key))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xinfo_groups(name)
        pipe.xlen(name)
    replies = pipe.execute(raise_on_error=False)
    total = behind = 0
    for i, name in enumerate(names):
        groups, length = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups, BaseException) or isinstance(length, BaseException):
            continue
        mine = next((g for g in groups if _text(g.get("name")) == group), None)
        if mine is None:
            lag = int(length)
        elif mine.get("lag") is not None:
            lag = int(mine.get("pending", 0)) + int(mine["lag"])
        else:  # Redis < 7, or entries deleted inside the range: count what is undelivered
            after = "(" + _text(mine.get("last-delivered-id"))
            rest = cast(_Entries, client.xrange(name, after, "+", count=100_000))
            lag = int(mine.get("pending", 0)) + len(rest)
        total += lag
        behind += lag > 0
    return ArchiveLag(on=on, lag=total, streams=len(names), behind=behind, capped=capped)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
