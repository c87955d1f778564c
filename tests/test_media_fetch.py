"""The guarded media fetcher against real local HTTP servers."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vllm_mlx.media.fetch import FetchPolicy, MediaFetchError, address_is_public, fetch_media

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        routes = {
            "/image.png": (200, {"Content-Type": "image/png"}, PNG_BYTES),
            "/to-localhost": (302, {"Location": f"http://localhost:{port}/image.png"}, b""),
            "/relative": (302, {"Location": "/image.png"}, b""),
            "/to-ftp": (302, {"Location": "ftp://127.0.0.1/x"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/missing": (404, {}, b"nope"),
        }
        if self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while streaming
            for _ in range(64):
                self.wfile.write(b"x" * 65536)
            return
        if self.path == "/slow":
            time.sleep(3)
        status, headers, body = routes.get(self.path, (200, {}, b"late"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def media_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetch(url, **policy):
    return asyncio.run(fetch_media(url, FetchPolicy(**policy)))


def error_of(url, **policy) -> MediaFetchError:
    with pytest.raises(MediaFetchError) as info:
        fetch(url, **policy)
    return info.value


def test_public_address_classification():
    assert address_is_public("93.184.216.34")
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.169.254", "100.100.100.200",
                    "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "224.0.0.1"):
        assert not address_is_public(address), address


def test_loopback_is_refused_by_default(media_server):
    error = error_of(f"{media_server}/image.png")
    assert error.status == 400 and "non-public address" in error.message


def test_metadata_address_is_refused():
    error = error_of("http://169.254.169.254/latest/meta-data/", timeout_s=2)
    assert "non-public address" in error.message


def test_allowed_when_private_addresses_are_enabled(media_server):
    media = fetch(f"{media_server}/image.png", allow_private=True)
    assert media.data == PNG_BYTES and media.content_type == "image/png"
    assert fetch(f"{media_server}/relative", allow_private=True).data == PNG_BYTES


def test_redirect_is_checked_again(media_server):
    # the first host is exempt by name; the redirect target resolves to loopback and is not
    error = error_of(f"{media_server}/to-localhost", allowed_hosts=frozenset({"127.0.0.1"}))
    assert "'localhost'" in error.message and "non-public" in error.message
    assert fetch(f"{media_server}/to-localhost", allowed_hosts=frozenset({"127.0.0.1", "localhost"})).data == PNG_BYTES


def test_redirect_limits(media_server):
    assert "non-http(s)" in error_of(f"{media_server}/to-ftp", allow_private=True).message
    assert "too many redirects" in error_of(f"{media_server}/loop", allow_private=True).message


def test_size_cap_while_streaming(media_server):
    error = error_of(f"{media_server}/big", allow_private=True, max_bytes=1_000_000)
    assert error.status == 413
    assert len(fetch(f"{media_server}/big", allow_private=True, max_bytes=8_000_000).data) == 64 * 65536


def test_deadline_and_http_errors(media_server):
    started = time.monotonic()
    error = error_of(f"{media_server}/slow", allow_private=True, timeout_s=0.5)
    assert "longer than 0.5s" in error.message and time.monotonic() - started < 2.5
    assert "HTTP 404" in error_of(f"{media_server}/missing", allow_private=True).message


def test_schemes_and_unresolvable_hosts():
    assert "unsupported media URL scheme 'ftp'" in error_of("ftp://example.com/a.png").message
    assert "could not fetch" in error_of("http://no-such-host.invalid/a.png").message or \
        "cannot resolve" in error_of("http://no-such-host.invalid/a.png").message


def test_data_urls():
    url = "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode()
    media = fetch(url)
    assert media.data == PNG_BYTES and media.content_type == "image/png"
    assert "invalid base64" in error_of("data:image/png;base64,@@@not-base64").message
    assert "no ','" in error_of("data:image/png;base64").message
    assert error_of(url, max_bytes=100).status == 413


def test_local_files_only_inside_the_allowed_directory(tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(PNG_BYTES)
    (tmp_path / "secret.txt").write_text("secret")
    (allowed / "escape.png").symlink_to(tmp_path / "secret.txt")
    assert "disabled" in error_of(str(allowed / "a.png")).message
    assert fetch(str(allowed / "a.png"), allowed_local_dir=allowed).data == PNG_BYTES
    assert fetch(f"file://{allowed}/a.png", allowed_local_dir=allowed).data == PNG_BYTES
    for outside in (f"{allowed}/../secret.txt", str(allowed / "escape.png")):
        assert "outside the allowed directory" in error_of(outside, allowed_local_dir=allowed).message


# -- IPv6 spellings of IPv4 addresses (NAT64, 6to4, IPv4-compatible, SIIT, mapped, Teredo) ---------------
METADATA = "169.254.169.254"
EMBEDDED_PRIVATE = [
    "64:ff9b::a9fe:a9fe", "64:ff9b::169.254.169.254", "64:ff9b::7f00:1", "64:ff9b::a00:1",  # NAT64 well-known
    "64:ff9b:1::a9fe:a9fe", "64:ff9b:1:a9fe:a900:fe00::",  # local-use NAT64, any prefix length
    "2002:a9fe:a9fe::1", "2002:7f00:1::", "2002:c0a8:101::1",  # 6to4
    "::a9fe:a9fe", "::127.0.0.1", "::10.1.2.3",  # IPv4-compatible
    "::ffff:0:a9fe:a9fe", "::ffff:0:7f00:1", "::ffff:0:c0a8:101",  # SIIT IPv4-translated
    "::ffff:a9fe:a9fe", "::ffff:10.0.0.1",  # IPv4-mapped
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (client 192.0.2.45)
]
EMBEDDED_PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:0:808:808", "::ffff:8.8.8.8"]


class _NoTraffic:
    """Stands in for the network backend: records where a connection would go, never connects."""

    def __init__(self):
        self.attempts: list[str] = []

    async def connect_tcp(self, host, port, **kwargs):
        self.attempts.append(host)
        raise OSError("no traffic in this test")


@pytest.mark.reliability
def test_ipv6_spellings_of_private_ipv4_are_refused():
    for address in EMBEDDED_PRIVATE:
        assert not address_is_public(address), address
    for address in EMBEDDED_PUBLIC:
        assert address_is_public(address), address


@pytest.mark.reliability
@pytest.mark.parametrize("address", EMBEDDED_PRIVATE + EMBEDDED_PUBLIC)
def test_the_checked_connector_refuses_before_connecting(address):
    """The connector the fetcher uses, with a stub in place of the network: a literal IPv6 host resolves
    to itself (no DNS query), and a refused one never reaches the stub."""
    from vllm_mlx.media.fetch import _CheckedBackend

    backend = _CheckedBackend(FetchPolicy())
    backend.inner = stub = _NoTraffic()

    async def connect():
        await backend.connect_tcp(address, 80)

    if address in EMBEDDED_PRIVATE:
        with pytest.raises(MediaFetchError) as err:
            asyncio.run(connect())
        assert "non-public address" in err.value.message and stub.attempts == []
    else:
        with pytest.raises(OSError, match="no traffic"):
            asyncio.run(connect())
        assert len(stub.attempts) == 1  # allowed: it would have connected
