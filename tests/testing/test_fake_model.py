"""FakeVisionModel on its own: scripting, recording, validation, stop rules, stream and batch.

Nothing here may import torch: ``test_no_torch.py`` runs this module in a fresh interpreter
and checks that torch stayed out of ``sys.modules``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image
from pydantic import BaseModel

from phi3vision import (
    ContextLengthError,
    GenerationOptions,
    ImageError,
    ModelClosedError,
    OptionsError,
    OutOfMemoryError,
    OutputParseError,
    Phi3VisionError,
    Prompt,
    PromptError,
    RequestLimits,
    TaskPrompts,
    VisionModel,
)
from phi3vision.images import image_fingerprint, load_image
from phi3vision.processing.hd_transform import image_tokens_for_size
from phi3vision.processing.tokenization import END_TOKEN_ID, ENDOFTEXT_TOKEN_ID
from phi3vision.testing import FakeCall, FakeNotSupportedError, FakeVisionModel
from phi3vision.testing.fake import packaged_tokenizer

from .conftest import make_photo


class BookInfo(BaseModel):
    """The Phi-3 Cookbook's OCR scenario, structured."""

    title: str
    author: str


BOOK_JSON = '{"title": "ALONE", "author": "Morgan Maxwell"}'


def text_ids(text: str) -> list[int]:
    return list(packaged_tokenizer().tokenizer.encode(text, add_special_tokens=False).ids)


# -- default answers, usage and timings ------------------------------------------------------


def test_unscripted_calls_get_an_answer_that_describes_them(photo: Image.Image) -> None:
    fake = FakeVisionModel()
    assert fake.describe(photo).text == "fake answer to describe with 1 image(s)"
    assert fake.compare(photo, photo).text == "fake answer to compare with 2 image(s)"
    assert fake.ask("Why?").text == "fake answer to ask with 0 image(s)"
    assert fake.generate("Hello").text == "fake answer to generate with 0 image(s)"


def test_usage_is_the_real_token_arithmetic(photo: Image.Image) -> None:
    fake = FakeVisionModel()
    result = fake.describe(photo, num_crops=4)
    expected_image_tokens = image_tokens_for_size(photo.width, photo.height, 4)
    assert result.usage.image_tokens == expected_image_tokens
    prompt = Prompt().user(TaskPrompts().describe, images=[photo])
    assert result.usage.prompt_tokens == fake.count_tokens(prompt, num_crops=4).total
    assert result.usage.prompt_tokens > expected_image_tokens  # the chat markers and instruction
    # The answer's own tokens plus the <|end|> that stops it, as the real model counts them.
    assert result.token_ids == [*text_ids(result.text), END_TOKEN_ID]
    assert result.usage.completion_tokens == len(result.token_ids)
    assert result.finish_reason == "stop"


def test_timings_are_consistent_and_simulated() -> None:
    fake = FakeVisionModel(["one two three four"], tokens_per_second=50.0)
    result = fake.generate("Count.")
    timings = result.timings
    assert timings.decode_s == pytest.approx((result.usage.completion_tokens - 1) / 50.0)
    assert timings.total_s == pytest.approx(timings.time_to_first_token_s + timings.decode_s)
    assert timings.tokens_per_second == 50.0
    assert 0.0 <= timings.preprocess_s < 5.0


def test_info_and_model_ref_describe_a_fake() -> None:
    fake = FakeVisionModel(model_id="my-fake", num_crops=4, context_length=8192)
    info = fake.info
    assert (info.model_id, info.num_crops, info.context_length, info.state) == ("my-fake", 4, 8192, "loaded")
    assert info.num_parameters == 0
    assert fake.model_ref.model_id == "my-fake"
    assert fake.generate("Hi").model == fake.model_ref
    assert "my-fake" in repr(fake)


