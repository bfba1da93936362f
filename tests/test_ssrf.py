"""The SSRF model of phi3vision.images.download (issue 10 point 1).

The URL check must judge exactly the host the HTTP client connects to: a differential test
feeds thousands of URL spellings to the check and to requests itself, and hostile servers on
127.0.0.1 try the known bypasses directly, through a redirect, through DNS rebinding and
through a model's ``image_policy``.
"""

from __future__ import annotations

import http.server
import io
import random
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from phi3vision.errors import ImageError
from phi3vision.images import ImagePolicy, load_image
from phi3vision.images import download as downloader
from phi3vision.images.download import UrlRefused, url_target

STRICT = ImagePolicy(allow_private_urls=False, connect_timeout=2, read_timeout=2)
OPEN = ImagePolicy(connect_timeout=2, read_timeout=2)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (9, 8, 7)).save(buffer, "PNG")
    return buffer.getvalue()


class HostileServer:
    """Serves an image at every path, or redirects to ``?to=URL``; records every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                if "to" in query:
                    # Written by hand: a hostile Location may hold any bytes (UTF-8 here).
                    location = query["to"][0].encode("utf-8", "surrogatepass")
                    self.wfile.write(b"HTTP/1.1 302 Found\r\nLocation: " + location)
                    self.wfile.write(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    self.close_connection = True
                    return
                body = png()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def redirect(self, target: str) -> str:
        return f"{self.url}/r?{urllib.parse.urlencode({'to': target})}"


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileServer]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = HostileServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(5)


def pretend_public(monkeypatch: pytest.MonkeyPatch, *hosts: str) -> None:
    """Make the *name check* (step 3) see a public address for ``hosts``: what a DNS server
    answering differently to the check than to the client would do."""
    real = downloader._resolve
    monkeypatch.setattr(
        downloader, "_resolve", lambda host, port: ["93.184.216.34"] if host in hosts else real(host, port)
    )


# --------------------------------------------------------------------------------------------
# The reported bypass and its neighbours, against a live server


def bypasses(port: int) -> list[str]:
    """Spellings that some parser reads as a public host while another connects to loopback."""
    return [
        f"http://127.0.0.1:{port}\\@1.1.1.1/x.png",
        f"http://127.0.0.1:{port}\\\\@1.1.1.1/x.png",
        f"http://1.1.1.1@127.0.0.1:{port}/x.png",
        f"http://user:pw@127.0.0.1:{port}/x.png",
        f"http://127.0.0.1:{port}#@1.1.1.1/x.png",
        f"http://127.0.0.1:{port}?@1.1.1.1/x.png",
        f"http://127.0.0.1:{port} @1.1.1.1/x.png",
        f"http://127.0.0.1:{port}\t@1.1.1.1/x.png",
        f"http://127.0.0.1%3a{port}/x.png",
        f"http://%31%32%37.0.0.1:{port}/x.png",
        f"http://127.1:{port}/x.png",
        f"http://0x7f.0.0.1:{port}/x.png",
        f"http://2130706433:{port}/x.png",
        f"http://0177.0.0.1:{port}/x.png",
        f"http://127.0.0.1:0{port}/x.png",
        f"http://127.0.0.1.:{port}/x.png",
        f"http://[::ffff:127.0.0.1]:{port}/x.png",
        f"http://①②⑦.0.0.1:{port}/x.png",
        f"http://127。0。0。1:{port}/x.png",
        f"http:\\\\127.0.0.1:{port}/x.png",
        f"http:/127.0.0.1:{port}/x.png",
        f"HTTP://127.0.0.1:{port}/x.png",
        f"http://localhost:{port}/x.png",
        f" http://127.0.0.1:{port}/x.png",
        f"http://127.0.0.1:{port}/x.png\n",
    ]


def test_every_bypass_is_refused_and_the_server_sees_nothing(hostile: HostileServer) -> None:
    for url in bypasses(hostile.port):
        with pytest.raises(ImageError):
            load_image(url, STRICT)
    assert hostile.requests == []


def test_the_reported_bypass_is_refused_even_when_private_urls_are_allowed(hostile: HostileServer) -> None:
    # The URL is ambiguous: refused for what it is, whatever the policy allows.
    url = f"http://127.0.0.1:{hostile.port}\\@1.1.1.1/x.png"
    with pytest.raises(ImageError, match="printable ASCII without spaces or backslashes"):
        load_image(url, OPEN)
    with pytest.raises(ImageError, match="credentials"):
        load_image(f"http://1.1.1.1@127.0.0.1:{hostile.port}/x.png", OPEN)
    assert hostile.requests == []


def test_bypasses_through_a_redirect_are_refused(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first hop is made to pass (its host seen as public at check and at connect); each
    # redirect target is checked before it is contacted.
    monkeypatch.setattr(downloader, "_is_public", lambda address: address == "127.0.0.1")
    pretend_public(monkeypatch)
    for target in [*bypasses(hostile.port), "http://10.0.0.1/x.png", "http://169.254.169.254/latest/"]:
        try:
            joined = url_target(urllib.parse.urljoin(hostile.url, target))
        except UrlRefused:
            pass
        else:
            if joined.host in ("127.0.0.1", "localhost", "localhost."):
                continue  # a plain URL of the first host itself, which this test counts as public
        if "\n" in target or "\r" in target:
            continue  # cannot be sent in a Location header
        hostile.requests.clear()
        with pytest.raises(ImageError, match="redirect 1"):
            load_image(hostile.redirect(target), STRICT)
        assert len(hostile.requests) == 1, (target, hostile.requests)


def test_dns_rebinding_is_caught_at_connect_time(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name check sees a public address; the connection reaches loopback.
    pretend_public(monkeypatch, "127.0.0.1")
    with pytest.raises(ImageError, match=r"connection reached the non-public address 127\.0\.0\.1"):
        load_image(f"{hostile.url}/x.png", STRICT)
    assert hostile.requests == [], "no byte may be sent to a refused peer"


def test_rebinding_on_a_redirect_hop_is_caught_at_connect_time(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every name "resolves" to a public address for the check. The first connection is let
    # through unchecked; the redirect's connection, to loopback, must be refused.
    monkeypatch.setattr(downloader, "_resolve", lambda host, port: ["93.184.216.34"])
    real_check = downloader._check_peer
    checks: list[object] = []

    def first_connection_passes(sock: object) -> None:
        checks.append(sock)
        if len(checks) > 1:
            real_check(sock)  # type: ignore[arg-type]

    monkeypatch.setattr(downloader, "_check_peer", first_connection_passes)
    redirect = hostile.redirect(f"http://localhost:{hostile.port}/x.png")
    with pytest.raises(ImageError, match=r"redirect 1 .*the connection reached the non-public address"):
        load_image(redirect, STRICT)
    assert len(hostile.requests) == 1 and len(checks) == 2


def test_proxies_from_the_environment_are_not_used_with_a_strict_policy(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would be the peer instead of the host judged; with the policy strict it is ignored.
    monkeypatch.setenv("HTTP_PROXY", hostile.url)
    monkeypatch.delenv("NO_PROXY")
    with pytest.raises(ImageError, match="non-public"):
        load_image("http://10.0.0.1/x.png", STRICT)
    assert hostile.requests == []
    assert load_image("http://example.invalid/x.png", OPEN).size == (3, 2)  # lax: proxied as before
    assert hostile.requests == ["http://example.invalid/x.png"]


def test_a_models_image_policy_refuses_the_bypass(hostile: HostileServer) -> None:
    from phi3vision import VisionModel
    from phi3vision.testing import FakeVisionModel

    from .conftest import GOLDEN_CHECKPOINT

    url = f"http://127.0.0.1:{hostile.port}\\@1.1.1.1/x.png"
    fake = FakeVisionModel(image_policy=STRICT)
    with pytest.raises(ImageError):
        fake.describe(url)
    with pytest.raises(ImageError, match="non-public"):
        fake.describe(f"{hostile.url}/x.png")
    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", image_policy=STRICT) as model:
        with pytest.raises(ImageError):
            model.describe(url, max_new_tokens=1)
        with pytest.raises(ImageError, match="non-public"):
            model.describe(hostile.redirect("http://10.0.0.1/"), max_new_tokens=1)
    assert hostile.requests == []


# --------------------------------------------------------------------------------------------
# Differential test: the check and the client agree on the host of every URL accepted


class _Connected(Exception):
    """Raised where the client would open its TCP connection, carrying where to."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.host, self.port = host, port


