"""What a job runs over: ``BatchItem``s from folders, glob patterns, manifests and image files."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionsError
from ..images.sources import is_remote  # URLs and data URIs are never joined to a folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "BatchItem",
    "check_unique_keys",
    "collect_items",
    "find_images",
    "read_manifest",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
)
"""File name endings picked up when a folder is given (compared case-insensitively)."""

MANIFEST_SUFFIXES: frozenset[str] = frozenset({".jsonl", ".csv"})
"""An input file ending in one of these is read as a manifest, not as an image."""

_MANIFEST_FIELDS = ("image", "question", "key")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class BatchItem:
    """One image to process.

    ``key`` names the item in the output and must be unique within a job; it defaults to the
    image as given. ``image`` is the image as given (written back in the output), ``source`` is
    what is loaded (a manifest-relative path resolved, or a URL unchanged), ``question`` the
    item's own question for the ask task, and ``origin`` says where the item came from
    ("list.csv line 4"), for messages.
    """

    key: str
    image: str
    source: str
    question: str | None = None
    origin: str = ""


def find_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by extension, see ``IMAGE_EXTENSIONS``), sorted by their
    path inside the folder so that the order, and so the output, is the same on every run.

    Hidden files and folders (names starting with ".") are skipped: they are editor and OS
    leftovers such as macOS's ``._photo.jpg``, which look like images but are not.
    """
    root = Path(folder)
    candidates = root.rglob("*") if recursive else root.iterdir()
    found: list[tuple[str, Path]] = []
    for path in candidates:
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append((relative.as_posix(), path))
    return [path for _, path in sorted(found, key=lambda pair: pair[0])]


def collect_items(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> list[BatchItem]:
    """The items of one or more inputs, in order. Each input is a folder (its images, sorted;
    ``recursive`` descends into subfolders), a ``.jsonl`` or ``.csv`` manifest (see
    ``read_manifest``), a glob pattern such as ``"scans/*.png"``, or a single image file (which
    is what a shell-expanded glob gives). Keys must be unique across all inputs.

    Raises ``OptionsError`` naming the input that does not exist or holds no images.
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not entries:
        raise OptionsError("no inputs given: name a folder, a glob pattern, a manifest or image files")
    items: list[BatchItem] = []
    for entry in entries:
        items.extend(_items_from(os.fspath(entry), recursive))
    check_unique_keys(items)
    return items


def _file_item(path: str, origin: str) -> BatchItem:
    return BatchItem(key=path, image=path, source=path, origin=origin)


def _items_from(text: str, recursive: bool) -> list[BatchItem]:
    path = Path(text)
    if path.is_dir():
        images = find_images(path, recursive=recursive)
        if not images:
            where = "or its subfolders " if recursive else ""
            raise OptionsError(
                f"no images in folder {text} {where}(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
                + ("" if recursive else "; use recursive (--recursive) to look in subfolders")
                + ")"
            )
        return [_file_item(str(image), f"folder {text}") for image in images]
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return read_manifest(path)
        return [_file_item(text, "command line")]
    if _GLOB_CHARACTERS.intersection(text):
        matches = sorted(m for m in glob.glob(text, recursive=True) if Path(m).is_file())
        if not matches:
            raise OptionsError(f"no files match the pattern {text!r}")
        return [_file_item(match, f"pattern {text}") for match in matches]
    raise OptionsError(f"input not found: {text} (expected a folder, a manifest, a glob pattern or an image)")


def check_unique_keys(items: Sequence[BatchItem]) -> None:
    """Keys name results in the output file; two items with one key could not be told apart."""
    first: dict[str, BatchItem] = {}
    for item in items:
        earlier = first.setdefault(item.key, item)
        if earlier is not item:
            raise OptionsError(
                f"duplicate key {item.key!r} ({earlier.origin} and {item.origin}): give each item its own key"
            )


def read_manifest(path: str | os.PathLike[str]) -> list[BatchItem]:
    """The items listed in a manifest: a ``.jsonl`` file with one object per line, such as
    ``{"image": "a.png", "question": "...", "key": "..."}``, or a ``.csv`` file with a header row
    naming the columns ``image`` and optionally ``question`` and ``key``.

    Relative image paths are relative to the manifest's folder, so a manifest can move with its
    images. Blank JSONL lines and empty CSV cells are ignored; any other field is refused, so a
    misspelt "question" cannot silently be dropped. Errors are ``OptionsError`` naming the line.
    """
    manifest = Path(path)
    suffix = manifest.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise OptionsError(f"manifest {manifest}: expected a .jsonl or .csv file")
    try:
        # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise OptionsError(f"manifest not found: {manifest}") from exc
    except OSError as exc:
        raise OptionsError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise OptionsError(
            f"manifest {manifest} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    rows = _jsonl_rows(manifest, text) if suffix == ".jsonl" else _csv_rows(manifest, text)
    items = [_manifest_item(manifest, line, row) for line, row in rows]
    if not items:
        raise OptionsError(f"manifest {manifest} lists no images")
    check_unique_keys(items)
    return items


def _jsonl_rows(manifest: Path, text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise OptionsError(f"{manifest} line {number}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise OptionsError(
                f'{manifest} line {number}: expected a JSON object like {{"image": "a.png"}}, '
                f"got {type(row).__name__}"
            )
        yield number, row


def _csv_rows(manifest: Path, text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip().lower() for name in header]
        unknown = [name for name in columns if name not in _MANIFEST_FIELDS]
        if unknown or "image" not in columns or len(set(columns)) != len(columns):
            raise OptionsError(
                f"{manifest} line 1: the header must name the columns image[,question][,key] "
                f"(once each), got {','.join(header)!r}"
            )
        for cells in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(columns):
                raise OptionsError(
                    f"{manifest} line {number}: {len(cells)} cells but the header has {len(columns)} "
                    "columns (quote cells that contain commas)"
                )
            yield number, {name: cell for name, cell in zip(columns, cells, strict=False) if cell.strip()}
    except csv.Error as exc:
        raise OptionsError(f"{manifest} line {reader.line_num}: malformed CSV ({exc})") from exc


def _optional_text(manifest: Path, number: int, row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise OptionsError(f"{manifest} line {number}: {name!r} must be a string, got {json.dumps(value)}")
    return value if value.strip() else None


def _manifest_item(manifest: Path, number: int, row: Mapping[str, Any]) -> BatchItem:
    origin = f"{manifest} line {number}"
    unknown = sorted(set(row) - set(_MANIFEST_FIELDS))
    if unknown:
        raise OptionsError(
            f"{origin}: unknown field(s) {', '.join(repr(name) for name in unknown)}; "
            f"allowed: {', '.join(_MANIFEST_FIELDS)}"
        )
    image = _optional_text(manifest, number, row, "image")
    if image is None:
        raise OptionsError(f"{origin}: no 'image' given")
    source = image if is_remote(image) else str(manifest.parent / image)
    key = _optional_text(manifest, number, row, "key") or image
    return BatchItem(
        key=key,
        image=image,
        source=source,
        question=_optional_text(manifest, number, row, "question"),
        origin=origin,
    )
