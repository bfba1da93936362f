"""HTTP(S) downloads of image URLs: the one place where the library contacts a server.

The SSRF model. ``ImagePolicy`` decides which servers a URL may make the library contact;
these checks make that decision about the server that is really contacted:

1. **One reading of the URL** (always, before anything else). The URL must be printable
   ASCII: no whitespace, control characters or backslashes anywhere. Its authority must be
   a host and an optional port, with no credentials (``user@``). The host must be a plain DNS
   name (an international name as ``xn--`` punycode), a dotted-quad IPv4 address or a
   bracketed IPv6 address: no percent-encoding, no zone id, no numeric shorthand such as
   ``127.1`` or ``0x7f.0.0.1``. The port, if given, is decimal 1..65535 without leading zeros.
   The scheme, host and port are read three ways, by RFC 3986's pattern, by
   ``urllib3.util.parse_url`` (the parser requests and urllib3 themselves use to choose the
   connection) and by ``urllib.parse.urlsplit``. A URL that they read differently is refused,
   so that there is exactly one host to judge. This happens for the first URL and for every
   redirect target.
2. **Scheme**: http or https, narrowed by ``allowed_schemes``.
3. **Resolved addresses, before each request** (``allow_private_urls=False``). Redirects are
   followed by hand, one request at a time. Before each request, the host is resolved, and
   every address must be a global unicast address. IPv4 addresses held in IPv6 form
   (IPv4-mapped, 6to4, the NAT64 prefix) are judged as the IPv4 address.
4. **The connected address, at connect time** (``allow_private_urls=False``). Every TCP
   connection made for the download checks the address it actually reached
   (``getpeername``) before it sends a byte, TLS hello included. This catches DNS rebinding
   between step 3 and the connection, and any resolver that answers the client differently.
   Proxies from the environment (``HTTP_PROXY``, ...) and ``.netrc`` are not used then: a
   proxy would be the peer, not the host that was judged.

Importing this module imports neither requests nor urllib3; that happens on the first download.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ImageError, Phi3VisionError
from .context import Context
from .readers import ACCEPTED_CONTENT_TYPES
from .sources import redacted_url, without_secrets

if TYPE_CHECKING:
    import requests

_CHUNK_SIZE = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_RFC3986 = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([/?#].*)?$", re.DOTALL)
"""RFC 3986 appendix B, for URLs with an authority: scheme, authority, the rest."""
_AUTHORITY = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::([1-9][0-9]{0,4}))?$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9A-Fa-f]*|[0-9]+)$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Target:
    """Where a URL makes the HTTP client connect: the one reading all parsers agree on."""

    scheme: str
    host: str
    """As urllib3 spells it (lower case; an IPv6 address without brackets)."""
    port: int


class UrlRefused(ValueError):
    """A URL that :func:`url_target` will not judge (the reason is the message)."""


def _canonical_host(host: str) -> str:
    """A host name or address, checked and in lower case; UrlRefused for anything odd."""
    if host.startswith("["):
        inner = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise UrlRefused(f"{host!r} is not an IPv6 address") from None
    name = host.lower()
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UrlRefused(f"{host!r} is not a valid host name")
    if _NUMERIC_LABEL.match(labels[-1]) or any(label.startswith("0x") for label in labels):
        # Resolvers read "127.1", "0x7f.0.0.1" and "2130706433" as IPv4 addresses, each in
        # their own way; only the plain dotted quad has one meaning.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise UrlRefused(
                f"{host!r} is not a plain dotted-quad IPv4 address (numeric shorthands are refused)"
            ) from None
    return name


def _urllib3_target(url: str) -> tuple[str, str, int]:
    """Scheme, host and port as urllib3 (and so requests) reads them."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        parsed = parse_url(url)
    except (LocationParseError, ValueError) as exc:
        raise UrlRefused(f"urllib3 cannot parse it ({exc})") from None
    if parsed.auth is not None:
        raise UrlRefused("URLs with credentials (user@host) are not supported")
    scheme = (parsed.scheme or "").lower()
    host = (parsed.host or "").lower()
    if host.startswith("["):
        host = host[1:-1]
    return scheme, host, parsed.port or _DEFAULT_PORTS.get(scheme, 0)


