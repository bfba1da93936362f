"""VisionModel's public surface on the tiny golden checkpoint (CPU, float32)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading

import pytest
import torch
from pydantic import BaseModel

import phi3vision
from phi3vision import (
    ContextLengthError,
    DeviceError,
    GenerationOptions,
    ModelClosedError,
    OptionsError,
    OutputParseError,
    Prompt,
    PromptError,
    VisionModel,
)
from phi3vision.stopping import stop_conditions

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

SQUARE = GOLDEN / "images" / "square336.png"
CHART = GOLDEN / "images" / "chart_wide.png"
BOOK = GOLDEN / "images" / "book_tall.png"
TEXT_PROMPT = "<|user|>\nWrite a haiku about Tokyo.<|end|>\n<|assistant|>\n"


def test_import_does_not_import_torch():
    code = (
        "import sys, phi3vision; phi3vision.Prompt; phi3vision.GenerationOptions; phi3vision.load_image; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_reports_choices_and_reasons(cpu_model):
    info = cpu_model.info
    assert info.device == "cpu" and info.dtype == "float32" and info.attn_implementation == "sdpa"
    assert info.reasons["device"] == "requested"
    assert "flash-attn" in info.reasons["attn_implementation"]
    assert info.num_parameters == 4_382_848
    assert info.num_crops == 16 and info.context_length == 131072 and info.state == "loaded"
    assert json.loads(info.model_dump_json())["model_id"] == str(GOLDEN_CHECKPOINT.resolve())


def test_auto_choices_on_a_cpu_machine():
    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT) as model:
        assert (model.info.device, model.info.dtype, model.info.attn_implementation) == (
            "cpu",
            "float32",
            "sdpa",
        )
        assert model.info.reasons["device"].startswith("auto")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu", "attn_implementation": "flash_attention_2"}, "flash_attention_2 needs a CUDA GPU"),
        ({"device": "cuda"}, "no CUDA GPU"),
        ({"device": "tpu"}, "unknown device|unsupported device"),
        ({"device": "cpu", "dtype": "float8"}, "unknown dtype"),
        ({"device": "cpu", "dtype": "float16"}, "float16 on CPU"),
        ({"device": "cpu", "attn_implementation": "fast"}, "unknown attn_implementation"),
    ],
)
def test_choices_that_cannot_be_honoured_are_errors(kwargs, message):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match=message):
        VisionModel.from_pretrained(GOLDEN_CHECKPOINT, **kwargs)


def test_bad_num_crops_is_an_options_error():
    with pytest.raises(OptionsError, match="num_crops"):
        VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", num_crops=0)


def test_lifecycle_context_manager_and_close():
    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", num_crops=1) as model:
        assert model.state == "loaded"
        assert model.generate(TEXT_PROMPT, max_new_tokens=2).usage.completion_tokens == 2
    assert model.state == "closed" and model.info.state == "closed"
    for call in (
        lambda: model.generate(TEXT_PROMPT, max_new_tokens=2),
        lambda: model.encode(TEXT_PROMPT),
        lambda: model.describe(SQUARE),
        lambda: model.count_tokens(TEXT_PROMPT),
        lambda: model.generate_batch([(TEXT_PROMPT, [])]),
        lambda: model.module,
    ):
        with pytest.raises(ModelClosedError, match="closed"):
            call()
    model.close()  # closing twice is fine
    with pytest.raises(ModelClosedError):
        model.__enter__()


def test_encode_shapes_and_num_crops_override(cpu_model):
    encoding = cpu_model.encode(Prompt().user("two", images=[SQUARE, CHART]), num_crops=4)
    assert encoding.pixel_values.shape == (2, 5, 3, 336, 336)
    assert encoding.image_sizes.tolist() == [[672, 672], [336, 672]]
    assert encoding.input_ids.shape[0] == 1
    assert (encoding.input_ids == -1).sum() == encoding.image_token_counts[0]
    assert (encoding.input_ids == -2).sum() == encoding.image_token_counts[1]
    with pytest.raises(OptionsError, match="num_crops"):
        cpu_model.encode(Prompt().user("x", images=[SQUARE]), num_crops=-3)


def test_count_tokens_matches_encode_without_model_work(cpu_model):
    prompt = Prompt().user("How many?", images=[SQUARE, BOOK])
    count = cpu_model.count_tokens(prompt, num_crops=4)
    encoding = cpu_model.encode(prompt, num_crops=4)
    assert count.total == encoding.num_tokens
    assert count.image_tokens == encoding.num_image_tokens
    assert count.text_tokens == count.total - count.image_tokens > 0
    assert count.fits


def test_prompt_errors_come_before_model_work(cpu_model, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("model work started")

    monkeypatch.setattr(cpu_model, "_embed", fail)
    with pytest.raises(PromptError, match="placeholder for image 2"):
        cpu_model.generate("<|image_1|><|image_2|>", [SQUARE])
    with pytest.raises(PromptError):
        cpu_model.generate("<|image_0|>", [SQUARE])
    with pytest.raises(PromptError, match="carries its own images"):
        cpu_model.generate(Prompt().user("x", images=[SQUARE]), [SQUARE])


def test_context_length_is_checked_before_model_work(cpu_model, monkeypatch):
    monkeypatch.setattr(cpu_model, "_embed", lambda *a: pytest.fail("model work started"))
    with pytest.raises(ContextLengthError, match="max_new_tokens"):
        cpu_model.generate(TEXT_PROMPT, max_new_tokens=131072)


def test_options_are_validated(cpu_model):
    with pytest.raises(OptionsError, match="max_tokens"):
        cpu_model.generate(TEXT_PROMPT, max_tokens=5)
    with pytest.raises(OptionsError, match="temperature"):
        cpu_model.generate(TEXT_PROMPT, temperature=-1)
    with pytest.raises(OptionsError, match="top_p"):
        cpu_model.generate(TEXT_PROMPT, options={"top_p": 2})
    with pytest.raises(OptionsError, match="stop"):
        cpu_model.generate(TEXT_PROMPT, stop=[""])
    options = GenerationOptions(max_new_tokens=3)
    assert cpu_model.generate(TEXT_PROMPT, options=options).usage.completion_tokens == 3
    # keywords override fields of an options object
    assert cpu_model.generate(TEXT_PROMPT, options=options, max_new_tokens=2).usage.completion_tokens == 2


def test_default_stop_tokens_are_end_endoftext_and_eos(cpu_model):
    tokenizer = cpu_model.processor.tokenizer
    assert stop_conditions(GenerationOptions(), tokenizer).token_ids == {32007, 32000, 2}
    assert stop_conditions(GenerationOptions(stop=[]), tokenizer).token_ids == set()
    custom = stop_conditions(GenerationOptions(stop=["<|end|>", "###", 5]), tokenizer)
    assert custom.token_ids == {32007, 5} and custom.strings == ("###",)


def _script_tokens(monkeypatch, tokens):
    """Make the model 'choose' these tokens, to test the loop's stopping logic."""
    from phi3vision import generation

    script = itertools.chain(tokens, itertools.repeat(tokens[-1]))  # the loop may run ahead
    monkeypatch.setattr(
        generation.TokenChooser,
        "__call__",
        lambda self, logits, seen: torch.tensor([next(script)] * logits.shape[0]),
    )


