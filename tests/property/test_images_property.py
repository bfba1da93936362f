"""Property tests of phi3vision.images: whatever goes in, the loader returns an RGB image of the
right size or raises ImageError (ImageTooLargeError for limits), never anything else.

Nothing leaves the machine: URL strings are refused before any request (a fake resolver says
every host is private), and the download tests talk to a server on 127.0.0.1 behind a socket
guard that fails the test on any other address.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import socket
import struct
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import requests
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from phi3vision.errors import ImageError, ImageTooLargeError
from phi3vision.images import ImagePolicy, describe_source, image_fingerprint, load_image, load_images
from phi3vision.images import download as downloader
from phi3vision.processing.hd_transform import (
    CROP_SIZE,
    crop_grid,
    hd_image_size,
    image_to_views,
    image_tokens_for_size,
)

from .helpers import ANY_CHAR, ANY_TEXT, LOSSLESS, encode, encoded_images, outcome, random_image

DEFAULT_POLICY = ImagePolicy()


def check_rgb(result: object, size: tuple[int, int]) -> Image.Image:
    """The loader's promise for a valid input: a new, fully loaded RGB image of ``size``."""
    assert isinstance(result, Image.Image), result
    assert result.mode == "RGB"
    assert result.size == size
    assert len(result.tobytes()) == 3 * size[0] * size[1]  # pixels really are decoded
    return result


def rgb_or_image_error(result: object, policy: ImagePolicy = DEFAULT_POLICY) -> None:
    """For inputs that may or may not be valid: an RGB image within the limits, or ImageError."""
    if isinstance(result, ImageError):
        return
    assert isinstance(result, Image.Image), result
    assert result.mode == "RGB"
    assert 1 <= result.width * result.height <= policy.max_pixels


# --------------------------------------------------------------------------------------------
# Valid images, every input kind


def as_input(kind: str, data: bytes, directory: Path) -> Any:
    """The same encoded bytes as one of the input kinds load_image accepts."""
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "file object":
        return io.BytesIO(data)
    if kind == "data URI":
        return "data:image/x;base64," + base64.b64encode(data).decode("ascii")
    path = directory / f"image-{zlib.crc32(data):08x}"
    path.write_bytes(data)
    return path if kind == "pathlib" else str(path)


