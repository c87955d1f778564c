"""Guarded fetching of request media (images, video, audio) named by URL.

Every URL a request names goes through `fetch_media`:
- `data:` URLs are decoded in place (size checked before decoding);
- `http(s)` URLs are fetched with a size cap, an overall deadline and a bounded number of redirects.
  Each connection's address is checked *after* DNS resolution, at connect time, so a redirect or a
  name that resolves to a private address cannot reach it: loopback, private, link-local (cloud
  metadata included), shared, reserved and multicast addresses are refused unless
  `allow_private` is set or the host is in `allowed_hosts` -- and so are IPv6 addresses that embed
  such an IPv4 address (NAT64, 6to4, IPv4-compatible, SIIT, mapped, Teredo);
- local paths (`file://` or a bare absolute path) only when `allowed_local_dir` is set, and only for
  files that resolve (symlinks followed) inside it.
Failures raise `MediaFetchError` with a message fit for the client and an HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpcore

from ..options import DEFAULTS as D

DEFAULT_MAX_BYTES = int(D.media_max_mb * 2**20)


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = D.media_timeout  # whole fetch, redirects included
    allow_private: bool = D.media_allow_private
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # exempt from the address check
    allowed_local_dir: Path | None = None
    max_redirects: int = 3


@dataclass(frozen=True)
class FetchedMedia:
    data: bytes
    content_type: str | None


class MediaFetchError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: IPv4-compatible (::/96,
# deprecated), SIIT IPv4-translated (::ffff:0:0:0/96) and NAT64 well-known (64:ff9b::/96). Through a
# translator they reach that IPv4 address, so it must be public too.
_EMBEDS_IPV4_LOW32 = tuple(ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96"))
# Local-use NAT64 (RFC 8215): the IPv4 address sits where the operator's prefix length puts it; refused.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address spells: mapped, compatible, SIIT, NAT64, 6to4, Teredo."""
    found = [ip.ipv4_mapped] if ip.ipv4_mapped is not None else []
    if any(ip in net for net in _EMBEDS_IPV4_LOW32):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    return found


def address_is_public(address: str) -> bool:
    """A global unicast address, and every IPv4 address it embeds is one too."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        embedded = embedded_ipv4(ip)
        if not all(v4.is_global and not v4.is_multicast for v4 in embedded):
            return False
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is that IPv4 address and nothing else
            return True
    return ip.is_global and not ip.is_multicast


async def fetch_media(url: str, policy: FetchPolicy) -> FetchedMedia:
    if not isinstance(url, str) or not url:
        raise MediaFetchError("media URL must be a non-empty string")
    if url.startswith("data:"):
        return decode_data_url(url, policy.max_bytes)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        try:
            async with asyncio.timeout(policy.timeout_s):
                return await _fetch_http(url, policy)
        except TimeoutError:
            raise MediaFetchError(f"fetching {_short(url)} took longer than {policy.timeout_s:g}s") from None
    if scheme == "file" or (scheme == "" and url.startswith("/")):
        return _read_local(url, policy)
    raise MediaFetchError(f"unsupported media URL scheme {scheme!r}: use data:, http: or https:")


def decode_data_url(url: str, max_bytes: int) -> FetchedMedia:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaFetchError("malformed data URL: no ',' after the media type")
    parts = header.split(";")
    content_type = parts[0] or None
    if "base64" in parts[1:]:
        if len(payload) * 3 // 4 > max_bytes + 3:
            raise _too_large(max_bytes)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaFetchError("malformed data URL: invalid base64 payload") from None
    else:
        data = unquote(payload).encode("latin-1", errors="replace")
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return FetchedMedia(data, content_type)


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself and connects only to addresses the policy allows."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise MediaFetchError(f"cannot resolve {host!r}")
        exempt = self.policy.allow_private or host.lower() in self.policy.allowed_hosts
        if not exempt:
            refused = [a for a in addresses if not address_is_public(a)]
            if refused:
                raise MediaFetchError(
                    f"media host {host!r} resolves to a non-public address ({refused[0]}); "
                    "fetching from loopback, private, link-local or metadata addresses is disabled"
                )
        return await self.inner.connect_tcp(
            addresses[0], port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def _fetch_http(url: str, policy: FetchPolicy) -> FetchedMedia:
    async with httpcore.AsyncConnectionPool(network_backend=_CheckedBackend(policy), retries=0) as pool:
        for _ in range(policy.max_redirects + 1):
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise MediaFetchError(f"redirect to a non-http(s) URL refused: {_short(url)}")
            try:
                async with pool.stream("GET", url, headers={"Accept": "*/*"}) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = _header(response, "location")
                        if not location:
                            raise MediaFetchError(f"redirect without a Location from {_short(url)}")
                        url = urljoin(url, location)
                        continue
                    if response.status != 200:
                        raise MediaFetchError(f"fetching {_short(url)} returned HTTP {response.status}")
                    declared = _header(response, "content-length")
                    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                        raise _too_large(policy.max_bytes)
                    chunks, size = [], 0
                    async for chunk in response.aiter_stream():
                        size += len(chunk)
                        if size > policy.max_bytes:
                            raise _too_large(policy.max_bytes)
                        chunks.append(chunk)
                    return FetchedMedia(b"".join(chunks), _header(response, "content-type"))
            except MediaFetchError:
                raise
            except (httpcore.UnsupportedProtocol, httpcore.LocalProtocolError) as exc:
                raise MediaFetchError(f"invalid media URL {_short(url)}: {exc}") from None
            except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.RemoteProtocolError, OSError) as exc:
                raise MediaFetchError(f"could not fetch {_short(url)}: {type(exc).__name__}") from None
    raise MediaFetchError(f"too many redirects (more than {policy.max_redirects})")


def _read_local(url: str, policy: FetchPolicy) -> FetchedMedia:
    root = policy.allowed_local_dir
    if root is None:
        raise MediaFetchError("local file media is disabled on this server")
    raw = unquote(urlsplit(url).path) if url.startswith("file:") else url
    path = Path(raw).resolve()
    if not path.is_relative_to(Path(root).resolve()):
        raise MediaFetchError("local media path is outside the allowed directory")
    if not path.is_file():
        raise MediaFetchError("local media file not found")
    if path.stat().st_size > policy.max_bytes:
        raise _too_large(policy.max_bytes)
    return FetchedMedia(path.read_bytes(), None)


def _header(response: httpcore.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.decode("latin-1").lower() == name:
            return value.decode("latin-1")
    return None


def _too_large(max_bytes: int) -> MediaFetchError:
    return MediaFetchError(f"media is larger than the {max_bytes}-byte limit", status=413)


def _short(url: str, limit: int = 80) -> str:
    return url if len(url) <= limit else url[:limit] + "..."