def client_target(url: str) -> tuple[str, int]:
    """Where requests really connects for ``url``: recorded in urllib3's connection, at the
    point it would resolve and connect (``_dns_host``), with nothing sent anywhere."""
    from urllib3.connection import HTTPConnection

    def record(self: HTTPConnection) -> None:
        raise _Connected(self._dns_host, self.port)  # type: ignore[attr-defined]

    original = HTTPConnection._new_conn
    HTTPConnection._new_conn = record  # type: ignore[assignment,method-assign]
    try:
        with requests.Session() as session:
            session.trust_env = False
            session.get(url, timeout=1, allow_redirects=False)
    except _Connected as connected:
        return connected.host, connected.port
    finally:
        HTTPConnection._new_conn = original  # type: ignore[method-assign]
    raise AssertionError(f"requests did not connect for {url!r}")


SCHEMES = ["http", "https", "HTTP", "hTTps", "ftp", "file", "http+unix", ""]
SEPARATORS = ["://", ":/", ":\\\\", ":///", "://\\", ":", "//", ":\\/", "://", "://"]
USERINFO = ["", "", "", "u@", "u:p@", "@", "a@b@", "%40@", "1.1.1.1@", "u:@", ":@"]
HOSTS = [
    "example.com",
    "EXAMPLE.com",
    "example.com.",
    "1.1.1.1",
    "127.0.0.1",
    "127.1",
    "0x7f.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "localhost",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[fe80::1%25eth0]",
    "[1:2::3]",
    "[::1",
    "::1",
    "exa%6dple.com",
    "ex\u0430mple.com",
    "xn--e1afmkfd.xn--p1ai",
    "\uff45xample.com",
    "a..b",
    ".a",
    "a-.b",
    "-a.b",
    "a_b.c",
    "",
    "a" * 64 + ".com",
    "127.0.0.1\\",
    "1.1.1.1\\@127.0.0.1",
    "127.0.0.1#@1.1.1.1",
    "127.0.0.1?@1.1.1.1",
    "ё.рф",
]
PORTS = [
    "",
    "",
    "",
    ":80",
    ":443",
    ":8080",
    ":0080",
    ":0",
    ":65535",
    ":65536",
    ":",
    ":-1",
    ": 80",
    ":8o",
    ":+80",
    ":99999999999",
    ":80:80",
    ":\u0661",
]
MIDDLES = [
    "",
    "",
    "",
    "",
    "\\@1.1.1.1",
    "#@1.1.1.1",
    "?@1.1.1.1",
    " ",
    "\t",
    "\n",
    "\x00",
    "%00",
    "\\",
    "@1.1.1.1",
    ";@1.1.1.1",
    "\u3002com",
]
PATHS = ["/x.png", "", "/", "\\x.png", "/a b.png", "?q=1", "#f", "/%2e%2e/x", "/x?a=@1.1.1.1", "/\u00e9.png"]


