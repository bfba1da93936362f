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
    with pytest.raises(PromptError, match="placeholder for image 2 but 1 image"):
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
        ("<|image_01|>", 1, "without leading zeros"),
        ("<|image_001|>", 1, "without leading zeros"),
        ("<|image_00|>", 1, "without leading zeros"),
        ("<|image_1|><|image_3|>", 2, "without gaps"),
        ("<|image_2|>", 1, "without gaps"),
        ("<|image_1|>", 2, "placeholders for 1 image.*2 image.*no <|image_2|>"),
        ("<|image_1|><|image_1|>", 2, "placeholders for 1 image"),
        ("no placeholder", 1, "placeholders for 0 image"),
    ],
)
def test_bad_placeholders_are_prompt_errors(text, images, message):
    with pytest.raises(PromptError, match=message):
        placeholder_numbers(text, images)


def test_a_repeated_placeholder_is_accepted_and_kept_at_each_place():
    # issue 11 point 8: one image shown at two places of the text.
    assert placeholder_numbers("<|image_1|> a <|image_1|>", 1) == [1, 1]
    assert placeholder_numbers("<|image_2|><|image_1|><|image_2|>", 2) == [2, 1, 2]
    prompt = Prompt.from_text("<|user|>\n<|image_1|>\nleft\n<|image_1|>\nright<|end|>\n", ["a.png"])
    assert prompt.images == ["a.png"]


def test_out_of_order_placeholders_keep_their_numbers():
    # issue 11 point 9: image N stays at <|image_N|>, whatever the order in the text.
    assert placeholder_numbers("<|image_2|> then <|image_1|>", 2) == [2, 1]


def test_a_prompt_asking_for_absurdly_many_positions_is_refused_before_building_them():
    from phi3vision import ContextLengthError
    from phi3vision.processing.tokenization import MAX_PROMPT_POSITIONS, check_positions

    numbers = [1] * 1000
    with pytest.raises(ContextLengthError, match="1000 image placeholders"):
        check_positions(numbers, [MAX_PROMPT_POSITIONS // 999], 10)
    check_positions(numbers, [MAX_PROMPT_POSITIONS // 1000 - 1], 10)


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