@pytest.mark.parametrize("stop_id", [32007, 32000])
def test_generation_ends_at_a_default_stop_token(cpu_model, monkeypatch, stop_id):
    hello = cpu_model.processor.tokenizer.encode_text("Hello world")[1:]
    _script_tokens(monkeypatch, [*hello, stop_id, 500, 501])
    result = cpu_model.generate(TEXT_PROMPT, max_new_tokens=20)
    assert result.finish_reason == "stop"
    assert result.text == "Hello world"
    assert result.token_ids == [*hello, stop_id]
    assert result.usage.completion_tokens == len(hello) + 1


def test_stop_empty_list_never_stops_early(cpu_model, monkeypatch):
    _script_tokens(monkeypatch, [32007] * 5)
    result = cpu_model.generate(TEXT_PROMPT, max_new_tokens=5, stop=[])
    assert result.finish_reason == "length" and result.usage.completion_tokens == 5


def test_stop_strings_cut_the_text(cpu_model, monkeypatch):
    ids = cpu_model.processor.tokenizer.encode_text("one two ### three")[1:]
    _script_tokens(monkeypatch, [*ids, *ids])
    result = cpu_model.generate(TEXT_PROMPT, max_new_tokens=40, stop=["###"])
    assert result.finish_reason == "stop"
    assert result.text == "one two "


def test_stream_yields_the_same_text(cpu_model):
    expected = cpu_model.generate(TEXT_PROMPT, max_new_tokens=12)
    stream = cpu_model.stream(TEXT_PROMPT, max_new_tokens=12)
    with pytest.raises(RuntimeError, match="not finished"):
        stream.result  # noqa: B018
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == expected.text == stream.result.text
    assert stream.result.token_ids == expected.token_ids
    assert stream.result.usage == expected.usage


