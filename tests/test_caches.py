"""Reuse of earlier work: the image-feature cache and the chat prefix KV cache. Both are exact:
results equal those of a model with the caches off."""

from __future__ import annotations

import pytest

from phi3vision import Prompt, VisionModel
from phi3vision.caches import FeatureCache, PrefixEntry, reusable_length

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

SQUARE = GOLDEN / "images" / "square336.png"
CHART = GOLDEN / "images" / "chart_wide.png"


@pytest.fixture(scope="module")
def plain_model():
    with VisionModel.from_pretrained(
        GOLDEN_CHECKPOINT, device="cpu", dtype="float32", feature_cache_size=0, reuse_prefix=False
    ) as model:
        yield model


@pytest.fixture
def fresh_model():
    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", dtype="float32") as model:
        yield model


def _count_vision_calls(model: VisionModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    embedding = model.module.image_embedding
    original = embedding.forward

    def counting(pixel_values, image_sizes):
        calls.append(len(image_sizes))
        return original(pixel_values, image_sizes)

    monkeypatch.setattr(embedding, "forward", counting)
    return calls


def test_feature_cache_skips_the_vision_tower_for_a_known_image(fresh_model, plain_model, monkeypatch):
    calls = _count_vision_calls(fresh_model, monkeypatch)
    first = fresh_model.describe(SQUARE, num_crops=4, max_new_tokens=5)
    second = fresh_model.ask("What colour is it?", SQUARE, num_crops=4, max_new_tokens=5)
    assert calls == [1]  # the second call found the features in the cache
    assert first.token_ids == plain_model.describe(SQUARE, num_crops=4, max_new_tokens=5).token_ids
    expected = plain_model.ask("What colour is it?", SQUARE, num_crops=4, max_new_tokens=5)
    assert second.token_ids == expected.token_ids
    # another num_crops is other features
    fresh_model.describe(SQUARE, num_crops=2, max_new_tokens=2)
    assert calls == [1, 1]
    # compare then ask: only the new image goes through the tower
    fresh_model.compare(SQUARE, CHART, num_crops=4, max_new_tokens=2)
    assert calls == [1, 1, 1]


def test_chat_turns_reuse_the_kv_cache_and_match_a_fresh_prefill(fresh_model, plain_model, monkeypatch):
    calls = _count_vision_calls(fresh_model, monkeypatch)
    turn1 = Prompt(system="Be brief.").user("What is this?", images=[SQUARE])
    answer1 = fresh_model.generate(turn1, num_crops=4, max_new_tokens=6)
    assert fresh_model.prefix_reused_tokens < 10  # nothing before it but the first few tokens
    turn2 = turn1.assistant(answer1.text).user("And the colour?")
    before = fresh_model.prefix_reused_tokens
    answer2 = fresh_model.generate(turn2, num_crops=4, max_new_tokens=6)
    reused = fresh_model.prefix_reused_tokens - before
    assert reused >= answer1.usage.prompt_tokens  # the whole first prompt, image included
    assert calls == [1]  # the image was inside the reused prefix: no vision work at all
    assert answer2.token_ids == plain_model.generate(turn2, num_crops=4, max_new_tokens=6).token_ids
    assert plain_model.prefix_reused_tokens == 0


def test_a_different_image_at_the_same_place_is_not_reused(fresh_model, plain_model):
    fresh_model.generate(Prompt().user("Describe.", images=[SQUARE]), num_crops=1, max_new_tokens=3)
    prompt = Prompt().user("Describe.", images=[CHART])  # same token ids, other pixels
    result = fresh_model.generate(prompt, num_crops=1, max_new_tokens=3)
    assert result.token_ids == plain_model.generate(prompt, num_crops=1, max_new_tokens=3).token_ids


def test_clear_caches(fresh_model, monkeypatch):
    fresh_model.describe(SQUARE, num_crops=1, max_new_tokens=2)
    fresh_model.clear_caches()
    calls = _count_vision_calls(fresh_model, monkeypatch)
    fresh_model.describe(SQUARE, num_crops=1, max_new_tokens=2)
    assert calls == [1]


def test_reusable_length_backs_off_to_whole_images():
    entry = PrefixEntry(token_ids=[1, 5, -1, -1, -1, 7, 8, 9], image_keys=["a"], cache=None)
    assert reusable_length(entry, [1, 5, -1, -1, -1, 7, 8, 9, 10], ["a"]) == 8
    assert reusable_length(entry, [1, 5, -1, -1, -1, 7, 4], ["a"]) == 6
    assert reusable_length(entry, [1, 5, -1, -1, -1, 7, 8], ["b"]) == 2  # other pixels
    assert reusable_length(entry, [1, 5, -1, -1, -1, -1, 3], ["a"]) == 2  # image run longer now
    assert reusable_length(entry, [1, 5, -1, -1, -1, 7, 8, 9], ["a"]) == 7  # keep one to prefill
    assert reusable_length(entry, [2, 5], []) == 0


def test_feature_cache_is_a_bounded_lru():
    cache = FeatureCache(2)
    cache.put("a", 1)  # type: ignore[arg-type]
    cache.put("b", 2)  # type: ignore[arg-type]
    assert cache.get("a") == 1
    cache.put("c", 3)  # type: ignore[arg-type]
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2 and cache.hits == 3 and cache.misses == 1
    disabled = FeatureCache(0)
    disabled.put("a", 1)  # type: ignore[arg-type]
    assert len(disabled) == 0
