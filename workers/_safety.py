"""Where a webhook may connect: the address policy and the resolver that enforces it.

A webhook URL is chosen by whoever configures an endpoint, and the sender runs inside the
deployment's network: without a policy, ``http://169.254.169.254/`` reads a cloud
instance's credentials and ``http://10.0.0.5:6379/`` talks to an internal service. So
every address a delivery would connect to is checked, and addresses in loopback,
private, link-local, shared (CGNAT), multicast, reserved or unspecified ranges are
refused unless the endpoint sets ``allow_private``.

The check runs on the **resolved** address at connection time, inside the resolver the
HTTP client uses, and the client connects to exactly the addresses the check passed: a
name that resolves to a public address when checked and to 127.0.0.1 a moment later (DNS
rebinding) cannot slip between the check and the connect. If any address of a name is
refused, the whole name is refused (a mix of public and private answers is an attack or
a mistake, not something to half-use).
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named explicitly, although the generic flags below cover them: the addresses an attacker
# aims at first.
_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack metadata
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS metadata over IPv6
    }
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(OSError):
    """A delivery target resolved to an address the endpoint may not reach."""


def refusal(address: IPAddress | str) -> str | None:
    """Why ``address`` may not be reached without ``allow_private``; None if it may."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            reason = refusal(mapped)
            return None if reason is None else f"{reason} (as {ip})"
        if ip in _NAT64:
            return refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return f"{ip} is a shared (carrier-grade NAT) address"
    if ip.is_private:
        return f"{ip} is a private address"
    if ip.is_reserved or not ip.is_global:
        return f"{ip} is a reserved address"
    return None


def check_address(address: str, *, allow_private: bool) -> None:
    """Raise ``AddressRefused`` if ``address`` (an IP literal) may not be reached."""
    if allow_private:
        return
    reason = refusal(address)
    if reason is not None:
        raise AddressRefused(f"refused: {reason} (set allow_private to allow it)")


def ip_literal(host: str) -> str | None:
    """``host`` as an IP address string if it is one (``[::1]`` brackets removed)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class CheckingResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the name if any answer is refused.

    aiohttp connects to the addresses this returns and to no others (its DNS cache is
    turned off by the caller, so every new connection asks again).
    """

    def __init__(self, *, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            try:
                check_address(answer["host"], allow_private=self._allow_private)
            except AddressRefused as exc:
                raise AddressRefused(f"{host} resolves to {answer['host']}: {exc}") from None
        return answers

    async def close(self) -> None:
        await self._inner.close()