INPUT_KINDS = st.sampled_from(
    ["bytes", "bytearray", "memoryview", "file object", "data URI", "str", "pathlib"]
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property-images")


@given(encoded=encoded_images(), kind=INPUT_KINDS)
def test_valid_files_load_as_rgb_of_their_size(
    encoded: tuple[bytes, Image.Image, str], kind: str, scratch: Path
) -> None:
    data, original, fmt = encoded
    loaded = check_rgb(load_image(as_input(kind, data, scratch)), original.size)
    if fmt in LOSSLESS and original.mode == "RGB":
        assert np.array_equal(np.asarray(loaded), np.asarray(original))


@given(encoded=encoded_images())
def test_pil_images_load_as_a_new_rgb_image(encoded: tuple[bytes, Image.Image, str]) -> None:
    _, original, _ = encoded
    loaded = check_rgb(load_image(original), original.size)
    assert loaded is not original
    if original.mode == "RGB":
        assert image_fingerprint(loaded) == image_fingerprint(original)


# --------------------------------------------------------------------------------------------
# Damaged and random data


@given(encoded=encoded_images(), cut=st.floats(0, 1, exclude_max=True))
@example(encoded=(encode(Image.new("RGB", (4, 4)), "PNG"), Image.new("RGB", (4, 4)), "PNG"), cut=0.0)
@example(encoded=(encode(Image.new("RGB", (4, 4)), "JPEG"), Image.new("RGB", (4, 4)), "JPEG"), cut=0.5)
def test_truncated_files_load_intact_or_raise_image_error(
    encoded: tuple[bytes, Image.Image, str], cut: float
) -> None:
    data, original, _ = encoded
    truncated = data[: int(len(data) * cut)]
    result = outcome(ImageError, load_image, truncated)
    if not truncated:
        assert isinstance(result, ImageError)
    if isinstance(result, Image.Image):
        # Only the tail was cut, so the header (and the size it states) is intact.
        check_rgb(result, original.size)


@given(
    encoded=encoded_images(),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_files_with_flipped_bytes_load_or_raise_image_error(
    encoded: tuple[bytes, Image.Image, str], flips: list[tuple[float, int]]
) -> None:
    data = bytearray(encoded[0])
    for where, mask in flips:
        data[int(len(data) * where)] ^= mask
    # A small pixel limit: a flipped header byte can claim a big size, which must be refused.
    policy = ImagePolicy(max_pixels=200_000)
    rgb_or_image_error(outcome(ImageError, load_image, bytes(data), policy), policy)


MAGIC_PREFIXES = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P6\n",
    b"\x00\x00\x01\x00",
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
]


@given(prefix=st.sampled_from(MAGIC_PREFIXES), noise=st.binary(max_size=2048), kind=INPUT_KINDS)
@example(prefix=b"", noise=b"", kind="bytes")
@example(prefix=b"%!PS-Adobe-3.0 EPSF-3.0\n", noise=b"%%BoundingBox: 0 0 1 1\n", kind="bytes")
def test_random_bytes_load_or_raise_image_error(
    prefix: bytes, noise: bytes, kind: str, scratch: Path
) -> None:
    result = outcome(ImageError, load_image, as_input(kind, prefix + noise, scratch))
    rgb_or_image_error(result)
    if not prefix + noise:
        assert isinstance(result, ImageError)


@pytest.mark.parametrize(
    "kind", ["bytes", "bytearray", "memoryview", "file object", "data URI", "str", "pathlib"]
)
def test_zero_byte_inputs_raise_image_error(kind: str, scratch: Path) -> None:
    source = as_input(kind, b"", scratch)
    with pytest.raises(ImageError, match=r"0 bytes|empty|no data"):
        load_image(source)


# --------------------------------------------------------------------------------------------
# Shapes


@given(
    long_side=st.integers(1, 5000),
    vertical=st.booleans(),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]),
    num_crops=st.integers(1, 16),
)
@example(long_side=1, vertical=False, fmt="PNG", num_crops=1)
@example(long_side=5000, vertical=False, fmt="PNG", num_crops=16)
@example(long_side=5000, vertical=True, fmt="JPEG", num_crops=16)
def test_one_pixel_strips(long_side: int, vertical: bool, fmt: str, num_crops: int) -> None:
    size = (1, long_side) if vertical else (long_side, 1)
    strip = random_image("RGB" if fmt != "GIF" else "P", *size, seed=long_side)
    check_rgb(load_image(encode(strip, fmt)), size)
    rows, cols = crop_grid(*size, num_crops)
    assert (rows if vertical else cols) >= 1
    assert rows * cols <= num_crops


@settings(max_examples=6)
@given(num_crops=st.integers(1, 16), vertical=st.booleans())
@example(num_crops=16, vertical=False)
@example(num_crops=1, vertical=True)
def test_a_100000x2_image_loads_and_goes_through_the_hd_transform(num_crops: int, vertical: bool) -> None:
    size = (2, 100_000) if vertical else (100_000, 2)
    pixels = np.random.default_rng(num_crops).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    loaded = check_rgb(load_image(encode(Image.fromarray(pixels), "PNG")), size)
    assert np.array_equal(np.asarray(loaded), pixels)

    # Landscape 50000:1: every crop goes along the long side, one row of them.
    expected_grid = (num_crops, 1) if vertical else (1, num_crops)
    assert crop_grid(*size, num_crops) == expected_grid
    expected_tokens = (num_crops + 1) * 144 + 1 + (expected_grid[0] + 1) * 12
    assert image_tokens_for_size(*size, num_crops) == expected_tokens

    views, hd_size = image_to_views(loaded, num_crops)
    assert tuple(views.shape) == (num_crops + 1, 3, CROP_SIZE, CROP_SIZE)
    assert hd_size == hd_image_size(*size, num_crops)
    assert hd_size == (expected_grid[0] * CROP_SIZE, expected_grid[1] * CROP_SIZE)
    assert bool(views.isfinite().all())