def test_stream_with_stop_string_never_shows_the_stop_string(cpu_model, monkeypatch):
    ids = cpu_model.processor.tokenizer.encode_text("alpha beta END gamma")[1:]
    _script_tokens(monkeypatch, ids)
    stream = cpu_model.stream(TEXT_PROMPT, max_new_tokens=len(ids), stop=["END"])
    assert "".join(stream) == "alpha beta " == stream.result.text


def test_batch_equals_one_by_one(cpu_model):
    prompts = [
        Prompt().user("Describe.", images=[SQUARE]),
        (TEXT_PROMPT, []),
        Prompt(system="Be brief.").user("Compare these.", images=[CHART, BOOK]),
        ("<|user|>\n<|image_1|>\nRead it.<|end|>\n<|assistant|>\n", [BOOK]),
        (TEXT_PROMPT.replace("Tokyo", "a long and winding river"), []),
    ]
    batch = cpu_model.generate_batch(prompts, batch_size=3, num_crops=2, max_new_tokens=10, stop=[])
    assert len(batch) == len(prompts)
    for item, result in zip(prompts, batch, strict=True):
        prompt, images = item if isinstance(item, tuple) else (item, None)
        single = cpu_model.generate(prompt, images, num_crops=2, max_new_tokens=10, stop=[])
        assert result.token_ids == single.token_ids
        assert result.usage == single.usage


def test_batch_isolates_a_bad_item(cpu_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(SQUARE.read_bytes()[:100])
    prompts = [
        Prompt().user("a", images=[SQUARE]),
        Prompt().user("b", images=[broken]),
        ("<|image_2|>", [SQUARE]),
        (TEXT_PROMPT, []),
    ]
    results = cpu_model.generate_batch(prompts, batch_size=2, num_crops=1, max_new_tokens=3)
    assert [r.finish_reason for r in results] == ["length", "error", "error", "length"]
    assert results[1].error is not None and results[1].error.type == "ImageError"
    assert "broken.png" in results[1].error.message
    assert results[2].error is not None and results[2].error.type == "PromptError"
    assert results[3].token_ids == cpu_model.generate(TEXT_PROMPT, max_new_tokens=3).token_ids
    with pytest.raises(OptionsError, match="batch_size"):
        cpu_model.generate_batch(prompts, batch_size=0)


def test_threads_sharing_one_model_get_sequential_results(cpu_model):
    prompts = [Prompt().user(f"Question {i}?", images=[SQUARE]) for i in range(4)]
    expected = [cpu_model.generate(p, num_crops=1, max_new_tokens=6).token_ids for p in prompts]
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = cpu_model.generate(prompts[i], num_crops=1, max_new_tokens=6).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(4)] == expected


