"""The fake against the real engine (the tiny random-weight model): same errors with the same
messages, same token counts, same model inputs, same stop rules, same result shapes. A
difference here means a test passing on the fake could fail on a real model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from phi3vision import Phi3VisionError, Prompt, VisionModel
from phi3vision.testing import FakeVisionModel

from .conftest import make_photo

Model = Any  # VisionModel or FakeVisionModel: the point is that the calls are the same


@pytest.fixture(scope="module")
def broken_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("broken") / "cover.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return path


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    """The error a call raises, as (type name, message); ("ok", "") when it raises none."""
    try:
        call()
    except Phi3VisionError as exc:
        return type(exc).__name__, str(exc)
    return "ok", ""


BAD_CALLS: dict[str, Callable[[Model, Path], object]] = {
    "missing file": lambda m, _: m.describe("/no/such/cover.png"),
    "broken file": lambda m, broken: m.describe(broken),
    "not an image": lambda m, _: m.ask("What?", [12345]),
    "placeholder without image": lambda m, _: m.generate("<|image_1|>\nWhat?"),
    "images twice": lambda m, _: m.generate(Prompt().user("Hi", images=[make_photo()]), [make_photo()]),
    "chat marker in text": lambda m, _: m.ask("<|end|>"),
    "empty question": lambda m, _: m.ask(""),
    "unknown option": lambda m, _: m.generate("Hi", max_length=5),
    "option out of range": lambda m, _: m.generate("Hi", top_p=0),
    "bad options object": lambda m, _: m.generate("Hi", options="greedy"),
    "bad num_crops": lambda m, _: m.describe(make_photo(), num_crops=100),
    "bad schema": lambda m, _: m.extract(make_photo(), str),
    "bad batch_size": lambda m, _: m.generate_batch(["Hi"], batch_size=-1),
    "too long": lambda m, _: m.describe(make_photo(), max_new_tokens=131072),
    "stream too long": lambda m, _: m.stream("Hi", max_new_tokens=131072),
    "bad count_tokens image": lambda m, broken: m.count_tokens("<|image_1|>", [broken]),
    "too many images": lambda m, _: m.generate(
        "".join(f"<|image_{n}|>" for n in range(1, 34)), [make_photo()] * 33
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_calls_fail_the_same_way(name: str, tiny_vision_model: VisionModel, broken_file: Path) -> None:
    fake = FakeVisionModel()
    real = outcome(lambda: BAD_CALLS[name](tiny_vision_model, broken_file))
    assert real[0] != "ok"
    assert outcome(lambda: BAD_CALLS[name](fake, broken_file)) == real


@pytest.mark.parametrize(("width", "height"), [(640, 480), (300, 1200), (1500, 100), (50, 50)])
@pytest.mark.parametrize("num_crops", [1, 4, 16])
def test_token_counts_are_the_same(
    tiny_vision_model: VisionModel, width: int, height: int, num_crops: int
) -> None:
    prompt = Prompt(system="Be brief.").user(
        "Compare these.", images=[make_photo(width, height), make_photo()]
    )
    fake = FakeVisionModel()
    assert fake.count_tokens(prompt, num_crops=num_crops) == tiny_vision_model.count_tokens(
        prompt, num_crops=num_crops
    )


def test_usage_and_result_shape_are_the_same(tiny_vision_model: VisionModel) -> None:
    fake = FakeVisionModel(default="one two three four five six seven eight")
    prompt = Prompt().user("Describe.", images=[make_photo(800, 600)])
    for options in ({"max_new_tokens": 4, "stop": []}, {"max_new_tokens": 4}):
        real_result = tiny_vision_model.generate(prompt, num_crops=4, **options)
        fake_result = fake.generate(prompt, num_crops=4, **options)
        assert type(fake_result) is type(real_result)
        assert fake_result.usage == real_result.usage  # prompt, image and completion tokens
        assert fake_result.finish_reason == real_result.finish_reason == "length"
        assert len(fake_result.token_ids) == len(real_result.token_ids)
        assert fake_result.model is not None and real_result.model is not None
        assert fake_result.model.model_fields_set == real_result.model.model_fields_set
    described = tiny_vision_model.describe(make_photo(), num_crops=1, max_new_tokens=2)
    assert type(fake.describe(make_photo(), num_crops=1)) is type(described)


def test_streams_behave_the_same(tiny_vision_model: VisionModel) -> None:
    for model in (tiny_vision_model, FakeVisionModel()):
        stream = model.stream(
            Prompt().user("Say something.", images=[make_photo()]), num_crops=1, max_new_tokens=6
        )
        with pytest.raises(RuntimeError):
            stream.result  # noqa: B018 - not available before the end
        pieces = list(stream)
        assert all(isinstance(piece, str) and piece for piece in pieces)
        assert "".join(pieces) == stream.result.text == stream.text


def test_batches_fail_item_by_item_the_same_way(tiny_vision_model: VisionModel, broken_file: Path) -> None:
    items: list[Any] = [
        Prompt().user("First.", images=[make_photo()]),
        Prompt().user("Second.", images=[broken_file]),
        ("<|user|>\nThird<|end|>\n<|assistant|>\n", []),
        ("<|image_1|><|image_1|>", [make_photo(), make_photo()]),
    ]
    real = tiny_vision_model.generate_batch(items, num_crops=1, max_new_tokens=3)
    fake = FakeVisionModel().generate_batch(items, num_crops=1, max_new_tokens=3)
    assert [r.error for r in fake] == [r.error for r in real]
    assert [r.finish_reason == "error" for r in fake] == [False, True, False, True]
    assert [r.usage.prompt_tokens for r in fake] == [r.usage.prompt_tokens for r in real]


def test_encode_gives_the_real_model_inputs(tiny_vision_model: VisionModel) -> None:
    prompt = Prompt().user("What?", images=[make_photo(500, 700)])
    real = tiny_vision_model.encode(prompt, num_crops=4)
    fake = FakeVisionModel().encode(prompt, num_crops=4)
    assert torch.equal(fake.input_ids, real.input_ids)
    assert torch.equal(fake.pixel_values, real.pixel_values)
    assert torch.equal(fake.image_sizes, real.image_sizes)
    assert fake.image_token_counts == real.image_token_counts


def test_instance_attributes_match(tiny_vision_model: VisionModel) -> None:
    """Public attributes set in ``__init__`` (not visible on the class) exist on both."""
    torch_only = {"device", "dtype"}  # torch objects
    real = {name for name in vars(tiny_vision_model) if not name.startswith("_")} - torch_only
    fake = {name for name in vars(FakeVisionModel()) if not name.startswith("_")}
    assert real <= fake
    assert fake - real == {"tokens_per_second"}
