"""Connection forms of ``RPA_BUS_REDIS_URL``, parsed without touching the network.

::

    redis://[user:pass@]host[:port][/db][?query]        one server
    rediss://...                                         one server over TLS
    unix://[user:pass@]/path/to/redis.sock[?db=N]        one server on a Unix socket
    redis+sentinel://[user:pass@]h1:26379,h2:26379/SERVICE[/DB]    Sentinel (rediss+: TLS)
    redis+cluster://[user:pass@]h1:7000,h2:7001                    Cluster (rediss+: TLS)

Single-server forms are passed to redis-py's ``from_url`` unchanged (it owns their
query options); Sentinel and Cluster forms are parsed here into hosts, credentials,
service and db, which the client factories (``rpa_bus.redisio``) hand to
redis-py's ``Sentinel(...).master_for(...)`` and ``RedisCluster(startup_nodes=...)``.
``user:pass`` is the data nodes' (masters and replicas); the sentinels themselves are
reached without credentials. Bad forms raise ``ConfigError`` naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import quote, unquote

from rpa_bus._errors import ConfigError

Topology = Literal["single", "sentinel", "cluster"]

DEFAULT_PORTS: Final = {"single": 6379, "sentinel": 26379, "cluster": 6379}
_SCHEMES: Final[dict[str, tuple[Topology, bool]]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the bus's Redis is: one server, a Sentinel-watched service, or a Cluster.

    ``url`` is the original text (for ``single``, what redis-py's ``from_url`` gets);
    ``hosts`` are the sentinels or the cluster's seed nodes (empty for ``single``).
    """

    topology: Topology
    url: str = field(compare=False)
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str | None = None
    db: int = 0

    def format(self) -> str:
        """The URL this target was parsed from, in canonical form (round-trips)."""
        if self.topology == "single":
            return self.url
        scheme = ("rediss+" if self.tls else "redis+") + self.topology
        auth = ""
        if self.username is not None or self.password is not None:
            auth = quote(self.username or "", safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = f"/{self.service}/{self.db}" if self.topology == "sentinel" else ""
        return f"{scheme}://{auth}{hosts}{path}"

    def redacted(self) -> str:
        """The URL without its password, for logs and errors."""
        return _safe(self.url)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``RPA_BUS_REDIS_URL``; raise ``ConfigError`` for a form rpa-bus cannot use."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"Redis URL must be a non-empty string, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"Redis URL {url!r} has no scheme: use {_forms()}")
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        raise ConfigError(f"unknown Redis URL scheme {scheme!r} in {_safe(url)}: use {_forms()}")
    topology, tls = kind
    if topology == "single":
        if scheme.lower() != "unix" and not rest.split("/", 1)[0].rpartition("@")[2]:
            raise ConfigError(f"Redis URL {_safe(url)} names no host")
        if scheme.lower() == "unix" and "/" not in rest:
            raise ConfigError(f"unix:// URL {_safe(url)} needs a socket path: unix:///path")
        return RedisTarget("single", url, tls=tls)
    if "?" in rest or "#" in rest:
        raise ConfigError(
            f"{scheme}:// URLs take no query or fragment (timeouts come from the settings): "
            f"{_safe(url)}"
        )
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) if user else None
        password = unquote(pw) if colon else None
    hosts = tuple(_host_port(part, DEFAULT_PORTS[topology], url) for part in netloc.split(","))
    service: str | None = None
    db = 0
    parts = path.split("/") if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if topology == "cluster":
        if parts:
            raise ConfigError(
                f"a cluster URL takes no path (a cluster has only db 0): {_safe(url)}; "
                "use redis+cluster://host:port,host:port"
            )
    else:
        if not parts or not parts[0]:
            raise ConfigError(
                f"a Sentinel URL needs the service name: {_safe(url)}; use "
                "redis+sentinel://host:26379,host:26379/SERVICE[/DB]"
            )
        if len(parts) > 2:
            raise ConfigError(f"a Sentinel URL ends in /SERVICE[/DB], got {_safe(url)}")
        service = unquote(parts[0])
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise ConfigError(f"database {parts[1]!r} in {_safe(url)} is not a number")
            db = int(parts[1])
    return RedisTarget(topology, url, tls, hosts, username, password, service, db)


def _host_port(part: str, default_port: int, url: str) -> tuple[str, int]:
    if not part:
        raise ConfigError(f"empty host in {_safe(url)}: list hosts as host:port,host:port")
    if part.startswith("["):  # IPv6: [::1]:7000
        host, bracket, tail = part[1:].partition("]")
        if not bracket or not host or (tail and not tail.startswith(":")):
            raise ConfigError(f"bad IPv6 host {part!r} in {_safe(url)}: use [addr]:port")
        port_text = tail[1:] if tail else ""
    else:
        host, colon, port_text = part.partition(":")
        if not host or ":" in port_text:
            raise ConfigError(f"bad host {part!r} in {_safe(url)}: use host:port")
        if colon and not port_text:
            raise ConfigError(f"host {part!r} in {_safe(url)} has an empty port")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad port {port_text!r} in {_safe(url)}: use 1..65535")
    return host, int(port_text)


def _safe(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _forms() -> str:
    return ", ".join(f"{s}://" for s in _SCHEMES)
