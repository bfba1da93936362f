"""Limits are checked before any model work, with errors that say what to change; an
out-of-memory error becomes the library's error and leaves the model usable."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from phi3vision import (
    ContextLengthError,
    ImagePolicy,
    ImageTooLargeError,
    OptionsError,
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


# --------------------------------------------------------------------------------------------
# Wrong types are refused when a model is built (issue 10 point 2)

WRONG_POLICIES = [{}, "strict", 3, True, {"allow_private_urls": False}]
WRONG_LIMITS = [{}, "4", 4, True, {"max_images": 1}]
WRONG_CACHE_SIZES = [-1, True, False, "3", 3.0, None, 10**9]


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import phi3vision.loading

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was opened before the options were checked")

    monkeypatch.setattr(phi3vision.loading, "open_checkpoint", fail)


@pytest.mark.parametrize(
    "options",
    [{"image_policy": v} for v in WRONG_POLICIES]
    + [{"limits": v} for v in WRONG_LIMITS]
    + [{"feature_cache_size": v} for v in WRONG_CACHE_SIZES],
)
def test_from_pretrained_refuses_wrong_types_before_loading(
    options: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from phi3vision import VisionModel
    from phi3vision.testing import FakeVisionModel

    _no_loading(monkeypatch)
    name = next(iter(options))
    with pytest.raises(OptionsError, match=name):
        VisionModel.from_pretrained("unused", **options)  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match=name):
        FakeVisionModel.from_pretrained("unused", **options)  # type: ignore[arg-type]
    if name != "feature_cache_size":
        with pytest.raises(OptionsError, match=name):
            FakeVisionModel(**options)  # type: ignore[arg-type]


def test_the_model_constructor_checks_too(cpu_model: Any) -> None:
    from phi3vision import VisionModel

    parts = (cpu_model.engine, cpu_model.processor)
    with pytest.raises(OptionsError, match="image_policy"):
        VisionModel(*parts, image_policy={})  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="limits"):
        VisionModel(*parts, limits="4")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [{"max_images": True}, {"max_images": "4"}, {"max_images": 4.0}, {"max_prompt_tokens": b"9"}],
)
def test_request_limits_types_are_strict(fields: dict[str, object]) -> None:
    with pytest.raises(OptionsError, match="invalid request limits"):
        RequestLimits(**fields)  # type: ignore[arg-type]


def test_good_values_pass_the_checks() -> None:
    from phi3vision.images import ImagePolicy, check_policy
    from phi3vision.limits import check_cache_size, check_limits, check_model_options

    policy, limits = ImagePolicy(), RequestLimits()
    assert check_policy(policy) is policy and check_policy(None) is None
    assert check_limits(limits) is limits and check_limits(None) is None
    assert check_cache_size(0) == 0 and check_cache_size(16) == 16
    assert check_model_options(policy, limits, 3) == (policy, limits, 3)
