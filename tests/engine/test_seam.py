"""The engine seam: any engine under the one front end, the task registry, LoadOptions.
Torch-free: these run with the fake's tokenizer and a hand-written engine."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from phi3vision import GenerationOptions, LoadOptions, OptionsError, VisionModel
from phi3vision.engine import CLOSED_MESSAGE, EngineInfo, Request
from phi3vision.engine.batching import rope_groups
from phi3vision.engine.caches import PrefixCache
from phi3vision.processing.processor import Processor
from phi3vision.results import Generation
from phi3vision.tasks import TASK_ALIASES, TASKS, get_task
from phi3vision.testing import FakeVisionModel
from phi3vision.testing.fake import packaged_tokenizer

SQUARE = str(Path(__file__).parents[1] / "golden" / "phi3v-tiny" / "images" / "square336.png")


class EchoEngine:
    """The smallest engine: answers each prompt with its own last text tokens."""

    def __init__(self) -> None:
        self.info = EngineInfo(
            model_id="echo",
            revision=None,
            directory="",
            device="cpu",
            dtype="none",
            attn_implementation="none",
            reasons={},
            num_parameters=0,
            context_length=4096,
        )
        self.reuse_prefix = False
        self.prefix_reused_tokens = 0
        self.device = self.dtype = "cpu"
        self.results: list[Generation] = []

    @property
    def module(self) -> Any:
        raise OptionsError("no module")

    def run(
        self, requests: Sequence[Request], options: GenerationOptions, *, chunk_size: int = 8
    ) -> Iterator[list[list[int]]]:
        rows = [[t for t in r.prompt.token_ids if t >= 0][-3:] for r in requests]
        for position in range(max(len(row) for row in rows)):
            yield [row[position : position + 1] for row in rows]

    def batches(self, requests: Sequence[Request], max_new_tokens: int) -> list[list[int]]:
        return [list(range(len(requests)))]

    def clock(self) -> float:
        return 0.0

    def logits(self, encoding: Any) -> Any:
        raise OptionsError("no logits")

    def finished(self, request: Request, result: Generation) -> None:
        self.results.append(result)

    def clear_caches(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_any_engine_gets_the_whole_front_end() -> None:
    engine = EchoEngine()
    model = VisionModel(engine, Processor(packaged_tokenizer(), num_crops=4))
    result = model.generate("Hello there friend", stop=[])
    assert result.finish_reason == "length" and result.usage.completion_tokens == 3
    assert model.describe(SQUARE, stop=[]).model is not None
    assert [r.text for r in model.generate_batch(["one two", "three four five"], stop=[])] == [
        r.text for r in engine.results[-2:]
    ]
    assert "".join(model.stream("Hello there friend", stop=[])) == result.text
    assert model.info.model_id == "echo" and model.info.num_crops == 4
    model.close()
    with pytest.raises(Exception, match="closed"):
        model.generate("Hi")
    assert CLOSED_MESSAGE.startswith("this VisionModel was closed")


def test_the_fake_is_a_vision_model() -> None:
    fake = FakeVisionModel()
    assert isinstance(fake, VisionModel)
    assert type(fake.stream("Hi")).__name__ == "GenerationStream"
    assert (fake.state, f"{fake.state}", str(fake.state)) == ("loaded", "loaded", "loaded")


def test_one_name_per_task_with_the_old_spellings_as_aliases() -> None:
    assert set(TASKS) == {"describe", "extract_text", "compare", "ask", "extract"}
    assert TASK_ALIASES == {"ocr": "extract_text"}
    assert get_task("ocr") is get_task("extract_text") is TASKS["extract_text"]
    with pytest.raises(OptionsError, match="unknown task 'caption'"):
        get_task("caption")
    fake = FakeVisionModel({"extract_text": "LINE ONE\nLINE TWO"})
    assert fake.generate("Read it.", task="ocr").text == "LINE ONE\nLINE TWO"
    assert fake.calls[0].task == "extract_text"


def test_the_task_prompts_come_from_the_registry() -> None:
    fake = FakeVisionModel()
    fake.extract_text(SQUARE)
    spec = TASKS["extract_text"]
    expected = spec.prompt(fake.task_prompts, [SQUARE]).render()
    assert fake.calls[0].prompt == expected
    assert spec.instruction(fake.task_prompts) in expected


def test_from_pretrained_takes_exactly_the_load_options() -> None:
    keywords = [
        p.name
        for p in inspect.signature(VisionModel.from_pretrained).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keywords == list(LoadOptions.model_fields)
    defaults = {
        p.name: p.default
        for p in inspect.signature(VisionModel.from_pretrained).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert defaults == dict(LoadOptions())
    with pytest.raises(OptionsError, match="feature_cache_size"):
        LoadOptions.of(feature_cache_size=-1)
    with pytest.raises(OptionsError, match="unknown_setting"):
        LoadOptions.of(unknown_setting=1)


def test_rope_groups_keep_regimes_apart() -> None:
    assert rope_groups([10, 5000, 20, 4090, 6000], 16, 4096) == [[0, 2], [1, 4], [3]]


def test_the_prefix_cache_lends_its_entry_to_one_call() -> None:
    class FakeKV:
        def __init__(self, length: int) -> None:
            self.length = length

        def get_seq_length(self) -> int:
            return self.length

        def crop(self, delta: int) -> None:
            self.length += delta

    prefix = PrefixCache(enabled=True, max_length=4096)
    prefix.keep(3, [1, 2, 3, 4], [], FakeKV(4))
    cache, reused = prefix.take([1, 2, 3, 9, 9], [])
    assert reused == 3 and cache.get_seq_length() == 3 and prefix.reused_tokens == 3
    assert prefix.take([1, 2, 3, 9, 9], []) == (None, 0)  # taken: the next call starts afresh
    prefix.keep(3, [1, 2, 3], [], FakeKV(5))  # holds something else: never kept
    assert prefix.take([1, 2, 3, 4], []) == (None, 0)


def test_a_route_may_use_a_task_s_old_spelling() -> None:
    fake = FakeVisionModel({"ocr": "RECEIPT"})
    assert fake.extract_text(SQUARE).lines == ["RECEIPT"]
    assert fake.ask("What does the ocr say?").text == "fake answer to ask with 0 image(s)"


def test_two_threads_can_load_models_at_once(golden_checkpoint: Path) -> None:
    """Loading builds modules on the meta device, which patches torch for the whole process:
    two loads at once (a threaded Dask worker, a server starting two models) must not see each
    other's meta parameters."""
    from concurrent.futures import ThreadPoolExecutor

    from phi3vision import VisionModel

    def load_and_generate(_: int) -> str:
        with VisionModel.from_pretrained(golden_checkpoint, device="cpu", dtype="float32") as model:
            return model.generate("Hello", max_new_tokens=4, stop=[]).text

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(load_and_generate, range(2))
    assert first == second


def test_load_options_are_strict_and_take_a_torch_device() -> None:
    import torch

    assert LoadOptions.of(device=torch.device("cpu")).device == "cpu"
    with pytest.raises(OptionsError, match="feature_cache_size"):
        LoadOptions.of(feature_cache_size="3")
    with pytest.raises(OptionsError, match="compile"):
        LoadOptions.of(compile="yes")