# --------------------------------------------------------------------------------------------
# Pixel modes and animation


@given(
    width=st.integers(1, 32),
    height=st.integers(1, 32),
    values=st.lists(st.integers(0, 65535), min_size=1, max_size=64),
)
@example(width=2, height=1, values=[0, 65535])
@example(width=3, height=1, values=[1, 128, 32768])
def test_16_bit_png_is_scaled_to_8_bit(width: int, height: int, values: list[int]) -> None:
    grey = np.resize(np.array(values, dtype=np.uint16), (height, width))
    data = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    loaded = np.asarray(check_rgb(load_image(data), (width, height))).astype(np.int64)
    expected = (grey.astype(np.int64) * 255 + 32767) // 65535
    for channel in range(3):
        assert np.array_equal(loaded[:, :, channel], expected)


@given(
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    quality=st.integers(1, 100),
)
def test_cmyk_jpeg_loads_as_pillows_rgb(width: int, height: int, seed: int, quality: int) -> None:
    data = encode(random_image("CMYK", width, height, seed), "JPEG", quality=quality)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "CMYK"
        expected = np.asarray(opened.convert("RGB"))
    loaded = check_rgb(load_image(data), (width, height))
    assert np.array_equal(np.asarray(loaded), expected)


FRAME_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (255, 255, 0)]


@given(
    frames=st.lists(st.sampled_from(FRAME_COLOURS), min_size=2, max_size=6),
    width=st.integers(1, 32),
    height=st.integers(1, 32),
    fmt=st.sampled_from(["GIF", "PNG", "WEBP"]),
)
def test_animated_images_give_their_first_frame(
    frames: list[tuple[int, int, int]], width: int, height: int, fmt: str
) -> None:
    assume(frames[0] != frames[1])  # at least two distinct frames: a real animation
    sequence = [Image.new("RGB", (width, height), colour) for colour in frames]
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(sequence[0], fmt, save_all=True, append_images=sequence[1:], duration=50, loop=0, **params)
    with Image.open(io.BytesIO(data)) as opened:
        assert getattr(opened, "n_frames", 1) >= 2
    loaded = check_rgb(load_image(data), (width, height))
    assert np.unique(np.asarray(loaded).reshape(-1, 3), axis=0).tolist() == [list(frames[0])]


# --------------------------------------------------------------------------------------------
# Decompression bombs


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header claims ``width`` x ``height``."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def bmp_claiming_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (1, 1)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def gif_claiming_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen size
    return bytes(data)


def refused_before_decoding(source: object, policy: ImagePolicy) -> ImageTooLargeError:
    """Load ``source`` with pixel decoding forbidden: a bomb must be refused from its header."""

    def no_decoding(self: ImageFile.ImageFile) -> Any:
        raise AssertionError(f"pixel data of a {self.size} image was decoded")

    with (
        mock.patch.object(ImageFile.ImageFile, "load", no_decoding),
        pytest.raises(ImageTooLargeError) as caught,
    ):
        load_image(source, policy)
    message = str(caught.value)
    assert "max_pixels" in message or "too large" in message
    return caught.value


@pytest.mark.parametrize(
    "data",
    [png_claiming_size(50_000, 50_000), bmp_claiming_size(50_000, 50_000), gif_claiming_size(65_535, 65_535)],
    ids=["png", "bmp", "gif"],
)
def test_decompression_bombs_are_refused_from_the_header(data: bytes) -> None:
    assert len(data) < 200
    refused_before_decoding(data, DEFAULT_POLICY)
    refused_before_decoding(io.BytesIO(data), DEFAULT_POLICY)


