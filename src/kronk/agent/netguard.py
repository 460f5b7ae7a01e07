"""Where web_fetch may connect: the check is made on each resolved address, inside the
HTTP client's connect, so a name that resolves to a private address (or a redirect to
one) is refused before any connection is made to it, and the address checked is the one
connected to (no second lookup a DNS rebinding could change)."""

from __future__ import annotations

import ipaddress
import socket
import typing
from collections.abc import Iterable

import anyio
import httpcore
import httpcore2
import httpx
import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services (AWS/GCP/Azure/OpenStack at 169.254.169.254, AWS's IPv6 one,
# Alibaba's): named apart so the refusal says what they are.
METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}


class AddressRefused(Exception):
    """A fetch would connect to an address that is not public (and not allow-listed)."""


def refusal(address: IPAddress, allowed: Iterable[Network]) -> str | None:
    """Why `address` may not be fetched from, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(address in net for net in allowed):
        return None
    if address in METADATA:
        return f"{address} is a cloud metadata address"
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_private or address.is_reserved or address.is_unspecified:
        return f"{address} is a private or reserved address"
    if address.is_multicast or not address.is_global:
        return f"{address} is not a public address"
    return None


async def checked_address(host: str, port: int, allowed: Iterable[Network]) -> str:
    """The address to connect to for `host`, once every address it resolves to passed."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise AddressRefused(f"{host} did not resolve")
    # Every address the name has must pass: else a name with one public and one
    # private address would be a way in.
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            raise AddressRefused(f"refused to connect to {host}: {reason}")
    return str(addresses[0])


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving and checking every address before connecting."""

    def __init__(self, allowed: Iterable[Network]) -> None:
        self._allowed = list(allowed)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await checked_address(host, port, self._allowed)
        return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(allowed: Iterable[Network]) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection passes the address check. No proxy: a
    proxy would make the connection, so the check would be on the wrong address. httpx's
    own transport, so httpcore's errors become httpx's as usual."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx's transport takes no network backend: its pool is replaced by one that has it.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=GuardedBackend(allowed),
    )
    return transport


class GuardedBackend2(httpcore2.AsyncNetworkBackend):
    """`GuardedBackend` for httpcore2, under the httpx2 client the mcp SDK speaks HTTP
    with (remote MCP servers a request names)."""

    def __init__(self, allowed: Iterable[Network]) -> None:
        self._allowed = list(allowed)
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        address = await checked_address(host, port, self._allowed)
        return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not reached")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport2(allowed: Iterable[Network]) -> httpx2.AsyncHTTPTransport:
    """An httpx2 transport whose every connection passes the address check (no proxy)."""
    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    # httpx2's transport takes no network backend: its pool is replaced by one that has it.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False),
        network_backend=GuardedBackend2(allowed),
    )
    return transport


__all__ = [
    "METADATA",
    "AddressRefused",
    "GuardedBackend",
    "GuardedBackend2",
    "checked_address",
    "guarded_transport",
    "guarded_transport2",
    "refusal",
]
