"""Where web_fetch may connect: the check is made on each resolved address, inside the
HTTP client's connect, so a name that resolves to a private address (or a redirect to
one) is refused before any connection is made to it, and the address checked is the one
connected to (no second lookup a DNS rebinding could change)."""

from __future__ import annotations

import contextlib
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


# httpcore's errors, which httpx's own transport turns into httpx's of the same name (so
# callers catch `httpx.HTTPError`); this transport must do the same.
_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> typing.Iterator[None]:
    try:
        yield
    except _HTTPCORE_ERRORS as exc:
        kind = getattr(httpx, type(exc).__name__, httpx.TransportError)
        raise kind(str(exc) or type(exc).__name__, request=request) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over a connection pool that uses `GuardedBackend`. No proxy:
    a proxy would make the connection, so the check would be on the wrong address."""

    def __init__(self, allowed: Iterable[Network]) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=GuardedBackend(allowed)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, typing.AsyncIterable)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


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
    "GuardedTransport",
    "checked_address",
    "guarded_transport2",
    "refusal",
]
