"""Limits are checked before any model work, with errors that say what to change; an
out-of-memory error becomes the library's error and leaves the model usable."""

from __future__ import annotations

import pytest
import torch

from phi3vision import (
    ContextLengthError,
    ImagePolicy,
    ImageTooLargeError,
    OutOfMemoryError,
    Prompt,
    PromptError,
    RequestLimits,
    VisionModel,
)

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

SQUARE = GOLDEN / "images" / "square336.png"


@pytest.fixture(scope="module")
def limited_model():
    limits = RequestLimits(max_images=2, max_image_tokens=700, max_prompt_tokens=1200)
    policy = ImagePolicy(max_pixels=200 * 200)
    with VisionModel.from_pretrained(
        GOLDEN_CHECKPOINT, device="cpu", dtype="float32", limits=limits, image_policy=policy
    ) as model:
        yield model


@pytest.fixture
def no_model_work(limited_model, monkeypatch):
    monkeypatch.setattr(limited_model.engine, "run", lambda *a, **k: pytest.fail("model work started"))
    return limited_model


def test_too_many_images(no_model_work, tmp_path):
    small = tmp_path / "small.png"
    from PIL import Image

    Image.new("RGB", (50, 40), "red").save(small)
    with pytest.raises(PromptError, match=r"3 images but at most 2.*max_images"):
        no_model_work.generate(Prompt().user("x", images=[small] * 3))


def test_too_many_pixels(no_model_work):
    with pytest.raises(ImageTooLargeError, match="pixels"):
        no_model_work.describe(SQUARE)  # 336x336 > 200x200


def test_too_many_image_tokens_and_prompt_tokens(no_model_work, tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.new("RGB", (150, 150), "blue").save(small)
    with pytest.raises(ContextLengthError, match=r"images take 757 prompt tokens.*num_crops"):
        no_model_work.describe(small, num_crops=4)
    with pytest.raises(ContextLengthError, match=r"at most 1200"):
        no_model_work.generate("<|user|>\n" + "word " * 1500 + "<|end|>\n<|assistant|>\n")
    # counting is allowed: it does no model work and reports the size
    assert no_model_work.count_tokens(Prompt().user("x", images=[small]), num_crops=4).image_tokens == 757


def test_limits_reject_unknown_fields():
    with pytest.raises(ValueError, match="max_imgs"):
        RequestLimits(max_imgs=3)  # type: ignore[call-arg]


def test_out_of_memory_becomes_our_error_and_the_model_stays_usable(limited_model, monkeypatch, tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.new("RGB", (60, 60), "green").save(small)
    expected = limited_model.describe(small, num_crops=1, max_new_tokens=3).token_ids
    limited_model.clear_caches()
    language_model = limited_model.module.language_model
    original = language_model.forward
    failures = iter([True])

    def flaky(*args, **kwargs):
        if next(failures, False):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(language_model, "forward", flaky)
    with pytest.raises(OutOfMemoryError, match=r"num_crops.*max_new_tokens.*batch_size"):
        limited_model.describe(small, num_crops=1, max_new_tokens=3)
    assert limited_model.describe(small, num_crops=1, max_new_tokens=3).token_ids == expected