@given(
    max_pixels=st.sampled_from([1, 1000, 1_000_000, 64_000_000]),
    width=st.integers(1, 2**31 - 1),
    data=st.data(),
)
def test_any_claimed_size_over_max_pixels_is_refused(
    max_pixels: int, width: int, data: st.DataObject
) -> None:
    height = data.draw(st.integers(max_pixels // width + 1, 2**31 - 1), label="height")
    refused_before_decoding(png_claiming_size(width, height), ImagePolicy(max_pixels=max_pixels))


# --------------------------------------------------------------------------------------------
# numpy arrays

ARRAY_DTYPES = st.sampled_from(
    [
        np.uint8,
        np.int8,
        np.uint16,
        np.dtype(">u2"),
        np.int32,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
        np.bool_,
        np.complex64,
    ]
)


@given(
    array=hnp.arrays(ARRAY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
    transpose=st.booleans(),
)
@example(array=np.zeros((1, 1), np.uint8), transpose=False)
@example(array=np.zeros((0, 4, 3), np.uint8), transpose=False)
@example(array=np.array([[None]], dtype=object), transpose=False)
@example(array=np.zeros((2, 3), dtype=[("r", "u1"), ("g", "u1")]), transpose=False)
def test_numpy_arrays_load_exactly_or_raise_image_error(array: np.ndarray, transpose: bool) -> None:
    if transpose and array.ndim >= 2:
        array = np.swapaxes(array, 0, 1)  # a non-contiguous view
    result = outcome(ImageError, load_image, array)
    valid_shape = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    if not (array.dtype == np.uint8 and valid_shape and array.size > 0):
        assert isinstance(result, ImageError), f"{array.dtype} {array.shape} was accepted"
        return
    height, width = array.shape[:2]
    loaded = np.asarray(check_rgb(result, (width, height)))
    grey = array.reshape(height, width) if array.ndim == 2 or array.shape[2] == 1 else None
    expected = np.stack([grey] * 3, axis=-1) if grey is not None else array[:, :, :3]
    assert np.array_equal(loaded, expected)


# --------------------------------------------------------------------------------------------
# Strings: paths, URLs, data URIs

STRING_PREFIXES = [
    "",
    "/",
    "./",
    "file:",
    "file://",
    "file:///",
    "FILE://localhost/",
    "ftp://",
    "ftp:",
    "javascript:",
    "JavaScript://",
    "gopher://",
    "data:",
    "DATA:image/png,",
    "data:image/png;base64,",
    "data:text/html,",
    "data:;base64,",
    "http://",
    "https://",
    "HTTPS://",
    "http://[",
    "http://127.0.0.1:",
    "https://user:password@",
    "//",
    "\\\\",
    "C:\\",
    "\x00",
]


def private_resolver(behaviour: str) -> Callable[[str, int], list[str]]:
    """A stand-in for DNS: never a public address, so with allow_private_urls=False no URL is
    ever fetched (a real public address would send the test onto the network)."""

    def resolve(host: str, port: int) -> list[str]:
        if behaviour == "fails":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if behaviour == "bad idna":
            raise UnicodeError("label too long")
        return [behaviour]

    return resolve


RESOLVER_BEHAVIOURS = st.sampled_from(
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "::1",
        "fe80::1%eth0",
        "::ffff:192.168.0.1",
        "not-an-ip",
        "fails",
        "bad idna",
    ]
)


@given(
    prefix=st.sampled_from(STRING_PREFIXES),
    text=ANY_TEXT,
    allow_local_files=st.booleans(),
    resolver=RESOLVER_BEHAVIOURS,
)
@example(prefix="", text="", allow_local_files=True, resolver="fails")
@example(prefix="", text="\ud800", allow_local_files=True, resolver="fails")
@example(prefix="", text="image\x00.png", allow_local_files=True, resolver="fails")
@example(prefix="", text="/dev/zero", allow_local_files=True, resolver="fails")
@example(prefix="", text="/dev/stdin", allow_local_files=True, resolver="fails")
@example(prefix="", text="/", allow_local_files=True, resolver="fails")
@example(prefix="", text="/etc/passwd", allow_local_files=True, resolver="fails")
@example(prefix="", text="/etc/passwd", allow_local_files=False, resolver="fails")
@example(prefix="", text="x" * 1_000_000, allow_local_files=True, resolver="fails")
@example(prefix="http://", text="a" * 1_000_000, allow_local_files=True, resolver="fails")
@example(
    prefix="http://",
    text="169.254.169.254/latest/meta-data/",
    allow_local_files=True,
    resolver="169.254.169.254",
)
@example(prefix="http://", text="[::1]:0/", allow_local_files=True, resolver="::1")
@example(prefix="http://", text="a:99999/", allow_local_files=True, resolver="fails")
@example(prefix="http://", text="%00/", allow_local_files=True, resolver="fails")
@example(prefix="https://", text="\ud800.example/", allow_local_files=True, resolver="bad idna")
@example(prefix="https://user:password@", text="[::1", allow_local_files=True, resolver="fails")
@example(prefix="https://user:password@", text="host:port/", allow_local_files=True, resolver="fails")
@example(prefix="file:", text="/etc/passwd", allow_local_files=True, resolver="fails")
@example(prefix="javascript:", text="alert(1)", allow_local_files=True, resolver="fails")
@example(prefix="ftp://", text="example.com/a.png", allow_local_files=True, resolver="fails")
@example(prefix="data:", text="", allow_local_files=True, resolver="fails")
@example(prefix="data:image/png,", text="%89PNG\ud800", allow_local_files=True, resolver="fails")
@example(prefix="data:image/png;base64,", text="!!!!", allow_local_files=True, resolver="fails")
@example(prefix="data:image/svg+xml,", text="<svg/>", allow_local_files=True, resolver="fails")
def test_random_strings_raise_image_error_without_network(
    prefix: str, text: str, allow_local_files: bool, resolver: str
) -> None:
    source = prefix + text
    policy = ImagePolicy(allow_private_urls=False, allow_local_files=allow_local_files)
    no_request = AssertionError("a request was sent: the URL should have been refused first")
    with (
        mock.patch.object(downloader, "_resolve", private_resolver(resolver)),
        mock.patch.object(requests.Session, "get", side_effect=no_request),
    ):
        result = outcome(ImageError, load_image, source, policy)
    assert isinstance(result, ImageError), f"{source[:80]!r} loaded as an image"
    if "password" in prefix:
        assert "password" not in str(result)  # credentials are left out of messages
    describe_source(source).encode("utf-8")  # descriptions stay printable


def test_file_urls_never_read_local_files(scratch: Path) -> None:
    path = scratch / "real.png"
    path.write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))
    check_rgb(load_image(str(path)), (2, 2))  # the file itself is fine...
    for url in (path.as_uri(), "FILE://" + str(path), "file:" + str(path), "file://localhost" + str(path)):
        with pytest.raises(ImageError, match="scheme 'file' is not allowed"):  # ...but not as a URL
            load_image(url)