def test_from_pretrained_stands_in_for_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code under test that loads its own model can be given a fake this way."""
    monkeypatch.setattr(VisionModel, "from_pretrained", FakeVisionModel.from_pretrained)
    model = VisionModel.from_pretrained("microsoft/Phi-3.5-vision-instruct", num_crops=4)
    assert isinstance(model, FakeVisionModel)
    assert model.info.model_id == "microsoft/Phi-3.5-vision-instruct"
    assert model.info.num_crops == 4
    assert "auto" in model.info.reasons["device"]
    monkeypatch.setenv("PHI3VISION_MODEL", "/models/phi-3.5-vision")
    assert VisionModel.from_pretrained().info.model_id == "/models/phi-3.5-vision"


# -- scripting ---------------------------------------------------------------------------------


def test_queue_is_used_in_order_then_the_default(photo: Image.Image) -> None:
    fake = FakeVisionModel(["first", "second"], default="after the queue")
    assert fake.pending_responses == 2
    assert fake.describe(photo).text == "first"
    assert fake.ask("Next?").text == "second"
    assert fake.pending_responses == 0
    assert fake.generate("More?").text == "after the queue"


def test_routes_match_task_names_then_prompt_substrings(photo: Image.Image) -> None:
    fake = FakeVisionModel({"describe": "a red photo", "invoice": "Total: 12 EUR"})
    assert fake.describe(photo).text == "a red photo"
    assert fake.ask("What is the total of this invoice?", photo).text == "Total: 12 EUR"
    # A task name is a route for that task only, never a substring to look for.
    assert fake.ask("Please describe it.").text == "fake answer to ask with 0 image(s)"


def test_a_responder_sees_the_call_and_may_pass(photo: Image.Image) -> None:
    seen: list[FakeCall] = []

    def responder(call: FakeCall) -> str | None:
        seen.append(call)
        return None if call.task == "ask" else f"{call.task}: {len(call.images)} image(s)"

    fake = FakeVisionModel(responder, default="no idea")
    assert fake.compare(photo, photo, photo).text == "compare: 3 image(s)"
    assert fake.ask("Anything?").text == "no idea"
    assert [call.task for call in seen] == ["compare", "ask"]


def test_script_adds_answers_to_a_model_already_made(photo: Image.Image) -> None:
    fake = FakeVisionModel().script(["queued"]).script({"extract_text": "HELLO\nWORLD"}, default="fallback")
    assert fake.generate("Hi").text == "queued"
    ocr = fake.extract_text(photo)
    assert ocr.lines == ["HELLO", "WORLD"]
    assert fake.generate("Hi").text == "fallback"


def test_a_scripted_exception_is_raised_by_the_call_and_recorded() -> None:
    fake = FakeVisionModel([OutOfMemoryError("scripted: out of memory"), "recovered"])
    with pytest.raises(OutOfMemoryError, match="scripted"):
        fake.generate("Hi")
    assert fake.generate("Hi").text == "recovered"
    assert len(fake.calls) == 2
    assert fake.calls[0].result is None and fake.calls[1].result is not None


def test_bad_scripts_are_refused() -> None:
    with pytest.raises(OptionsError, match="default="):
        FakeVisionModel("just one string")  # a str is a sequence, but surely not a queue of letters
    with pytest.raises(OptionsError, match="route keys"):
        FakeVisionModel({"": "empty key"})
    fake = FakeVisionModel([42])  # type: ignore[list-item]
    with pytest.raises(OptionsError, match="int"):
        fake.generate("Hi")


@pytest.mark.parametrize(
    "settings",
    [{"context_length": 1}, {"tokens_per_second": 0}, {"tokens_per_second": "fast"}, {"num_crops": 0}],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(OptionsError):
        FakeVisionModel(**settings)  # type: ignore[arg-type]


def test_answers_are_thread_safe() -> None:
    """Each queued answer goes to exactly one caller, even from many threads at once."""
    answers = [f"answer {i}" for i in range(16)]
    fake = FakeVisionModel(answers)
    received: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            text = fake.generate("Hi").text
            with lock:
                received.append(text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(received) == sorted(answers)
    assert len(fake.calls) == 16


# -- recording ---------------------------------------------------------------------------------


def test_calls_record_what_was_asked(photo_file: Path) -> None:
    fake = FakeVisionModel()
    fake.ask("What colour is it?", photo_file, system="Be brief.", max_new_tokens=20, num_crops=4)
    (call,) = fake.calls
    assert (call.method, call.task, call.name) == ("generate", "ask", "ask")
    assert call.prompt == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\nWhat colour is it?<|end|>\n<|assistant|>\n"
    )
    assert call.options == GenerationOptions(max_new_tokens=20)
    assert call.num_crops == 4
    (image,) = call.images
    loaded = load_image(photo_file)
    assert image.source == str(photo_file)
    assert (image.size, image.mode) == ((640, 480), "RGB")
    assert image.fingerprint == image_fingerprint(loaded)
    assert image.image_tokens == image_tokens_for_size(640, 480, 4) == call.image_tokens
    assert call.response == "fake answer to ask with 1 image(s)"
    assert call.result is not None and call.result.usage.prompt_tokens == call.prompt_tokens


def test_the_same_picture_has_the_same_fingerprint_however_it_is_passed(
    photo: Image.Image, photo_file: Path
) -> None:
    fake = FakeVisionModel()
    fake.describe(photo)
    fake.describe(photo_file)
    fake.describe(photo_file.read_bytes())
    fake.describe(make_photo(colour=(0, 0, 255)))
    prints = [call.images[0].fingerprint for call in fake.calls]
    assert prints[0] == prints[1] == prints[2]
    assert prints[3] != prints[0]


def test_custom_task_prompts_are_what_gets_recorded(photo: Image.Image) -> None:
    fake = FakeVisionModel()
    fake.task_prompts = TaskPrompts(describe="Describe it in French.")
    fake.describe(photo)
    fake.describe(photo, instruction="One word.")
    assert "Describe it in French." in fake.calls[0].prompt
    assert "One word." in fake.calls[1].prompt


# -- validation: the real model's errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.describe("/no/such/picture.png"), ImageError, "picture.png"),
        (lambda m: m.describe(b"not an image"), ImageError, "not a recognised image"),
        (
            lambda m: m.generate("<|image_1|> and <|image_2|>", [make_photo()]),
            PromptError,
            "placeholder for image 2",
        ),
        (
            lambda m: m.generate(Prompt().user("Hi", images=[make_photo()]), [make_photo()]),
            PromptError,
            "own images",
        ),
        (lambda m: m.ask("   "), PromptError, "non-empty question"),
        (lambda m: m.generate("Hi", temperature=-1), OptionsError, "temperature"),
        (lambda m: m.generate("Hi", max_tokens=5), OptionsError, "max_tokens"),
        (lambda m: m.generate("Hi", options=GenerationOptions(), stop=[""]), OptionsError, "stop"),
        (lambda m: m.describe(make_photo(), num_crops=0), OptionsError, "num_crops"),
        (lambda m: m.extract(make_photo(), dict), OptionsError, "pydantic model class"),
        (lambda m: m.generate_batch(["Hi"], batch_size=0), OptionsError, "batch_size"),
        (lambda m: m.describe(make_photo(), max_new_tokens=1000), ContextLengthError, "context of 2048"),
    ],
)
def test_bad_inputs_raise_the_real_errors(call, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    fake = FakeVisionModel(context_length=2048)
    with pytest.raises(error, match=message):
        call(fake)
    assert fake.calls == []  # nothing reached "the model"


def test_context_length_counts_the_prompt_and_the_new_tokens() -> None:
    fake = FakeVisionModel(context_length=100)
    size = fake.count_tokens("Hi").total
    fake.generate("Hi", max_new_tokens=100 - size)  # exactly full: allowed
    with pytest.raises(ContextLengthError):
        fake.generate("Hi", max_new_tokens=101 - size)


def test_request_limits_apply_as_on_the_real_model(photo: Image.Image) -> None:
    fake = FakeVisionModel(limits=RequestLimits(max_images=1, max_image_tokens=500))
    with pytest.raises(PromptError, match="at most 1"):
        fake.compare(photo, photo)
    with pytest.raises(ContextLengthError, match="max_image_tokens"):
        fake.describe(photo)  # 1921 image tokens at num_crops 16
    assert fake.describe(photo, num_crops=1).usage.image_tokens <= 500
    assert FakeVisionModel.from_pretrained(limits=RequestLimits(max_images=2)).limits.max_images == 2


def test_a_closed_model_refuses_work(photo: Image.Image) -> None:
    with FakeVisionModel() as fake:
        fake.describe(photo)
    assert fake.state == "closed"
    for use in (
        lambda: fake.describe(photo),
        lambda: fake.generate("Hi"),
        lambda: fake.stream("Hi"),
        lambda: fake.encode("Hi"),
        lambda: fake.__enter__(),
        lambda: fake.generate_batch(["Hi"]),
        lambda: fake.count_tokens("Hi"),
    ):
        with pytest.raises(ModelClosedError):
            use()
    fake.close()  # closing twice is fine


def test_logits_need_real_weights() -> None:
    fake = FakeVisionModel()
    with pytest.raises(FakeNotSupportedError, match="tiny_vision_model") as caught:
        fake.logits(None)  # type: ignore[arg-type]
    assert isinstance(caught.value, NotImplementedError)
    assert isinstance(caught.value, Phi3VisionError)


# -- stop strings, stop tokens and max_new_tokens -------------------------------------------------


def test_a_stop_string_cuts_the_answer() -> None:
    fake = FakeVisionModel(default="Title: ALONE\nAuthor: Morgan Maxwell")
    result = fake.generate("Book?", stop=["\n", "<|end|>"])
    assert result.text == "Title: ALONE"
    assert result.finish_reason == "stop"
    assert result.token_ids == text_ids("Title: ALONE")  # a stop string is not a token
    assert result.usage.completion_tokens == len(result.token_ids)


def test_stop_tokens_follow_the_options() -> None:
    fake = FakeVisionModel(default="A cat.")
    assert fake.generate("?").token_ids[-1] == END_TOKEN_ID  # default: <|end|> ...
    endoftext = fake.generate("?", stop=["<|endoftext|>"])  # ... or what stop= names
    assert (endoftext.token_ids[-1], endoftext.finish_reason) == (ENDOFTEXT_TOKEN_ID, "stop")
    by_id = fake.generate("?", stop=[END_TOKEN_ID])
    assert (by_id.token_ids[-1], by_id.finish_reason) == (END_TOKEN_ID, "stop")
    # stop=[]: nothing would have stopped a real model, so it ran to the length limit.
    never = fake.generate("?", stop=[])
    assert (never.text, never.token_ids, never.finish_reason) == ("A cat.", text_ids("A cat."), "length")


def test_an_end_token_inside_the_script_ends_the_answer() -> None:
    fake = FakeVisionModel(default="Yes.<|end|>and then some noise")
    result = fake.generate("?")
    assert result.text == "Yes."
    assert result.token_ids == [*text_ids("Yes."), END_TOKEN_ID]


def test_max_new_tokens_truncates() -> None:
    fake = FakeVisionModel(default="one two three four five six")
    result = fake.generate("Count.", max_new_tokens=3)
    assert result.finish_reason == "length"
    assert result.token_ids == text_ids("one two three four five six")[:3]
    assert result.text == "one two three"
    # Exactly the answer's length: the limit comes before the stop token.
    exact = fake.generate("Count.", max_new_tokens=len(text_ids("one two three four five six")))
    assert (exact.text, exact.finish_reason) == ("one two three four five six", "length")
    assert END_TOKEN_ID not in exact.token_ids


# -- stream ------------------------------------------------------------------------------------


def test_stream_yields_the_answer_in_pieces(photo: Image.Image) -> None:
    fake = FakeVisionModel(["The chart shows  revenue\ngrowing fast."])
    stream = fake.stream(Prompt().user("Explain the chart.", images=[photo]), max_new_tokens=64)
    with pytest.raises(RuntimeError, match="not finished"):
        stream.result  # noqa: B018 - the result exists only once the stream has ended
    pieces = list(stream)
    assert pieces == ["The ", "chart ", "shows  ", "revenue\n", "growing ", "fast."]
    assert "".join(pieces) == stream.result.text == stream.text == "The chart shows  revenue\ngrowing fast."
    assert stream.result.usage.image_tokens == image_tokens_for_size(640, 480, 16)
    assert fake.calls[0].method == "stream"


def test_stream_checks_inputs_at_once_and_can_stop_early() -> None:
    fake = FakeVisionModel(default="a b c d")
    with pytest.raises(OptionsError):
        fake.stream("Hi", top_p=2.0)
    stream = fake.stream("Hi")
    iterator = iter(stream)
    assert next(iterator) == "a "
    stream.close()
    assert list(iterator) == []
    with pytest.raises(RuntimeError):
        stream.result  # noqa: B018


# -- batch -------------------------------------------------------------------------------------


def test_a_bad_batch_item_fails_alone(photo: Image.Image, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    fake = FakeVisionModel({"first": "one", "third": "three"})
    results = fake.generate_batch(
        [
            Prompt().user("first", images=[photo]),
            Prompt().user("second", images=[broken]),
            ("<|user|>\n<|image_1|>\nthird<|end|>\n<|assistant|>\n", [photo]),
            ("<|image_1|> no image given", []),
        ],
        batch_size=2,
        max_new_tokens=16,
    )
    assert [r.text for r in results] == ["one", "", "three", ""]
    assert [r.finish_reason for r in results] == ["stop", "error", "stop", "error"]
    assert results[1].error is not None and results[1].error.type == "ImageError"
    assert "broken.jpg" in results[1].error.message
    assert results[3].error is not None and results[3].error.type == "PromptError"
    assert [(c.method, c.batch_index) for c in fake.calls] == [("generate_batch", 0), ("generate_batch", 2)]
    assert all(c.options.max_new_tokens == 16 for c in fake.calls)


def test_a_scripted_library_error_fails_its_batch_item_only() -> None:
    fake = FakeVisionModel(["fine", OutOfMemoryError("scripted"), "also fine"])
    results = fake.generate_batch(["a", "b", "c"])
    assert [r.finish_reason for r in results] == ["stop", "error", "stop"]
    assert results[1].error is not None and results[1].error.type == "OutOfMemoryError"


# -- extract -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scripted",
    [
        BOOK_JSON,
        f"Sure! Here it is:\n```json\n{BOOK_JSON}\n```",
        {"title": "ALONE", "author": "Morgan Maxwell"},
        BookInfo(title="ALONE", author="Morgan Maxwell"),
    ],
    ids=["json", "fenced", "dict", "model"],
)
@pytest.mark.usefixtures("prompt_and_retry")
def test_extract_parses_a_scripted_answer(photo: Image.Image, scripted: object) -> None:
    fake = FakeVisionModel([scripted])  # type: ignore[list-item]
    book = fake.extract(photo, BookInfo)
    assert book == BookInfo(title="ALONE", author="Morgan Maxwell")
    (call,) = fake.calls
    assert (call.task, call.schema) == ("extract", BookInfo)
    assert '"title"' in call.prompt  # the schema is in the instruction


@pytest.mark.usefixtures("prompt_and_retry")
def test_extract_retries_with_the_error_then_gives_up(photo: Image.Image) -> None:
    fake = FakeVisionModel(["I think it is ALONE.", BOOK_JSON])
    extraction = fake.extract_result(photo, BookInfo)
    assert extraction.attempts == 2
    assert extraction.value == BookInfo(title="ALONE", author="Morgan Maxwell")
    assert "I think it is ALONE." in fake.calls[1].prompt  # the bad answer went back to the model
    assert all(call.task == "extract" for call in fake.calls)

    stubborn = FakeVisionModel({"extract": '{"title": "ALONE"}'})
    with pytest.raises(OutputParseError, match="author"):
        stubborn.extract(photo, BookInfo, max_retries=1)
    assert len(stubborn.calls) == 2


def test_unscripted_extract_returns_a_valid_placeholder(photo: Image.Image) -> None:
    class Chart(BaseModel):
        title: str
        years: list[int]
        revenue: float | None = None
        audited: bool

    assert FakeVisionModel().extract(photo, BookInfo) == BookInfo(title="fake title", author="fake author")
    chart = FakeVisionModel().extract(photo, Chart)
    assert chart == Chart(title="fake title", years=[], revenue=None, audited=False)
