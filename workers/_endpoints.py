"""Webhook endpoints: what a file says, checked strictly, and how ``add``/``remove`` write it.

The file is TOML, one table per endpoint under ``[endpoints.NAME]``::

    [endpoints.ops-chat]
    url = "https://hooks.example.com/rpa"
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    streams = ["session:*"]              # fnmatch patterns on client-facing stream names
    events = ["failed", "alert"]         # event types; ["*"] (the default) = every type
    rate_per_s = 5.0                     # optional: at most this many deliveries a second
    timeout_s = 10.0                     # optional: connect + read bound of one attempt
    max_attempts = 10                    # optional: tries before the dead-letter stream
    allow_http = false                   # plain http:// only with this set
    allow_private = false                # loopback/private/link-local targets only with this

An unknown key, a bad URL, a missing or malformed secret is a ``ConfigError`` naming the
endpoint and the key: a webhook sender must not start on a half-understood file.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import os
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rpa_bus import ConfigError

SECRET_PREFIX = "whsec_"
# The Standard Webhooks specification: secrets are 24 to 64 random bytes, base64-encoded.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EVENT = re.compile(r"\*|[a-z][a-z0-9_.-]{0,63}")
_STREAM_PATTERN = re.compile(r"[A-Za-z0-9_.:*?\[\]!-]{1,200}")
_KEYS = frozenset(
    {
        "url",
        "secret",
        "streams",
        "events",
        "rate_per_s",
        "timeout_s",
        "max_attempts",
        "allow_http",
        "allow_private",
    }
)
DEFAULT_STREAMS: tuple[str, ...] = ("session:*",)
DEFAULT_EVENTS: tuple[str, ...] = ("*",)


def new_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes, base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: object, where: str) -> str:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"{where}: secret must be a string starting with {SECRET_PREFIX!r}")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        # Never echo the secret itself.
        raise ConfigError(f"{where}: secret is not valid base64 after {SECRET_PREFIX!r}") from exc
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"{where}: secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, "
            f"has {len(raw)} (make one with `rpa-bus webhooks add` or new_secret())"
        )
    return secret


def check_url(url: object, where: str, *, allow_http: bool) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be a string")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{where}: bad url {url!r}: {exc}") from exc
    if parts.scheme not in ("https", "http"):
        raise ConfigError(f"{where}: url {url!r} must be https:// (or http:// with allow_http)")
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(f"{where}: url {url!r} is plain http; set allow_http = true to allow it")
    if not parts.hostname:
        raise ConfigError(f"{where}: url {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: url {url!r} must not carry credentials")
    if parts.fragment:
        raise ConfigError(f"{where}: url {url!r} must not have a #fragment")
    if port == 0:
        raise ConfigError(f"{where}: url {url!r} has port 0")
    return url


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One receiver. ``secret`` never appears in ``repr`` or in ``public()``."""

    name: str
    url: str
    secret: str = field(repr=False)
    streams: tuple[str, ...] = DEFAULT_STREAMS
    events: tuple[str, ...] = DEFAULT_EVENTS
    rate_per_s: float | None = None
    timeout_s: float = 10.0
    max_attempts: int = 10
    allow_http: bool = False
    allow_private: bool = False

    def __post_init__(self) -> None:
        where = f"endpoint {self.name!r}"
        if not isinstance(self.name, str) or _NAME.fullmatch(self.name) is None:
            raise ConfigError(f"endpoint name {self.name!r}: use 1 to 64 of A-Z a-z 0-9 _ . -")
        check_url(self.url, where, allow_http=self.allow_http)
        check_secret(self.secret, where)
        if not self.streams:
            raise ConfigError(f"{where}: streams must name at least one pattern")
        for pattern in self.streams:
            if not isinstance(pattern, str) or _STREAM_PATTERN.fullmatch(pattern) is None:
                raise ConfigError(f"{where}: bad stream pattern {pattern!r}")
        if not self.events:
            raise ConfigError(f"{where}: events must name at least one type (or '*')")
        for event in self.events:
            if not isinstance(event, str) or _EVENT.fullmatch(event) is None:
                raise ConfigError(f"{where}: bad event type {event!r}")
        if self.rate_per_s is not None and not 0 < self.rate_per_s <= 100_000:
            raise ConfigError(f"{where}: rate_per_s must be in (0, 100000], got {self.rate_per_s}")
        if not 0.01 <= self.timeout_s <= 300:
            raise ConfigError(f"{where}: timeout_s must be in [0.01, 300], got {self.timeout_s}")
        if not 1 <= self.max_attempts <= 100:
            raise ConfigError(f"{where}: max_attempts must be in 1..100, got {self.max_attempts}")

    def matches(self, stream: str, event_type: str) -> bool:
        """True if an event of ``event_type`` on ``stream`` goes to this endpoint."""
        if "*" not in self.events and event_type not in self.events:
            return False
        return any(fnmatch.fnmatchcase(stream, p) for p in self.streams)

    def public(self) -> dict[str, Any]:
        """Everything but the secret: what ``list`` shows."""
        return {
            "name": self.name,
            "url": self.url,
            "streams": list(self.streams),
            "events": list(self.events),
            "rate_per_s": self.rate_per_s,
            "timeout_s": self.timeout_s,
            "max_attempts": self.max_attempts,
            "allow_http": self.allow_http,
            "allow_private": self.allow_private,
        }