@st.composite
def data_uris(draw: st.DrawFn) -> tuple[str, tuple[int, int] | None]:
    """A data URI, and the size of the image it holds when it is a valid image URI."""
    size = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    png = encode(Image.new("RGB", size, (1, 2, 3)), "PNG")
    media_type = draw(
        st.sampled_from(["image/png", "IMAGE/PNG", "", "application/octet-stream", "text/plain"])
    )
    media_type = draw(st.one_of(st.just(media_type), ANY_TEXT))
    params = draw(
        st.lists(st.sampled_from([";base64", ";charset=utf-8", ";BASE64", ";", ";x=y"]), max_size=3)
    )
    encoding = draw(st.sampled_from(["base64", "percent", "random"]))
    if encoding == "base64":
        payload = base64.b64encode(png).decode("ascii")
        if draw(st.booleans()):
            payload = payload.rstrip("=")  # unpadded base64 is accepted
    elif encoding == "percent":
        payload = urllib.parse.quote_from_bytes(png)
    else:
        payload = draw(ANY_TEXT)
    is_base64 = any(p.lower() == ";base64" for p in params)
    lowered = media_type.strip().lower()
    valid = (
        encoding != "random"
        and (encoding == "base64") == is_base64
        and "," not in media_type
        and ";" not in media_type
        and (lowered == "" or lowered.startswith("image/") or lowered == "application/octet-stream")
    )
    return "data:" + media_type + "".join(params) + "," + payload, size if valid else None


