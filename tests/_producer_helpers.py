"""Helpers shared by the producer tests (no tests here): read what landed in Redis."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from rpa_bus import Keys


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def events(r: redis.Redis, sid: str, keys: Keys | None = None) -> list[dict[str, Any]]:
    """The envelopes of a session stream, in stream order."""
    key = (keys or Keys()).session(sid)
    return [orjson.loads(fields[b"e"]) for _id, fields in r.xrange(key)]


def index(r: redis.Redis, keys: Keys | None = None) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"e"]) for _id, f in r.xrange((keys or Keys()).sessions)]


def meta(r: redis.Redis, sid: str, keys: Keys | None = None) -> dict[str, str]:
    raw = r.hgetall((keys or Keys()).meta(sid))
    return {k.decode(): v.decode() for k, v in raw.items()}