def _urlsplit_target(url: str) -> tuple[str, str, int]:
    """Scheme, host and port as the standard library reads them."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"malformed URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("URLs with credentials (user@host) are not supported")
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def url_target(url: str) -> Target:
    """The scheme, host and port that the HTTP client will connect to for ``url``, or
    :class:`UrlRefused` when the URL is not plain enough for that to be certain (step 1 of the
    module docstring). Needs no network."""
    bad = next((char for char in url if not 0x21 <= ord(char) <= 0x7E or char == "\\"), None)
    if bad is not None:
        raise UrlRefused(
            f"the URL contains {bad!r}; URLs must be printable ASCII without spaces or backslashes "
            "(percent-encode the path, write international host names as xn-- punycode)"
        )
    match = _RFC3986.match(url)
    if match is None:
        raise UrlRefused("not an absolute URL of the form scheme://host/path")
    scheme, authority = match.group(1).lower(), match.group(2)
    if "@" in authority:
        raise UrlRefused("URLs with credentials (user@host) are not supported")
    if scheme not in _DEFAULT_PORTS:
        raise UrlRefused(f"URL scheme {scheme!r} is not allowed (only http and https exist)")
    if not authority:
        raise UrlRefused("the URL has no host name")
    parts = _AUTHORITY.match(authority)
    if parts is None:
        raise UrlRefused(f"{authority!r} is not host[:port] with a port from 1 to 65535")
    host = _canonical_host(parts.group(1))
    port = int(parts.group(2)) if parts.group(2) else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise UrlRefused(f"malformed URL: port {port} is out of range")
    client = _urllib3_target(url)
    for reader, (other_scheme, other_host, other_port) in (
        ("urllib3", client),
        ("urllib.parse", _urlsplit_target(url)),
    ):
        if other_scheme != scheme or not _same_host(other_host, host) or other_port != port:
            raise UrlRefused(
                f"ambiguous URL: {reader} reads it as {other_scheme}://{other_host}:{other_port}, "
                f"not {scheme}://{host}:{port}"
            )
    return Target(scheme, client[1], port)  # the host as the client spells it, to resolve it


def _resolve(host: str, port: int) -> list[str]:
    """Addresses ``host`` resolves to (a separate function so tests can substitute it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _is_public(address: str) -> bool:
    """True only for globally routable unicast addresses; an IPv4 address held in an IPv6 one
    (mapped, 6to4, NAT64) is judged as that IPv4 address."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def _public(address: str) -> bool:
    try:
        return _is_public(address)
    except ValueError:
        return False


def _refuse_private(context: Context, what: str, address: str) -> NoReturn:
    context.fail(
        f"{what} the non-public address {address}; private, loopback and link-local addresses "
        "are refused by this policy (allow_private_urls=False)"
    )


def check_url(url: str, context: Context, hop: str = "") -> Target:
    """Refuse a URL (first request or redirect target) that the policy does not allow, before
    it is contacted (steps 1 to 3 of the module docstring)."""
    scheme = _SCHEME.match(url)
    if scheme is None or scheme.group(1).lower() not in context.policy.allowed_schemes:
        allowed = ", ".join(sorted(context.policy.allowed_schemes)) or "none"
        named = repr(scheme.group(1).lower()) if scheme else "(none)"
        context.fail(f"{hop}URL scheme {named} is not allowed (allowed: {allowed})")
    try:
        target = url_target(url)
    except UrlRefused as exc:
        context.fail(f"{hop}{exc}")
    if context.policy.allow_private_urls:
        return target
    try:
        addresses = _resolve(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise ImageError(f"{context.prefix}: {hop}cannot resolve host {target.host!r} ({exc})") from exc
    for address in addresses:
        if not _public(address):
            _refuse_private(context, f"{hop}host {target.host!r} resolves to", address)
    return target


class RefusedPeer(Exception):
    """A connection reached a non-public address (step 4); raised inside urllib3, which lets
    exceptions that are not network errors pass, and reported by :func:`fetch_url`."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def _check_peer(sock: socket.socket) -> None:
    try:
        address = str(sock.getpeername()[0])
    except OSError:
        address = "unknown"
    if not _public(address):
        sock.close()
        raise RefusedPeer(address)


@functools.cache
def _peer_checking_adapter() -> type:
    """A requests adapter whose connections check the address they reached before use.

    urllib3 creates a connection's socket in ``_new_conn`` (TCP only; TLS comes after), so
    the check there runs before any byte is sent. Built on first use, so that importing
    phi3vision does not import requests."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class CheckedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _check_peer(sock)
            return sock

    class CheckedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _check_peer(sock)
            return sock

    class CheckedHTTPPool(HTTPConnectionPool):
        ConnectionCls = CheckedHTTPConnection

    class CheckedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedHTTPSConnection

    class PeerCheckingAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": CheckedHTTPPool, "https": CheckedHTTPSPool}

    return PeerCheckingAdapter


def _session(check_peers: bool) -> requests.Session:
    """A requests session that never follows redirects on its own (_follow_redirects does),
    and, with ``check_peers``, checks every connection's address and ignores proxies."""
    import requests

    class _Session(requests.Session):
        def get_redirect_target(self, resp: requests.Response) -> str | None:
            # Even with allow_redirects=False, requests prepares ``Response.next`` for a
            # redirect and reads the redirect's whole body to do so, with no size limit and no
            # deadline. Reporting "no redirect" here stops that; the redirect is still seen
            # by _follow_redirects (``is_redirect``), which closes it unread.
            return None

    session = _Session()
    if check_peers:
        session.trust_env = False  # no proxies, no .netrc: the peer must be the host judged
        adapter = _peer_checking_adapter()()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


def fetch_url(url: str, context: Context) -> bytes:
    """Fetch a URL with every limit of the policy; network errors become ImageError."""
    import requests
    import urllib3.exceptions

    deadline = time.monotonic() + context.policy.download_deadline
    try:
        with _session(check_peers=not context.policy.allow_private_urls) as session:
            response = _follow_redirects(session, url, context, deadline)
            try:
                return _read_body(response, context, deadline)
            finally:
                response.close()
    except Phi3VisionError:
        raise
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise ImageError(
            f"{context.prefix}: download timeout (connect_timeout={context.policy.connect_timeout} s, "
            f"read_timeout={context.policy.read_timeout} s)"
        ) from exc
    except requests.ConnectionError as exc:
        raise ImageError(
            f"{context.prefix}: cannot connect to the server ({without_secrets(str(exc))})"
        ) from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise ImageError(f"{context.prefix}: download failed ({without_secrets(str(exc))})") from exc


def _remaining(deadline: float, context: Context) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        context.fail(
            f"download timeout: not finished within {context.policy.download_deadline:g} s (total_timeout)"
        )
    return left


def _follow_redirects(
    session: requests.Session, url: str, context: Context, deadline: float
) -> requests.Response:
    """GET ``url``, following redirects by hand so that each target is checked against the
    policy before it is contacted; requests' own redirect handling would contact it first."""
    policy = context.policy
    headers = {
        "User-Agent": policy.user_agent,
        "Accept": "image/*, application/octet-stream;q=0.5",
        # Images are compressed already; asking for no transfer encoding keeps the byte limit
        # about what is actually decoded.
        "Accept-Encoding": "identity",
    }
    visited = {url}
    current = url
    for hop_number in range(policy.max_redirects + 1):
        hop = "" if hop_number == 0 else f"redirect {hop_number} to {redacted_url(current)}: "
        check_url(current, context, hop)
        left = _remaining(deadline, context)
        try:
            response = session.get(
                current,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(policy.connect_timeout, left), min(policy.read_timeout, left)),
            )
        except RefusedPeer as exc:
            _refuse_private(context, f"{hop}the connection reached", exc.address)
        if not response.is_redirect:
            return _checked_response(response, context)
        location = response.headers["location"]
        response.close()
        current = urllib.parse.urljoin(current, location)
        if current in visited:
            context.fail(f"redirect loop: {redacted_url(current)} was already visited")
        visited.add(current)
    context.fail(f"too many redirects (more than max_redirects={policy.max_redirects})")