def test_seeded_sampling_is_reproducible(cpu_model):
    def sample(seed: int) -> list[int]:
        options = {"do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.95, "seed": seed}
        return cpu_model.generate(TEXT_PROMPT, max_new_tokens=12, stop=[], **options).token_ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = cpu_model.generate(TEXT_PROMPT, max_new_tokens=12, stop=[]).token_ids
    penalised = cpu_model.generate(TEXT_PROMPT, max_new_tokens=12, stop=[], repetition_penalty=1.3).token_ids
    assert len(penalised) == 12
    assert len(set(penalised)) >= len(set(greedy))


def test_results_carry_usage_timings_and_model(cpu_model):
    result = cpu_model.describe(SQUARE, num_crops=1, max_new_tokens=4)
    assert isinstance(result, phi3vision.Description)
    assert result.usage.image_tokens == 313 and result.usage.completion_tokens == 4
    assert result.usage.prompt_tokens > result.usage.image_tokens
    timings = result.timings
    assert 0 < timings.preprocess_s <= timings.time_to_first_token_s <= timings.total_s
    assert timings.decode_s >= 0 and timings.tokens_per_second > 0
    assert (
        result.model is not None
        and result.model.device == "cpu"
        and result.model.attn_implementation == "sdpa"
    )
    data = json.loads(result.model_dump_json())
    assert data["usage"]["completion_tokens"] == 4 and data["model"]["dtype"] == "float32"


def test_task_helpers(cpu_model):
    text = cpu_model.extract_text(BOOK, num_crops=1, max_new_tokens=6)
    assert isinstance(text, phi3vision.TextExtraction)
    assert text.lines == [line.strip() for line in text.text.splitlines() if line.strip()]
    comparison = cpu_model.compare(SQUARE, CHART, BOOK, num_crops=1, max_new_tokens=3)
    assert comparison.num_images == 3 and comparison.usage.image_tokens == 3 * 313
    answer = cpu_model.ask("What is it?", SQUARE, num_crops=1, max_new_tokens=3)
    assert answer.question == "What is it?" and answer.usage.image_tokens == 313
    with pytest.raises(PromptError):
        cpu_model.ask("", [SQUARE])
    custom = cpu_model.describe(SQUARE, instruction="Say hi.", num_crops=1, max_new_tokens=2)
    assert (
        custom.usage.text_tokens
        < cpu_model.describe(SQUARE, num_crops=1, max_new_tokens=2).usage.text_tokens + 5
    )


class BookInfo(BaseModel):
    title: str
    author: str


@pytest.mark.usefixtures("prompt_and_retry")
def test_extract_validates_json_against_the_schema(cpu_model, monkeypatch):
    replies = iter(
        ['Sure! {"title": "ALONE"}', 'Here: ```json\n{"title": "ALONE", "author": "Morgan Maxwell"}\n```']
    )
    real_generate = cpu_model.generate
    prompts: list[str] = []

    def scripted(prompt, images=None, **kwargs):
        prompts.append(prompt.render())
        result = real_generate(prompt, images, **{**kwargs, "max_new_tokens": 1})
        return result.model_copy(update={"text": next(replies)})

    monkeypatch.setattr(cpu_model, "generate", scripted)
    extraction = cpu_model.extract_result(BOOK, BookInfo, num_crops=1)
    assert extraction.value == BookInfo(title="ALONE", author="Morgan Maxwell")
    assert extraction.attempts == 2
    assert "author" in prompts[0] and "Field required" in prompts[1]


@pytest.mark.usefixtures("prompt_and_retry")
def test_extract_gives_up_after_bounded_retries(cpu_model):
    with pytest.raises(OutputParseError, match=r"no valid BookInfo after 2 attempt"):
        cpu_model.extract(BOOK, BookInfo, num_crops=1, max_retries=1, max_new_tokens=4)
    with pytest.raises(OptionsError, match="pydantic model"):
        cpu_model.extract(BOOK, dict)  # type: ignore[arg-type]


def test_logits_shape_and_dtype(cpu_model):
    encoding = cpu_model.encode(TEXT_PROMPT)
    logits = cpu_model.logits(encoding)
    assert logits.shape == (1, encoding.num_tokens, 32064) and logits.dtype == torch.float32


def test_batches_never_mix_rotary_regimes(cpu_model):
    """LongRoPE picks short or long factors for a whole forward pass, from its longest row: a short
    prompt batched with one past 4096 positions (or crossing it while decoding) would change."""
    short = TEXT_PROMPT
    long = "<|user|>\n" + "word " * 4300 + "<|end|>\n<|assistant|>\n"
    crossing = "<|user|>\n" + "word " * 4085 + "<|end|>\n<|assistant|>\n"  # 4094 positions, then more
    prompts = [(short, []), (long, []), (crossing, []), (short.replace("Tokyo", "Kyoto"), [])]
    batch = cpu_model.generate_batch(prompts, batch_size=4, max_new_tokens=6, stop=[])
    for (prompt, _), result in zip(prompts, batch, strict=True):
        assert result.token_ids == cpu_model.generate(prompt, max_new_tokens=6, stop=[]).token_ids


def test_batch_items_must_be_prompts_or_pairs(cpu_model):
    results = cpu_model.generate_batch([(TEXT_PROMPT,), (TEXT_PROMPT, [], "extra")], max_new_tokens=2)
    assert [r.error.type if r.error else None for r in results] == ["PromptError", "PromptError"]
    with pytest.raises(OptionsError, match="num_crops"):
        cpu_model.generate_batch([(TEXT_PROMPT, [])], num_crops=0)


def test_a_stream_stops_when_the_model_is_closed():
    model = VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", dtype="float32")
    stream = model.stream(TEXT_PROMPT, max_new_tokens=30, stop=[])
    pieces = iter(stream)
    next(pieces)
    model.close()
    with pytest.raises(ModelClosedError, match="closed while this stream"):
        list(pieces)


def test_unseeded_sampling_leaves_the_global_rng_alone(cpu_model):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cpu_model.generate(TEXT_PROMPT, max_new_tokens=3, do_sample=True)
    assert torch.equal(torch.rand(3), expected)


def test_the_earliest_stop_string_wins_whatever_their_order(cpu_model, monkeypatch):
    ids = cpu_model.processor.tokenizer.encode_text("Hello world. Bye")[1:]
    for stops in (["world", "o w"], ["o w", "world"]):
        _script_tokens(monkeypatch, ids)
        assert cpu_model.generate(TEXT_PROMPT, max_new_tokens=len(ids), stop=stops).text == "Hell"
