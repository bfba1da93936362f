from __future__ import annotations

import json

import pytest

from phi3vision import Prompt, PromptError
from phi3vision.processing.tokenization import placeholder_numbers
from phi3vision.prompt import resolve_prompt

from .conftest import GOLDEN

CASES = {case["name"]: case for case in json.loads((GOLDEN / "cases.json").read_text())["model"]}


def test_builder_renders_the_checkpoint_chat_format():
    prompt = (
        Prompt(system="You are a careful assistant.")
        .user("What shapes do you see?", images=["square.png"])
        .assistant("Rectangles and a gradient.")
        .user("Which color dominates?")
    )
    assert prompt.render() == CASES["multi_turn"]["prompt"]
    assert prompt.images == ["square.png"]


def test_cookbook_single_image_prompt():
    prompt = Prompt().user("Could you please introduce this stock to me?", images=["chart.png"])
    assert prompt.render() == CASES["stock"]["prompt"]


def test_images_are_numbered_in_order_across_turns():
    prompt = Prompt().user("a", images=["1.png", "2.png"]).assistant("ok").user("b", images=["3.png"])
    text = prompt.render()
    assert text.index("<|image_1|>") < text.index("<|image_2|>") < text.index("<|image_3|>")
    assert prompt.images == ["1.png", "2.png", "3.png"]
    assert placeholder_numbers(text, 3) == [1, 2, 3]


def test_prompts_are_immutable_prefixes():
    first = Prompt().user("a", images=["1.png"])
    second = first.assistant("answer").user("b")
    assert first.images == ["1.png"]
    assert second.render().startswith(first.render())
    assert first.render().endswith("<|assistant|>\n")
    assert not second.assistant("x").render().endswith("<|assistant|>\n")


def test_a_single_image_needs_no_list():
    assert Prompt().user("a", images="cat.png").images == ["cat.png"]


@pytest.mark.parametrize(
    "text", ["see <|image_1|>", "<|image_0|>", "x <|end|> y", "<|user|>", "<|assistant|>"]
)
def test_control_tokens_inside_turn_text_are_refused(text):
    with pytest.raises(PromptError):
        Prompt().user(text)


def test_from_text_validates_and_keeps_the_raw_text():
    raw = CASES["compare"]["prompt"]
    prompt = Prompt.from_text(raw, ["a.png", "b.png"])
    assert prompt.render() == raw
    assert prompt.images == ["a.png", "b.png"]
    with pytest.raises(PromptError, match="2 image placeholder"):
        Prompt.from_text(raw, ["a.png"])
    with pytest.raises(PromptError, match="cannot be extended"):
        prompt.user("more")


@pytest.mark.parametrize(
    ("text", "images", "message"),
    [
        ("<|image_0|>", 1, "out of range"),
        ("<|image_-1|>", 1, "malformed"),
        ("<|image_99999999999|>", 1, "out of range"),
        ("<|image_x|>", 1, "malformed"),
        ("<|image_1|><|image_1|>", 1, "more than once"),
        ("<|image_1|><|image_3|>", 2, "without gaps"),
        ("<|image_2|>", 1, "without gaps"),
        ("<|image_1|>", 2, "1 image placeholder.*2 image"),
        ("no placeholder", 1, "0 image placeholder"),
    ],
)
def test_bad_placeholders_are_prompt_errors(text, images, message):
    with pytest.raises(PromptError, match=message):
        placeholder_numbers(text, images)


def test_resolve_prompt_accepts_a_prompt_or_text_with_images():
    prompt = Prompt().user("a", images=["1.png"])
    assert resolve_prompt(prompt, None) == (prompt.render(), ["1.png"])
    assert resolve_prompt("<|image_1|>x", ["1.png"]) == ("<|image_1|>x", ["1.png"])
    with pytest.raises(PromptError, match="carries its own images"):
        resolve_prompt(prompt, ["2.png"])
    with pytest.raises(PromptError, match="must be a Prompt or a str"):
        resolve_prompt(42, None)  # type: ignore[arg-type]


def test_strip_chat_markers_leaves_none_behind():
    from phi3vision.prompt import strip_chat_markers

    assert strip_chat_markers("Sure<|<|end|>end|> done <|user|>") == "Sure done "
    Prompt().user("q").assistant(strip_chat_markers("a <|<|end|>end|> b"))  # a valid turn now