def url_spellings(count: int, seed: int = 0) -> list[str]:
    """``count`` URLs built from pieces that known bypasses use, plus random character
    noise, from a fixed seed: the same list on every run."""
    rng = random.Random(seed)
    noise = "\\/@:#?%[]. \t\r\n\x00\x7f\u00a0\u3002\uff0e\u2024aA0-_~!$&'()*+,;=\ud800"
    plain = {"scheme": "http", "separator": "://", "userinfo": "", "port": "", "middle": "", "path": "/x.png"}

    def piece(name: str, choices: list[str]) -> str:
        # Each piece is plain half of the time, so that many URLs are accepted and compared.
        return plain[name] if name in plain and rng.random() < 0.6 else rng.choice(choices)

    urls = []
    for _ in range(count):
        url = (
            piece("scheme", SCHEMES)
            + piece("separator", SEPARATORS)
            + piece("userinfo", USERINFO)
            + rng.choice(HOSTS[:12] if rng.random() < 0.5 else HOSTS)
            + piece("port", PORTS)
            + piece("middle", MIDDLES)
            + piece("path", PATHS)
        )
        if rng.random() < 0.2:
            at = rng.randrange(len(url) + 1)
            url = url[:at] + rng.choice(noise) + url[at:]
        urls.append(url)
    return urls


def test_the_check_and_the_client_agree_on_the_host_of_every_accepted_url() -> None:
    accepted = 0
    for url in url_spellings(10_000):
        try:
            target = url_target(url)
        except UrlRefused:
            continue
        accepted += 1
        host, port = client_target(url)
        assert (host.lower().strip("[]"), port) == (target.host, target.port), url
        assert urllib.parse.urlsplit(url).hostname == target.host.split("%")[0] or ":" in target.host
    assert accepted > 800, "the generator should make many plain URLs too"


PLAIN_READINGS = {
    # Not ambiguous: every parser reads 127.0.0.1, whose address the policy then judges.
    "http://127.0.0.1:8000#@1.1.1.1/x.png": ("127.0.0.1", 8000),
    "http://127.0.0.1:8000?@1.1.1.1/x.png": ("127.0.0.1", 8000),
    "HTTP://127.0.0.1:8000/x.png": ("127.0.0.1", 8000),
    "http://localhost:8000/x.png": ("localhost", 8000),
    "http://[::ffff:127.0.0.1]:8000/x.png": ("::ffff:127.0.0.1", 8000),
    "http://[::1]:80/": ("::1", 80),
}


@pytest.mark.parametrize(
    "url",
    [url for url in bypasses(8000) if url not in PLAIN_READINGS]
    + [
        "http://[fe80::1%25eth0]/",
        "http://a@b/",
        "http://a:80:80/",
        "http://exa%6dple.com/",
        "http://ex\u0430mple.com/",
        "http:///x",
        "http://:80/",
        "http://a:0/",
        "http://a:65536/",
    ],
)
def test_ambiguous_or_odd_urls_are_refused_by_the_check(url: str) -> None:
    with pytest.raises(UrlRefused):
        url_target(url)


@pytest.mark.parametrize(("url", "where"), PLAIN_READINGS.items())
def test_plain_urls_are_read_as_the_client_reads_them(url: str, where: tuple[str, int]) -> None:
    target = url_target(url)
    assert (target.host, target.port) == where
    assert client_target(url) == where


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("2002:7f00:1::", False),  # 6to4 holding 127.0.0.1
        ("2002:5db8:d822::", True),  # 6to4 holding 93.184.216.34
        ("64:ff9b::a00:1", False),  # NAT64 holding 10.0.0.1
        ("64:ff9b::5db8:d822", True),
        ("::ffff:169.254.169.254", False),
        ("2001::1", False),  # Teredo
    ],
)
def test_ipv4_held_in_ipv6_is_judged_as_ipv4(address: str, public: bool) -> None:
    assert downloader._is_public(address) is public