@given(data_uris())
def test_data_uris_load_or_raise_image_error(uri_and_size: tuple[str, tuple[int, int] | None]) -> None:
    uri, size = uri_and_size
    result = outcome(ImageError, load_image, uri)
    if size is not None:
        assert np.asarray(check_rgb(result, size))[0, 0].tolist() == [1, 2, 3]
    else:
        rgb_or_image_error(result)


@given(
    st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.builds(object), st.complex_numbers())
)
def test_unsupported_sources_raise_image_error(source: object) -> None:
    assert isinstance(outcome(ImageError, load_image, source), ImageError)
    assert isinstance(outcome(ImageError, load_images, source), ImageError)
    assert isinstance(outcome(ImageError, load_images, [source]), ImageError)


@given(st.lists(st.one_of(st.binary(max_size=64), st.text(ANY_CHAR, max_size=20)), max_size=4))
def test_load_images_names_the_failing_position(sources: list[object]) -> None:
    good = encode(Image.new("RGB", (3, 1)), "PNG")
    result = outcome(ImageError, load_images, [good, *sources])
    if isinstance(result, ImageError):
        position = int(str(result).split(" ", 2)[1])
        assert 2 <= position <= len(sources) + 1
    else:
        assert len(result) == len(sources) + 1
        assert result[0].size == (3, 1)


# --------------------------------------------------------------------------------------------
# Downloads from a local server


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class FuzzServer:
    """A server on 127.0.0.1 answering ``/<key>/...`` with the reply registered under ``key``."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        replies = self.replies

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                key = self.path.split("?", 1)[0].split("/")[1]
                reply = replies.get(key, Reply(404, (), b"not found"))
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        with socket.socket() as probe:  # a port nobody listens on: connection refused
            probe.bind(("127.0.0.1", 0))
            self.closed_base = f"http://127.0.0.1:{probe.getsockname()[1]}"
        self.replies["ok"] = Reply(
            200, (("Content-Type", "image/png"),), encode(Image.new("RGB", (3, 2)), "PNG")
        )

    def register(self, reply: Reply) -> str:
        key = f"r{len(self.replies)}"
        self.replies[key] = reply
        return key


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    fuzz = FuzzServer()
    fuzz.thread.start()
    yield fuzz
    fuzz.httpd.shutdown()
    fuzz.httpd.server_close()


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Fail the test if anything connects anywhere but 127.0.0.1; other names do not resolve."""
    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
            raise AssertionError(f"connection to {address!r} attempted")
        return connect(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", b"127.0.0.1"):
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r} is not resolved in tests")
        return getaddrinfo(host, *args, **kwargs)

    with (
        mock.patch.object(socket, "getaddrinfo", guarded_getaddrinfo),
        mock.patch.object(socket.socket, "connect", guarded_connect),
    ):
        yield


HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