def _strings(value: object, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _number(value: object, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} must be a number")
    return float(value)


def endpoint_from_table(name: str, table: Mapping[str, Any]) -> Endpoint:
    where = f"endpoint {name!r}"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {sorted(_KEYS)}")
    if "url" not in table:
        raise ConfigError(f"{where}: url is missing")
    if "secret" not in table:
        raise ConfigError(f"{where}: secret is missing")
    kwargs: dict[str, Any] = {"name": name, "url": table["url"], "secret": table["secret"]}
    for key in ("allow_http", "allow_private"):
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{where}: {key} must be true or false")
            kwargs[key] = table[key]
    for key in ("streams", "events"):
        if key in table:
            kwargs[key] = _strings(table[key], where, key)
    for key in ("rate_per_s", "timeout_s"):
        if key in table:
            kwargs[key] = _number(table[key], where, key)
    if "max_attempts" in table:
        value = table["max_attempts"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: max_attempts must be a whole number")
        kwargs["max_attempts"] = value
    return Endpoint(**kwargs)


def parse_endpoints(text: str, *, source: str = "<text>") -> list[Endpoint]:
    """The endpoints a TOML document declares; ``ConfigError`` naming what is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"endpoints"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(unknown)}")
    tables = doc.get("endpoints", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: `endpoints` must be a table of [endpoints.NAME] tables")
    found: list[Endpoint] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: endpoints.{name} must be a table")
        try:
            found.append(endpoint_from_table(name, table))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    return found


def load_endpoints(path: Path) -> list[Endpoint]:
    """Read and check the endpoints file; a missing file is an error (name it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"webhooks file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"webhooks file {path} cannot be read: {exc}") from exc
    return parse_endpoints(text, source=str(path))


def _toml_value(value: object) -> str:
    # JSON strings, numbers, booleans and arrays of strings are valid TOML values.
    return json.dumps(value, ensure_ascii=False)


def dump_endpoints(endpoints: Iterable[Endpoint]) -> str:
    """The TOML text for ``endpoints``: what ``add`` and ``remove`` write."""
    lines = ["# rpa-bus webhook endpoints (see docs/webhooks.md). Holds secrets: keep it 0600.", ""]
    for ep in endpoints:
        lines.append(f"[endpoints.{_toml_value(ep.name)}]")
        lines.append(f"url = {_toml_value(ep.url)}")
        lines.append(f"secret = {_toml_value(ep.secret)}")
        lines.append(f"streams = {_toml_value(list(ep.streams))}")
        lines.append(f"events = {_toml_value(list(ep.events))}")
        if ep.rate_per_s is not None:
            lines.append(f"rate_per_s = {_toml_value(ep.rate_per_s)}")
        lines.append(f"timeout_s = {_toml_value(ep.timeout_s)}")
        lines.append(f"max_attempts = {_toml_value(ep.max_attempts)}")
        lines.append(f"allow_http = {_toml_value(ep.allow_http)}")
        lines.append(f"allow_private = {_toml_value(ep.allow_private)}")
        lines.append("")
    return "\n".join(lines)


def write_endpoints(path: Path, endpoints: Sequence[Endpoint]) -> None:
    """Replace the file atomically (write a sibling, fsync, rename), mode 0600."""
    text = dump_endpoints(endpoints)
    parse_endpoints(text, source="generated")  # what we write must read back
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def add_endpoint(path: Path, endpoint: Endpoint, *, replace_existing: bool = False) -> None:
    """Add ``endpoint`` to the file (created if missing); an existing name is an error
    unless ``replace_existing``."""
    current = load_endpoints(path) if path.exists() else []
    if any(ep.name == endpoint.name for ep in current) and not replace_existing:
        raise ConfigError(f"endpoint {endpoint.name!r} already exists in {path}")
    kept = [ep for ep in current if ep.name != endpoint.name]
    write_endpoints(path, [*kept, endpoint])


def remove_endpoint(path: Path, name: str) -> None:
    current = load_endpoints(path)
    if not any(ep.name == name for ep in current):
        raise ConfigError(f"no endpoint {name!r} in {path}")
    write_endpoints(path, [ep for ep in current if ep.name != name])