def _checked_response(response: requests.Response, context: Context) -> requests.Response:
    """Refuse error statuses, non-image content types and announced oversized bodies before
    reading any of the body."""
    try:
        if not 200 <= response.status_code < 300:
            context.fail(f"HTTP error {response.status_code} {response.reason or ''}".rstrip())
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type and not (content_type.startswith("image/") or content_type in ACCEPTED_CONTENT_TYPES):
            context.fail(f"the server sent Content-Type {content_type!r}, not an image")
        length = response.headers.get("Content-Length", "").strip()
        if length.isdigit():
            context.check_byte_count(int(length), "the download (Content-Length)")
    except BaseException:
        response.close()
        raise
    return response


def _read_body(response: requests.Response, context: Context, deadline: float) -> bytes:
    """Stream the body, stopping as soon as it exceeds ``max_bytes`` or the deadline passes.

    ``read1`` returns whatever arrived instead of waiting for a full chunk, so a server that
    trickles bytes is still caught by the deadline. Compressed bodies (sent despite
    ``Accept-Encoding: identity``) are inflated here with a bounded output size, so that a
    small gzip bomb cannot expand in memory.
    """
    limit = context.policy.max_bytes
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    decompressor = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        decompressor = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    elif encoding not in ("", "identity"):
        context.fail(f"unsupported Content-Encoding {encoding!r}")
    raw = response.raw
    read = getattr(raw, "read1", None) or raw.read
    body = bytearray()
    while True:
        _remaining(deadline, context)
        chunk = read(_CHUNK_SIZE, decode_content=False)
        if not chunk:
            break
        if decompressor is not None:
            try:
                chunk = decompressor.decompress(chunk, limit - len(body) + 1)
            except zlib.error as exc:
                raise ImageError(f"{context.prefix}: corrupt {encoding} response ({exc})") from exc
        body += chunk
        if len(body) > limit:
            context.too_large(f"the download is over the limit of max_bytes={limit}; stopped reading")
    if decompressor is not None:
        try:
            body += decompressor.flush()
        except zlib.error as exc:
            raise ImageError(f"{context.prefix}: corrupt {encoding} response ({exc})") from exc
        context.check_byte_count(len(body), "the download")
    if not body:
        context.fail("the server sent an empty body")
    return bytes(body)