@st.composite
def replies(draw: st.DrawFn, server: FuzzServer) -> tuple[str, bool]:
    """Register a random reply (maybe a redirect chain); return its URL and whether it is a
    well-formed answer carrying a valid 3x2 PNG, which must then load."""
    png = server.replies["ok"].body
    body = draw(
        st.one_of(
            st.just(png),
            st.binary(max_size=512),
            st.integers(1, len(png) - 1).map(lambda n: png[:n]),
            st.just(b"\0" * 10_000),  # over the test policy's max_bytes
        )
    )
    status = draw(
        st.sampled_from([200, 200, 200, 201, 204, 206, 301, 302, 303, 307, 308, 400, 404, 500, 599])
    )
    content_type = draw(
        st.sampled_from(
            [None, "image/png", "IMAGE/PNG; q=1", "application/octet-stream", "text/html", "", "image"]
        )
        | HEADER_TEXT
    )
    encoding = draw(st.sampled_from([None, None, "identity", "gzip", "deflate", "br", "gzip, gzip"]))
    sent = body
    if encoding == "gzip" and draw(st.booleans()):
        sent = gzip.compress(body)
    elif encoding == "deflate" and draw(st.booleans()):
        sent = zlib.compress(body)
    length = draw(st.sampled_from(["exact", "none", "short", "long", "garbage", "huge"]))
    headers: list[tuple[str, str]] = []
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if encoding is not None:
        headers.append(("Content-Encoding", encoding))
    lengths = {"exact": len(sent), "short": max(0, len(sent) - 7), "long": len(sent) + 7, "huge": 10**12}
    if length in lengths:
        headers.append(("Content-Length", str(lengths[length])))
    elif length == "garbage":
        headers.append(("Content-Length", draw(HEADER_TEXT)))
    redirect = 300 <= status < 400 and draw(st.booleans())
    if redirect:
        own = f"r{len(server.replies)}"
        location = draw(
            st.sampled_from(
                [
                    "/ok",
                    f"/{own}",
                    "file:///etc/passwd",
                    "ftp://127.0.0.1/a.png",
                    "http://[::1",
                    "javascript:x",
                    "",
                ]
            )
            | HEADER_TEXT.map(lambda text: "/ok/" + text)
        )
        headers.append(("Location", location))
    key = server.register(Reply(status, tuple(headers), sent))
    query = draw(st.sampled_from(["", "?signature=secret", "?" + "a" * 3000]))
    if draw(st.integers(0, 9)) == 0:
        return f"{server.closed_base}/{key}{query}", False
    well_formed = (
        body == png
        and status in (200, 201)
        and content_type in (None, "image/png", "IMAGE/PNG; q=1", "application/octet-stream", "")
        and encoding in (None, "identity", "gzip", "deflate")
        and (sent != body or encoding in (None, "identity"))
        and length in ("exact", "none")
    )
    return f"{server.base}/{key}{query}", well_formed


@settings(max_examples=60)
@given(data=st.data())
def test_downloads_of_random_replies_load_or_raise_image_error(
    server: FuzzServer, data: st.DataObject
) -> None:
    url, well_formed = data.draw(replies(server))
    policy = ImagePolicy(max_bytes=4096, max_redirects=2, connect_timeout=2, read_timeout=2, total_timeout=5)
    with loopback_only():
        result = outcome(ImageError, load_image, url, policy)
    if well_formed:
        check_rgb(result, (3, 2))
    else:
        rgb_or_image_error(result, policy)
    if isinstance(result, ImageError):
        assert "secret" not in str(result)  # query strings are left out of messages


@settings(max_examples=30)
@given(path=ANY_TEXT)
@example(path="\ud800")
@example(path="%00")
@example(path="../../../../etc/passwd")
@example(path="@evil.example/")
def test_random_paths_on_the_local_server(server: FuzzServer, path: str) -> None:
    with loopback_only():
        result = outcome(ImageError, load_image, f"{server.base}/{path}", ImagePolicy(total_timeout=5))
    rgb_or_image_error(result)


class EndlessRedirectHandler(BaseHTTPRequestHandler):
    """A redirect whose body goes on and on: counts how much of it the client took."""

    sent: int = 0

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        chunk = b"x" * 65536
        try:
            for _ in range(1024):  # up to 64 MiB
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass  # the client hung up, as it should

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_body_of_a_redirect_is_not_read() -> None:
    """requests reads a redirect's whole body to prepare ``Response.next`` even with
    ``allow_redirects=False``; that read would ignore max_bytes and the total timeout."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EndlessRedirectHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/start"
        with loopback_only(), pytest.raises(ImageError, match="too many redirects"):
            load_image(url, ImagePolicy(max_bytes=1024, max_redirects=0, total_timeout=10))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    # Socket buffers take a few MiB at most; reading the body would have taken all 64 MiB.
    assert EndlessRedirectHandler.sent < 16 * 1024 * 1024
