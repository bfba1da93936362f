"""Tests of phi3vision.images: every input kind, pixel modes, limits and URL downloads.

URL tests run against a local ThreadingHTTPServer on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phi3vision.errors import ImageError, ImageTooLargeError, OptionsError, Phi3VisionError
from phi3vision.images import (
    ImagePolicy,
    describe_source,
    image_fingerprint,
    load_image,
    load_images,
    make_policy,
)
from phi3vision.images import download as downloader

GOLDEN_IMAGES = Path(__file__).parent / "golden" / "phi3v-tiny" / "images"


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def noisy_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels, so that compressed files are large and truncation hits pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


RED_PNG = encode(Image.new("RGB", (4, 3), (255, 0, 0)))


# --------------------------------------------------------------------------------------------
# Input kinds


@pytest.fixture
def red_png_path(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    path.write_bytes(RED_PNG)
    return path


def check_red(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert image.size == (4, 3)
    assert pixel(image) == (255, 0, 0)


def test_path_as_str_and_pathlib(red_png_path: Path) -> None:
    check_red(load_image(str(red_png_path)))
    check_red(load_image(red_png_path))


def test_bytes_bytearray_memoryview() -> None:
    check_red(load_image(RED_PNG))
    check_red(load_image(bytearray(RED_PNG)))
    check_red(load_image(memoryview(RED_PNG)))


def test_file_objects(red_png_path: Path) -> None:
    check_red(load_image(io.BytesIO(RED_PNG)))
    with red_png_path.open("rb") as file:
        check_red(load_image(file))
        assert not file.closed, "the caller's file must stay open"


def test_text_mode_file_is_refused(red_png_path: Path) -> None:
    with open(red_png_path, encoding="latin-1") as file, pytest.raises(ImageError, match="binary mode"):
        load_image(file)  # type: ignore[arg-type]


def test_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(RED_PNG).decode()
    check_red(load_image(uri))
    # Unpadded and line-wrapped base64 is common in the wild.
    encoded = base64.b64encode(RED_PNG).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    check_red(load_image("data:image/png;base64," + wrapped))


def test_bad_data_uris() -> None:
    with pytest.raises(ImageError, match="not valid base64"):
        load_image("data:image/png;base64,@@@not-base64@@@")
    with pytest.raises(ImageError, match="not an image type"):
        load_image("data:text/html;base64," + base64.b64encode(b"<html></html>").decode())
    with pytest.raises(ImageError, match="no ','"):
        load_image("data:image/png;base64")
    with pytest.raises(ImageTooLargeError, match="max_bytes"):
        load_image("data:image/png;base64," + "A" * 4000, ImagePolicy(max_bytes=1000))


def test_pil_image_is_converted_and_not_returned_as_is() -> None:
    original = Image.new("RGB", (4, 3), (255, 0, 0))
    loaded = load_image(original)
    check_red(loaded)
    assert loaded is not original
    loaded.putpixel((0, 0), (0, 0, 0))
    assert pixel(original) == (255, 0, 0), "modifying the result must not touch the input"


def test_numpy_arrays() -> None:
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    image = load_image(rgb)
    assert image.mode == "RGB" and image.size == (4, 3)
    assert pixel(image) == (0, 200, 0)

    gray = np.full((2, 5), 77, dtype=np.uint8)
    assert pixel(load_image(gray)) == (77, 77, 77)
    assert load_image(gray).size == (5, 2)

    single_channel = np.full((2, 5, 1), 9, dtype=np.uint8)
    assert pixel(load_image(single_channel)) == (9, 9, 9)

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[...] = (10, 20, 30, 0)
    assert pixel(load_image(rgba)) == (10, 20, 30), "alpha is dropped, colour kept"

    # Non-contiguous views (a horizontal flip) load with the visible pixel order.
    ramp = np.arange(4, dtype=np.uint8).reshape(1, 4).repeat(2, axis=0)
    flipped = load_image(ramp[:, ::-1])
    assert [pixel(flipped, (x, 0))[0] for x in range(4)] == [3, 2, 1, 0]


def test_bad_numpy_arrays() -> None:
    with pytest.raises(ImageError, match="dtype uint8"):
        load_image(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((1, 2, 2, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((20, 20), dtype=np.uint8), ImagePolicy(max_pixels=100))


def test_unsupported_input_type() -> None:
    with pytest.raises(ImageError, match="unsupported input type int"):
        load_image(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Pixel modes, orientation, frames and sizes


def test_exif_orientation_is_applied() -> None:
    # Left half red, right half blue; Orientation 6 means "rotate 90 degrees clockwise to view".
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(encode(image, "JPEG", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    top, bottom = pixel(loaded, (10, 5)), pixel(loaded, (10, 35))
    assert top[0] > 200 and top[2] < 60, "the red left half is now at the top"
    assert bottom[2] > 200 and bottom[0] < 60, "the blue right half is now at the bottom"


def test_pil_input_gets_the_same_orientation_as_its_file() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(Image.new("RGB", (30, 10), (0, 128, 0)), "JPEG", exif=exif)
    assert load_image(data).size == (10, 30)
    assert load_image(Image.open(io.BytesIO(data))).size == (10, 30)


def test_rgba_matches_plain_convert() -> None:
    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    rgba.putpixel((1, 1), (200, 100, 50, 128))
    loaded = load_image(encode(rgba))
    assert loaded.tobytes() == rgba.convert("RGB").tobytes()


def test_grey_and_la_and_bilevel() -> None:
    assert pixel(load_image(encode(Image.new("L", (2, 2), 99)))) == (99, 99, 99)
    assert pixel(load_image(encode(Image.new("LA", (2, 2), (99, 0))))) == (99, 99, 99)
    assert pixel(load_image(encode(Image.new("1", (2, 2), 1)))) == (255, 255, 255)


def test_palette_with_transparency() -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    palette_image.info["transparency"] = bytes([0, 255])
    data = encode(palette_image)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    loaded = load_image(data)
    assert (pixel(loaded, (0, 0)), pixel(loaded, (1, 0))) == ((255, 0, 0), (0, 255, 0))
    assert "transparency" not in loaded.info


def test_cmyk() -> None:
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert pixel(load_image(cmyk)) == (255, 0, 0)
    from_jpeg = pixel(load_image(encode(cmyk, "JPEG", quality=95)))
    assert from_jpeg[0] > 230 and from_jpeg[1] < 30 and from_jpeg[2] < 30


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    sixteen = Image.new("I;16", (4, 1))
    for x, value in enumerate((0, 257 * 128, 65535, 200)):
        sixteen.putpixel((x, 0), value)
    for source in (encode(sixteen), sixteen):
        loaded = load_image(source)
        assert [pixel(loaded, (x, 0)) for x in range(4)] == [(0, 0, 0), (128,) * 3, (255,) * 3, (1, 1, 1)]
    thirty_two = Image.new("I", (2, 1))
    thirty_two.putpixel((0, 0), 65535)
    thirty_two.putpixel((1, 0), -5)
    loaded = load_image(thirty_two)
    assert pixel(loaded, (0, 0)) == (255, 255, 255) and pixel(loaded, (1, 0)) == (0, 0, 0)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    assert getattr(opened, "n_frames", 1) == 3
    loaded = load_image(buffer.getvalue())
    assert loaded.mode == "RGB" and pixel(loaded) == (255, 0, 0)
    assert getattr(loaded, "n_frames", 1) == 1


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_animated_webp_and_apng_give_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], lossless=True)
    assert getattr(Image.open(io.BytesIO(buffer.getvalue())), "n_frames", 1) == 2
    assert pixel(load_image(buffer.getvalue())) == (255, 0, 0)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (5, 1), (100_000, 2)])
def test_tiny_and_extreme_aspect_images_load(size: tuple[int, int]) -> None:
    loaded = load_image(encode(Image.new("RGB", size, (1, 2, 3))))
    assert loaded.size == size
    assert pixel(loaded, (size[0] - 1, size[1] - 1)) == (1, 2, 3)


def test_golden_images_match_reference_conversion() -> None:
    paths = sorted(GOLDEN_IMAGES.glob("*.png"))
    assert paths, "golden images are missing"
    for path in paths:
        with Image.open(path) as reference:
            expected = reference.convert("RGB")
        loaded = load_image(path)
        assert loaded.size == expected.size, path.name
        assert loaded.tobytes() == expected.tobytes(), path.name


# --------------------------------------------------------------------------------------------
# Limits and broken inputs


def test_decompression_bomb_header_is_refused() -> None:
    # 10^10 pixels: over Pillow's own hard limit; the policy's limit is the one checked.
    with pytest.raises(ImageTooLargeError, match="max_pixels=64000000"):
        load_image(png_claiming_size(100_000, 100_000))
    # 10^8 pixels: over Pillow's warning limit; the policy (64 M) refuses it.
    with pytest.raises(ImageTooLargeError):
        load_image(png_claiming_size(10_000, 10_000))
    # 8 * 10^7 pixels: under Pillow's limits, over the policy's; refused before decoding
    # (decoding would fail as truncated, a plain ImageError).
    with pytest.raises(ImageTooLargeError, match="max_pixels=64000000"):
        load_image(png_claiming_size(20_000, 4_000))


def test_policy_above_pillow_limit_is_respected() -> None:
    # The policy allows 2 * 10^8 pixels, so Pillow's warning at 10^8 must not refuse the image;
    # it then fails only because its pixel data is missing.
    with pytest.raises(ImageError) as info:
        load_image(png_claiming_size(10_000, 10_000), ImagePolicy(max_pixels=200_000_000))
    assert not isinstance(info.value, ImageTooLargeError)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)


def test_loading_images_keeps_python_warning_deduplication() -> None:
    # issue 11 point 2: warnings.catch_warnings() on every load reset the registry that shows
    # a "default" warning once per place, so other libraries' warnings repeated on every call.
    def warn_once() -> None:
        warnings.warn("shown once", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        filters = list(warnings.filters)
        warn_once()
        load_image(encode(Image.new("RGB", (4, 4))))
        with pytest.raises(ImageTooLargeError):
            load_image(png_claiming_size(10_000, 10_000))
        warn_once()
        assert warnings.filters == filters
    assert [str(w.message) for w in caught] == ["shown once"]


def test_images_over_pillows_limit_give_no_warning_when_the_policy_allows_them() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"truncated|corrupt"):
            load_image(png_claiming_size(10_000, 10_000), ImagePolicy(max_pixels=200_000_000))


def test_small_max_pixels_policy() -> None:
    policy = ImagePolicy(max_pixels=99)
    with pytest.raises(ImageTooLargeError, match="10x10 is 100 pixels"):
        load_image(encode(Image.new("RGB", (10, 10))), policy)
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (10, 10)), policy)
    assert load_image(encode(Image.new("RGB", (9, 11))), policy).size == (9, 11)


def test_max_bytes_for_files_and_bytes(tmp_path: Path) -> None:
    data = encode(noisy_rgb(64, 64))
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    policy = ImagePolicy(max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLargeError, match="max_bytes"):
        load_image(path, policy)
    with pytest.raises(ImageTooLargeError, match="max_bytes"):
        load_image(data, policy)
    with pytest.raises(ImageTooLargeError, match="max_bytes"):
        load_image(io.BytesIO(data), policy)
    assert load_image(path, ImagePolicy(max_bytes=len(data))).size == (64, 64)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)
    with pytest.raises(ImageError, match=r"empty|no data"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path: Path, fmt: str) -> None:
    data = encode(noisy_rgb(128, 128), fmt)
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"truncated\.") as info:
        load_image(path)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)
    assert isinstance(info.value.__cause__, Exception), "the cause is chained"


def test_corrupt_header_and_random_bytes() -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(rng.integers(0, 256, size=5000, dtype=np.uint8).tobytes())
    broken = bytearray(RED_PNG)
    broken[16:20] = b"\xff\xff\xff\xff"  # IHDR width, now with a wrong checksum
    with pytest.raises(ImageError):
        load_image(bytes(broken))


def test_formats_outside_the_policy_are_refused() -> None:
    bmp = encode(Image.new("RGB", (2, 2), (1, 2, 3)), "BMP")
    assert pixel(load_image(bmp)) == (1, 2, 3)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(bmp, ImagePolicy(allowed_formats=("png", "jpeg")))
    # Names Pillow does not know here are skipped rather than crashing Pillow.
    assert pixel(load_image(bmp, ImagePolicy(allowed_formats=("NO-SUCH-FORMAT", "BMP")))) == (1, 2, 3)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "cat.png"
    with pytest.raises(ImageError, match=r"^image '.*cat\.png': file not found$") as info:
        load_image(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="directory"):
        load_image(str(tmp_path))


def test_local_files_can_be_disallowed(red_png_path: Path) -> None:
    with pytest.raises(ImageError, match="allow_local_files=False"):
        load_image(red_png_path, ImagePolicy(allow_local_files=False))
    check_red(load_image(RED_PNG, ImagePolicy(allow_local_files=False)))


def test_errors_are_value_errors_and_library_errors() -> None:
    with pytest.raises(ImageError) as info:
        load_image(b"nope")
    assert isinstance(info.value, ValueError) and isinstance(info.value, Phi3VisionError)


def test_label_replaces_description() -> None:
    with pytest.raises(ImageError, match=r"^image 'upload #3': "):
        load_image(b"garbage", label="upload #3")


# --------------------------------------------------------------------------------------------
# load_images, describe_source, image_fingerprint, policy


def test_load_images_names_the_failing_index(red_png_path: Path) -> None:
    loaded = load_images([red_png_path, RED_PNG])
    assert len(loaded) == 2 and all(image.size == (4, 3) for image in loaded)
    with pytest.raises(ImageError, match=r"^image 2 \(.*missing\.png\): file not found"):
        load_images([red_png_path, red_png_path.parent / "missing.png", RED_PNG])
    with pytest.raises(ImageTooLargeError, match=r"^image 1 \(bytes \("):
        load_images([encode(Image.new("RGB", (10, 10)))], ImagePolicy(max_pixels=10))
    with pytest.raises(ImageError, match="single"):
        load_images(str(red_png_path))


def test_describe_source() -> None:
    assert describe_source("cat.png") == "cat.png"
    assert describe_source(Path("dir") / "cat.png") == str(Path("dir") / "cat.png")
    assert describe_source(b"1234") == "bytes (4 bytes)"
    assert describe_source(Image.new("RGB", (3, 2))) == "PIL image (RGB, 3x2)"
    assert describe_source(np.zeros((2, 3, 3), np.uint8)) == "numpy array of shape (2, 3, 3) and dtype uint8"
    assert describe_source(io.BytesIO()) == "file object"
    assert describe_source("data:image/png;base64,AAAA").startswith("data URI (image/png")
    # Credentials and query strings (signed URLs) never reach messages.
    described = describe_source("https://user:secret@example.com/a.png?token=abc")
    assert described == "https://example.com/a.png?..."
    assert len(describe_source("x" * 10_000)) < 200


def test_image_fingerprint() -> None:
    a = Image.new("RGB", (5, 4), (1, 2, 3))
    same = Image.new("RGB", (5, 4), (1, 2, 3))
    different = same.copy()
    different.putpixel((4, 3), (1, 2, 4))
    assert image_fingerprint(a) == image_fingerprint(same)
    assert len(image_fingerprint(a)) == 64 and int(image_fingerprint(a), 16) >= 0
    assert image_fingerprint(a) != image_fingerprint(different)
    assert image_fingerprint(a) != image_fingerprint(Image.new("RGB", (4, 5), (1, 2, 3)))
    assert image_fingerprint(a) != image_fingerprint(a.convert("RGBA"))
    # Round trip through a lossless file keeps the fingerprint.
    assert image_fingerprint(load_image(encode(a))) == image_fingerprint(a)
    # Hashing in strips gives the same result as for an image of a single strip.
    tall = noisy_rgb(2000, 1200)
    assert image_fingerprint(tall) == image_fingerprint(Image.frombytes("RGB", tall.size, tall.tobytes()))
    with pytest.raises(ImageError):
        image_fingerprint("not an image")  # type: ignore[arg-type]


def test_policy_defaults_and_validation() -> None:
    policy = ImagePolicy()
    assert policy.max_pixels == 64_000_000
    assert policy.max_bytes == 50 * 1024 * 1024
    assert (policy.connect_timeout, policy.read_timeout, policy.max_redirects) == (5.0, 30.0, 5)
    assert policy.allowed_schemes == frozenset({"http", "https"})
    assert policy.allow_private_urls is True
    assert policy.download_deadline == 65.0
    assert ImagePolicy(total_timeout=2).download_deadline == 2.0
    assert ImagePolicy.model_validate({"allowed_schemes": ["HTTPS"]}).allowed_schemes == frozenset({"https"})
    with pytest.raises(OptionsError, match="max_pixels"):
        make_policy(max_pixels=0)
    with pytest.raises(OptionsError, match="allowed_schemes"):
        make_policy(allowed_schemes=["file"])
    with pytest.raises(OptionsError, match="no_such_option"):
        make_policy(no_such_option=1)
    with pytest.raises(Exception, match="frozen"):
        policy.max_pixels = 1
    assert make_policy(max_bytes=10).max_bytes == 10


def test_import_is_light() -> None:
    code = (
        "import sys, phi3vision.images; "
        "print(sorted(m for m in ('torch', 'numpy', 'requests') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# URLs, against a local server

GOOD_PNG = encode(Image.new("RGB", (6, 5), (0, 0, 255)))
HTML = b"<!doctype html><html><body>not an image</body></html>"


class Handler(BaseHTTPRequestHandler):
    """Serves one behaviour per path. Every handler is bounded in time and size so that the
    server threads always end."""

    def log_message(self, format: str, *args: object) -> None:  # silence the default logging
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        # The client hanging up is expected for the hostile paths.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.route()

    def route(self) -> None:
        path = self.path
        if path == "/good.png":
            self.send(200, GOOD_PNG, {"Content-Type": "image/png"})
        elif path == "/octet":
            self.send(200, GOOD_PNG, {"Content-Type": "application/octet-stream"})
        elif path == "/no-type":
            self.send(200, GOOD_PNG)
        elif path == "/gzip":
            self.send(200, gzip.compress(GOOD_PNG), {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif path == "/gzip-bomb":
            bomb = gzip.compress(b"\0" * (16 * 1024 * 1024), compresslevel=9)
            self.send(200, bomb, {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif path == "/missing":
            self.send(404, b"not found", {"Content-Type": "text/plain"})
        elif path == "/server-error":
            self.send(500, b"oops", {"Content-Type": "text/plain"})
        elif path == "/hop1":
            self.send(302, headers={"Location": "/hop2"})
        elif path == "/hop2":
            self.send(301, headers={"Location": f"http://{self.headers['Host']}/good.png"})
        elif path == "/loop":
            self.send(302, headers={"Location": "/loop"})
        elif path.startswith("/chain/"):
            self.send(302, headers={"Location": f"/chain/{int(path.rsplit('/', 1)[1]) + 1}"})
        elif path == "/to-file":
            self.send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/to-localhost":
            self.send(
                302,
                headers={"Location": f"http://localhost:{self.headers['Host'].rsplit(':', 1)[1]}/good.png"},
            )
        elif path == "/stall":
            time.sleep(3)
            self.send(200, GOOD_PNG, {"Content-Type": "image/png"})
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = b"\0" * 65536
            for _ in range(1024):  # at most 64 MiB
                self.wfile.write(chunk)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for index in range(40):  # at most 4 s
                self.wfile.write(GOOD_PNG[index : index + 1])
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/huge-length":
            self.send(200, GOOD_PNG, {"Content-Type": "image/png", "Content-Length": str(10**9)})
        elif path == "/html":
            self.send(200, HTML, {"Content-Type": "text/html; charset=utf-8"})
        elif path == "/lying":
            self.send(200, HTML, {"Content-Type": "image/png"})
        else:
            self.send(404)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment would take local requests elsewhere."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


FAST = ImagePolicy(connect_timeout=2, read_timeout=2)


def test_url_good_png(server: str) -> None:
    for path in ("/good.png", "/octet", "/no-type", "/gzip"):
        image = load_image(server + path, FAST)
        assert image.size == (6, 5) and pixel(image) == (0, 0, 255), path


def test_url_http_errors(server: str) -> None:
    with pytest.raises(ImageError, match="HTTP error 404"):
        load_image(server + "/missing", FAST)
    with pytest.raises(ImageError, match="HTTP error 500"):
        load_image(server + "/server-error", FAST)


def test_url_redirects(server: str) -> None:
    assert load_image(server + "/hop1", FAST).size == (6, 5)
    with pytest.raises(ImageError, match="redirect"):
        load_image(server + "/hop1", FAST.model_copy(update={"max_redirects": 1}))
    with pytest.raises(ImageError, match="redirect loop"):
        load_image(server + "/loop", FAST)
    with pytest.raises(ImageError, match=r"too many redirects \(more than max_redirects=3\)"):
        load_image(server + "/chain/0", FAST.model_copy(update={"max_redirects": 3}))
    with pytest.raises(ImageError, match=r"redirect 1 .*scheme 'file' is not allowed"):
        load_image(server + "/to-file", FAST)


def test_url_stall_times_out(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageError, match="timeout"):
        load_image(server + "/stall", ImagePolicy(connect_timeout=1, read_timeout=0.5))
    assert time.monotonic() - started < 2.5


def test_url_trickle_hits_total_deadline(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"timeout.*total_timeout"):
        load_image(server + "/trickle", ImagePolicy(connect_timeout=1, read_timeout=0.5, total_timeout=0.8))
    assert time.monotonic() - started < 2.5


def test_url_endless_body_stops_at_max_bytes(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageTooLargeError, match="max_bytes=1048576"):
        load_image(server + "/endless", ImagePolicy(max_bytes=1024 * 1024, connect_timeout=2, read_timeout=2))
    assert time.monotonic() - started < 5


def test_url_gzip_bomb_stops_at_max_bytes(server: str) -> None:
    with pytest.raises(ImageTooLargeError, match="max_bytes"):
        load_image(
            server + "/gzip-bomb", ImagePolicy(max_bytes=1024 * 1024, connect_timeout=2, read_timeout=2)
        )


def test_url_content_length_over_limit(server: str) -> None:
    with pytest.raises(ImageTooLargeError, match="Content-Length"):
        load_image(server + "/huge-length", FAST)


def test_url_content_type_and_content(server: str) -> None:
    with pytest.raises(ImageError, match="Content-Type 'text/html'"):
        load_image(server + "/html", FAST)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(server + "/lying", FAST)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/cat.png", "gopher://example.com/", "file:/etc/passwd"]
)
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(ImageError, match=r"scheme .* is not allowed"):
        load_image(url)


def test_malformed_url_and_connection_refused() -> None:
    with pytest.raises(ImageError, match="no host"):
        load_image("http:///cat.png")
    with pytest.raises(ImageError, match="malformed URL"):
        load_image("http://127.0.0.1:99999/cat.png")
    with pytest.raises(ImageError, match="cannot connect"):
        load_image("http://127.0.0.1:1/cat.png", FAST)


def test_private_urls_can_be_refused(server: str) -> None:
    strict = FAST.model_copy(update={"allow_private_urls": False})
    with pytest.raises(ImageError, match=r"non-public address 127\.0\.0\.1"):
        load_image(server + "/good.png", strict)
    with pytest.raises(ImageError, match="allow_private_urls=False"):
        load_image(server.replace("127.0.0.1", "localhost") + "/good.png", strict)
    assert load_image(server + "/good.png", FAST).size == (6, 5), "the default policy allows it"


def test_private_redirect_target_is_refused(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend 127.0.0.1 is a public address so the first hop passes (when checked and when
    connected); the redirect to 'localhost' must still be checked and refused."""
    real_resolve = downloader._resolve

    def fake_resolve(host: str, port: int) -> list[str]:
        return ["10.0.0.1"] if host == "localhost" else real_resolve(host, port)

    monkeypatch.setattr(downloader, "_is_public", lambda address: address == "127.0.0.1")
    monkeypatch.setattr(downloader, "_resolve", fake_resolve)
    strict = FAST.model_copy(update={"allow_private_urls": False})
    assert load_image(server + "/good.png", strict).size == (6, 5)
    with pytest.raises(
        ImageError, match=r"redirect 1 to http://localhost:\d+/good\.png: .*non-public address 10\.0\.0\.1"
    ):
        load_image(server + "/to-localhost", strict)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),  # cloud metadata service
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_public_address_classification(address: str, public: bool) -> None:
    assert downloader._is_public(address) is public


def test_url_failure_in_load_images_names_the_index(server: str) -> None:
    with pytest.raises(ImageError, match=r"^image 2 \(http://127\.0\.0\.1:\d+/missing\): HTTP error 404"):
        load_images([server + "/good.png", server + "/missing"], FAST)
