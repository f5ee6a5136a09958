"""HTTP POSTs to addresses people typed in (webhooks), without letting them reach inside.

A webhook URL is chosen by a manager, but it is still a URL the server will call: pointed at
127.0.0.1:6379, 169.254.169.254 or a database on the private network, it would make batchadmin
a proxy into places the manager cannot reach (SSRF). So only http and https are allowed, and
the address the host name resolves to must be a public one, unless a setting allows private
ones (a test, or a Teams relay inside the company network). The check is made on the
addresses the connection really uses, at the time it connects, so a name that resolves to a
public address when saved and a private one later (DNS rebinding) is still refused. Redirects
are not followed: http.client never does.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("http", "https")


class Refused(ValueError):
    """The URL or the address it leads to is not allowed; the message says why."""


@dataclass
class Answer:
    status: int
    body: str  # the first KiB, for the delivery log


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse what can be told from the URL alone: the scheme, a missing host, an IP literal or
    a name (localhost) that is private. Names are checked again when the request is made."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise Refused(f"Only http and https URLs can be called, not {parts.scheme or 'this'!r}.")
    if not parts.hostname:
        raise Refused("The URL has no host name.")
    try:
        parts.port  # noqa: B018  # raises ValueError for a port out of range
    except ValueError:
        raise Refused("The URL's port is not a number from 1 to 65535.") from None
    if allow_private:
        return
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise Refused(f"{host} is this machine; private addresses are not allowed.")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked when it is resolved
    _check_address(address)


def _check_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        raise Refused(
            f"{address} is a private, loopback or reserved address; only public addresses "
            "are allowed (BATCH_WEBHOOK_ALLOW_PRIVATE allows others)."
        )


def _addresses(host: str, port: int, *, allow_private: bool) -> list[tuple[int, str]]:
    """(family, address) of every address ``host`` resolves to, each checked."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"Cannot resolve {host}: {exc.strerror}") from None
    found: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if not allow_private:
            _check_address(ipaddress.ip_address(address.split("%")[0]))
        found.append((family, address))
    return found


class _Checked:
    """Connects to the checked addresses of the host, in the order the resolver gave them."""

    host: str
    port: int
    timeout: float | None
    allow_private: bool

    def _open(self) -> socket.socket:
        error: OSError | None = None
        for family, address in _addresses(self.host, self.port, allow_private=self.allow_private):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect((address, self.port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error or OSError(f"No address to connect to for {self.host}")


class _HTTPConnection(_Checked, http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = self._open()


@functools.cache
def _tls() -> ssl.SSLContext:
    # Made on first use: loading the system's CA certificates is no cost for every process.
    return ssl.create_default_context()


class _HTTPSConnection(_Checked, http.client.HTTPSConnection):
    def connect(self) -> None:
        # The certificate is checked against the host name, not the address connected to.
        self.sock = _tls().wrap_socket(self._open(), server_hostname=self.host)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allow_private: bool,
) -> Answer:
    """POST ``body``; return the status and the start of the answer. Raises ``Refused`` for an
    address that is not allowed and ``OSError`` when the server cannot be reached."""
    check_url(url, allow_private=allow_private)
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection: _HTTPConnection | _HTTPSConnection
    if parts.scheme == "https":
        connection = _HTTPSConnection(host, parts.port or 443, timeout=timeout)
    else:
        connection = _HTTPConnection(host, parts.port or 80, timeout=timeout)
    connection.allow_private = allow_private
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read(1024).decode("utf-8", "replace")
        return Answer(response.status, text)
    except http.client.HTTPException as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
