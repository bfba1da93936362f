"""Image inputs: one way to turn whatever the caller has into a fully loaded RGB ``PIL.Image``.

Every public entry point of the library that takes images goes through :func:`load_image`, so
that paths, URLs, bytes, data URIs, PIL images and numpy arrays behave the same everywhere, and
so that the safety limits of :class:`ImagePolicy` (pixel count, byte size, download time,
redirects, private addresses) are applied in exactly one place.

The parts: ``policy`` (ImagePolicy), ``sources`` (what an input is, and how to name it in a
message), ``readers`` (files, file objects, data URIs, arrays), ``download`` (URLs, and the
SSRF model), ``decode`` (bytes -> RGB image) and ``fingerprint`` (cache keys).

Importing this package stays cheap: numpy and requests are imported inside the functions that
need them, and torch is never imported here.
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image

from ..errors import ImageError
from .context import Context
from .decode import decode, finish
from .download import fetch_url
from .fingerprint import image_fingerprint
from .policy import DEFAULT_FORMATS, DEFAULT_POLICY, ImagePolicy, check_policy, make_policy
from .readers import from_array, from_bytes, from_data_uri, read_file_object, read_path
from .sources import ImageInput, SourceKind, describe_source, is_remote, source_kind

__all__ = [
    "DEFAULT_FORMATS",
    "ImageInput",
    "ImagePolicy",
    "SourceKind",
    "check_policy",
    "describe_source",
    "image_fingerprint",
    "is_remote",
    "load_image",
    "load_images",
    "make_policy",
    "source_kind",
]


def load_image(
    source: ImageInput, policy: ImagePolicy | None = None, *, label: str | None = None
) -> Image.Image:
    """Load one image input as a new, fully decoded RGB image.

    EXIF orientation is applied and every pixel mode becomes RGB, so that the same picture gives
    the same pixels whichever way it was passed in. ``label`` replaces the automatic
    description of ``source`` in error messages. Raises :class:`ImageError` (or
    :class:`ImageTooLargeError` for a limit of ``policy``) naming the input and the reason.
    """
    description = label if label is not None else describe_source(source)
    return _load(source, Context(f"image '{description}'", _policy(policy)))


def load_images(sources: Iterable[ImageInput], policy: ImagePolicy | None = None) -> list[Image.Image]:
    """Load several image inputs in order; a failure names the 1-based position of the input.

    The error message starts with ``image N (description)`` so that a user who passed ten
    images learns which one was wrong.
    """
    if source_kind(sources) not in ("file", "unsupported"):
        raise ImageError(
            f"load_images expects a list of images, got a single {describe_source(sources)}; "
            "use load_image or wrap it in a list"
        )
    try:
        iterator = iter(sources)
    except TypeError:
        raise ImageError(f"load_images expects a list of images, got {describe_source(sources)}") from None
    chosen_policy = _policy(policy)
    return [
        _load(source, Context(f"image {index} ({describe_source(source)})", chosen_policy))
        for index, source in enumerate(iterator, start=1)
    ]


def _policy(policy: object) -> ImagePolicy:
    checked = check_policy(policy)
    return DEFAULT_POLICY if checked is None else checked


def _load(source: object, context: Context) -> Image.Image:
    """Dispatch on the kind of input (sources.source_kind); each branch ends in ``finish``."""
    kind = source_kind(source)
    value: object = source
    if kind == "pil":
        return finish(value, context, owned=False)  # type: ignore[arg-type]
    if kind == "array":
        return finish(from_array(value, context), context)
    if kind == "bytes":
        data = from_bytes(value, context)  # type: ignore[arg-type]
    elif kind == "data_uri":
        data = from_data_uri(str(value), context)
    elif kind == "url":
        data = fetch_url(str(value), context)
    elif kind == "path":
        data = read_path(value, context)  # type: ignore[arg-type]
    elif kind == "file":
        data = read_file_object(value, context)
    else:
        context.fail(
            f"unsupported input type {type(source).__name__}; expected a path, an http(s) URL, a data "
            "URI, bytes, a binary file object, a PIL image or a uint8 numpy array"
        )
    return decode(data, context)
