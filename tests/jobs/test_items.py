"""``phi3vision.jobs.items``: folders, glob patterns and manifests become ``BatchItem``s."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3vision import OptionsError
from phi3vision.jobs import BatchItem, collect_items, read_manifest


def test_folder_items_are_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.txt", ".d.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.webp").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "f.png").write_bytes(b"x")
    assert [Path(i.key).name for i in collect_items(tmp_path)] == ["a.jpg", "b.PNG"]
    deep = collect_items(str(tmp_path), recursive=True)
    assert [Path(i.key).relative_to(tmp_path).as_posix() for i in deep] == ["a.jpg", "b.PNG", "sub/e.webp"]
    assert all(i.source == i.key == i.image for i in deep)


def test_glob_patterns(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [Path(i.key).name for i in collect_items(str(tmp_path / "*.png"))] == ["a.png", "b.png"]
    assert [Path(i.key).name for i in collect_items(str(tmp_path / "**" / "*.png"))] == [
        "a.png",
        "b.png",
        "d.png",
    ]
    with pytest.raises(OptionsError, match="no files match"):
        collect_items(str(tmp_path / "*.gif"))
    with pytest.raises(OptionsError, match="input not found"):
        collect_items(str(tmp_path / "missing.png"))


def test_empty_folder_and_duplicates_are_errors(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="no images in folder"):
        collect_items(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(OptionsError, match="duplicate key"):
        collect_items([tmp_path, tmp_path / "a.png"])
    with pytest.raises(OptionsError, match="no inputs"):
        collect_items([])


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "sub" / "list.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(
        '{"image": "a.png"}\n'
        '{"image": "https://example.com/b.png?sig=1", "question": "Q?"}\n'
        '{"image": "/abs/c.png", "key": "c", "question": ""}\n'
    )
    a, b, c = read_manifest(manifest)
    assert a == BatchItem(key="a.png", image="a.png", source=str(manifest.parent / "a.png"), origin=a.origin)
    assert a.origin == f"{manifest} line 1"
    assert b.source == "https://example.com/b.png?sig=1" and b.question == "Q?"
    assert c.key == "c" and c.source == "/abs/c.png" and c.question is None


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".jsonl", '{"image": "a.png"}\n[1, 2]\n', "line 2: expected a JSON object"),
        (".jsonl", '{"question": "q"}\n', "line 1: no 'image' given"),
        (".jsonl", '{"image": 5}\n', "line 1: 'image' must be a string"),
        (".jsonl", '{"image": "a.png"}\n{"image": "a.png"}\n', "duplicate key 'a.png'"),
        (".jsonl", "\n\n", "lists no images"),
        (".csv", "picture,question\na.png,q\n", "line 1: the header must name the columns"),
        (".csv", "image,question\na.png,q,extra\n", "line 2: 3 cells but the header has 2"),
        (".csv", "image,key\n,k\n", "line 2: no 'image' given"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path: Path, suffix: str, content: str, message: str) -> None:
    manifest = tmp_path / f"m{suffix}"
    manifest.write_text(content)
    with pytest.raises(OptionsError, match=message) as caught:
        read_manifest(manifest)
    assert str(manifest) in str(caught.value)


def test_csv_manifest_with_bom_and_quoted_commas(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes('\ufeffImage,Question\r\na.png,"Red, or blue?"\r\nb.png,\r\n'.encode())
    a, b = read_manifest(manifest)
    assert a.question == "Red, or blue?" and b.question is None
    assert a.origin.endswith("line 2") and b.origin.endswith("line 3")


def test_manifest_sources_follow_the_loaders_classifier(tmp_path: Path) -> None:
    """One answer to "is this a URL?": what the image loader fetches is never joined to the
    manifest's folder, and what it reads from disk always is."""
    from phi3vision.images.sources import source_kind

    images = ["data:image/png;base64,AAAA", "HTTPS://example.com/x.png", "file:x.png", "c:/x.png", "d.png"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(f'{{"image": "{image}"}}\n' for image in images))
    for item in read_manifest(manifest):
        remote = source_kind(item.image) in ("url", "data_uri")
        assert item.source == (item.image if remote else str(tmp_path / item.image)), item
    assert [source_kind(image) for image in images] == ["data_uri", "url", "url", "path", "path"]
