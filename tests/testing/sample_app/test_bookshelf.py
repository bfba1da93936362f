"""bookshelf's own tests, as its authors would write them with phi3vision's fixtures:
``fake_vision_model`` for the logic (no torch, milliseconds), ``tiny_vision_model`` to check
that the same code runs on the real engine end to end."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from PIL import Image

from phi3vision import OutputParseError, VisionModel
from phi3vision.testing import FakeCall, FakeVisionModel

from .bookshelf import CAPTION_REQUEST, BookInfo, book_info, caption_folder, live_answer


def as_model(fake: FakeVisionModel) -> VisionModel:
    """The fake has VisionModel's interface but is not a subclass: say so to the type checker."""
    return cast(VisionModel, fake)


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    Image.new("RGB", (320, 240), (200, 40, 40)).save(tmp_path / "a-red.png")
    Image.new("L", (240, 320), 90).save(tmp_path / "b-grey.jpg")
    (tmp_path / "c-broken.jpg").write_bytes(b"\xff\xd8 not a real jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


# -- with the fake model --------------------------------------------------------------------


def test_book_info_reads_the_cover(fake_vision_model: FakeVisionModel, shelf: Path) -> None:
    fake_vision_model.script({"extract": '{"title": "ALONE", "author": "Morgan Maxwell"}'})
    assert book_info(as_model(fake_vision_model), shelf / "a-red.png") == BookInfo(
        title="ALONE", author="Morgan Maxwell"
    )
    (call,) = fake_vision_model.calls
    assert call.schema is BookInfo
    assert call.images[0].size == (320, 240)
    assert call.options.max_new_tokens == 96


def test_book_info_gives_up_without_a_valid_answer(fake_vision_model: FakeVisionModel, shelf: Path) -> None:
    fake_vision_model.script([OutputParseError("no valid BookInfo")])
    assert book_info(as_model(fake_vision_model), shelf / "a-red.png") is None
    assert fake_vision_model.pending_responses == 0


def test_caption_folder_captions_every_image_and_survives_a_broken_one(
    fake_vision_model: FakeVisionModel, shelf: Path
) -> None:
    def caption(call: FakeCall) -> str:
        width, height = call.images[0].size
        return f"A {'wide' if width > height else 'tall'} picture\nand a second line to cut"

    fake_vision_model.script(caption)
    captions = caption_folder(as_model(fake_vision_model), shelf)
    assert [c.file for c in captions] == ["a-red.png", "b-grey.jpg", "c-broken.jpg"]
    assert [c.text for c in captions] == ["A wide picture", "A tall picture", None]
    assert captions[2].error is not None and "c-broken.jpg" in captions[2].error
    assert all(CAPTION_REQUEST in call.prompt for call in fake_vision_model.calls)
    assert captions[0].tokens > fake_vision_model.calls[0].image_tokens


def test_live_answer_streams_the_whole_answer(fake_vision_model: FakeVisionModel, shelf: Path) -> None:
    fake_vision_model.script(default="A red square on a white wall.")
    pieces = list(live_answer(as_model(fake_vision_model), "What is this?", shelf / "a-red.png"))
    assert len(pieces) > 1
    assert "".join(pieces) == "A red square on a white wall."


# -- on the real engine (random weights: the wiring is checked, not the answers) -------------


def test_caption_folder_runs_on_the_real_engine(tiny_vision_model: VisionModel, shelf: Path) -> None:
    captions = caption_folder(tiny_vision_model, shelf, max_new_tokens=4)
    assert [c.file for c in captions] == ["a-red.png", "b-grey.jpg", "c-broken.jpg"]
    assert all(isinstance(c.text, str) for c in captions[:2])
    assert captions[2].text is None and captions[2].error is not None
    assert all(c.tokens > 1000 for c in captions[:2])  # each image is over a thousand tokens


def test_book_info_handles_a_model_that_writes_no_json(tiny_vision_model: VisionModel, shelf: Path) -> None:
    assert book_info(tiny_vision_model, shelf / "a-red.png", max_new_tokens=16) is None


def test_live_answer_runs_on_the_real_engine(tiny_vision_model: VisionModel, shelf: Path) -> None:
    pieces = list(live_answer(tiny_vision_model, "What is this?", shelf / "b-grey.jpg", max_new_tokens=8))
    assert 0 < len(pieces) <= 8
    assert all(isinstance(piece, str) and piece for piece in pieces)
