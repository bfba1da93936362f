"""Property tests of the Prompt builder, raw-prompt validation and tokenisation: random text and
turns give a well-numbered prompt or a PromptError, never another exception."""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from phi3vision.errors import PromptError
from phi3vision.processing.tokenization import PLACEHOLDER, PromptTokenizer, placeholder_numbers
from phi3vision.prompt import Prompt, resolve_prompt

from ..conftest import GOLDEN_CHECKPOINT
from .helpers import ANY_CHAR, ANY_TEXT, SURROGATE, has_surrogate, outcome

TOKENIZER = PromptTokenizer.from_file(GOLDEN_CHECKPOINT / "tokenizer.json")

CONTROL_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"]
BAD_IMAGE_TAGS = [
    "<|image_1|>",
    "<|image_0|>",
    "<|image_-1|>",
    "<|image_99999999999|>",
    "<|image_x|>",
    "<|image_|>",
]

# Text that may hold chat markers and placeholders, well-formed or not, among any characters.
TURN_TEXT = st.lists(
    st.one_of(
        ANY_TEXT, st.sampled_from(CONTROL_TOKENS + BAD_IMAGE_TAGS), st.sampled_from(["<|", "|>", "<|image_"])
    ),
    max_size=4,
).map("".join)

ANY_PLACEHOLDER = re.compile(r"<\|image_[^|<>]*\|>")


def assert_well_numbered(prompt: Prompt) -> str:
    """The promise of the builder: placeholders are exactly 1..N in order, one per image."""
    text = prompt.render()
    count = len(prompt.images)
    assert placeholder_numbers(text, count) == list(range(1, count + 1))
    assert [int(n) for n in PLACEHOLDER.findall(text)] == list(range(1, count + 1))
    assert len(ANY_PLACEHOLDER.findall(text)) == count
    return text


# --------------------------------------------------------------------------------------------
# The builder


@given(
    system=st.none() | TURN_TEXT,
    turns=st.lists(
        st.tuples(st.sampled_from(["user", "assistant"]), TURN_TEXT, st.integers(0, 4)),
        max_size=6,
    ),
    add_generation_prompt=st.booleans(),
)
@example(system=None, turns=[], add_generation_prompt=True)
@example(system="\ud800", turns=[("user", "\x00\x01\x7f\u2028\ud800\udfff", 2)], add_generation_prompt=True)
@example(system=None, turns=[("user", "see <|image_1|>", 1)], add_generation_prompt=True)
@example(system=None, turns=[("assistant", "<|end|>", 0)], add_generation_prompt=True)
def test_builder_gives_well_numbered_prompts_or_prompt_error(
    system: str | None, turns: list[tuple[str, str, int]], add_generation_prompt: bool
) -> None:
    texts = ([system] if system is not None else []) + [text for _, text, _ in turns]
    forbidden = any(token in text for text in texts for token in CONTROL_TOKENS) or any(
        ANY_PLACEHOLDER.search(text) for text in texts
    )
    images: list[str] = []

    def build() -> Prompt:
        prompt = Prompt(system=system)
        for role, text, count in turns:
            if role == "user":
                new = [f"image-{len(images) + k}" for k in range(count)]
                images.extend(new)
                prompt = prompt.user(text, images=new)
            else:
                prompt = prompt.assistant(text)
        return prompt

    result = outcome(PromptError, build)
    if forbidden:
        assert isinstance(result, PromptError)
        return
    assert isinstance(result, Prompt), result
    assert result.images == images
    text = assert_well_numbered(result)
    # Turn text cannot change the chat's structure: one marker per turn, one <|end|> per turn.
    assert text.count("<|end|>") == len(texts)
    assert text.count("<|user|>") == sum(role == "user" for role, _, _ in turns)
    ends_with_assistant = bool(turns) and turns[-1][0] == "assistant"
    generation_prompt = add_generation_prompt and not ends_with_assistant
    assert result.render(add_generation_prompt).endswith("<|assistant|>\n") == generation_prompt


@given(
    tag=st.sampled_from(BAD_IMAGE_TAGS + CONTROL_TOKENS),
    before=ANY_TEXT,
    after=ANY_TEXT,
    role=st.sampled_from(["system", "user", "assistant"]),
)
@example(tag="<|image_1|>", before="", after="", role="user")
@example(tag="<|image_0|>", before="", after="", role="user")
@example(tag="<|image_-1|>", before="", after="", role="user")
@example(tag="<|image_99999999999|>", before="", after="", role="user")
def test_placeholders_and_markers_inside_turn_text_are_prompt_errors(
    tag: str, before: str, after: str, role: str
) -> None:
    text = before + tag + after
    with pytest.raises(PromptError, match=r"text contains '<\|"):
        if role == "system":
            Prompt(system=text)
        elif role == "user":
            Prompt().user(text, images=["a.png"])
        else:
            Prompt().user("hi").assistant(text)


@given(st.one_of(st.integers(), st.binary(), st.lists(st.text()), st.builds(object)))
def test_non_string_turn_text_is_a_prompt_error(value: Any) -> None:
    assert isinstance(outcome(PromptError, Prompt, system=value), PromptError)
    assert isinstance(outcome(PromptError, Prompt().user, value), PromptError)
    assert isinstance(outcome(PromptError, Prompt().assistant, value), PromptError)
    assert isinstance(outcome(PromptError, Prompt.from_text, value), PromptError)


@settings(max_examples=5)
@given(filler=st.sampled_from(["x", "\x00", "\ud800", "é", "<|", "\n"]), images=st.integers(0, 3))
def test_one_megabyte_turns(filler: str, images: int) -> None:
    text = filler * (1_000_000 // len(filler))
    prompt = Prompt(system="s").user(text, images=[f"{k}.png" for k in range(images)]).assistant(text)
    rendered = assert_well_numbered(prompt)
    assert len(rendered) > 2_000_000
    with pytest.raises(PromptError, match=re.escape("'<|image_1|>'")):
        Prompt().user(text + "<|image_1|>")


# --------------------------------------------------------------------------------------------
# Raw prompts: placeholder_numbers, Prompt.from_text, resolve_prompt

PLACEHOLDER_NUMBERS = st.one_of(
    st.integers(1, 8).map(str),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["0", "00", "01", "007", "-0", "+1", " 1", "1 ", "1.0", "1e3", "x", "", "１", "١", "²"]),
    st.sampled_from(["999999", "1000000", "99999999999", str(2**64), "9" * 5000]),
    st.text(ANY_CHAR, max_size=6).filter(lambda raw: "|" not in raw and "<" not in raw and ">" not in raw),
)
# Between placeholders: any text without "<", so that it cannot form a tag of its own.
FILLER = st.text(st.characters(codec=None, exclude_categories=(), exclude_characters="<"), max_size=20)


def expected_numbers(raws: list[str], num_images: int) -> list[int] | None:
    """What placeholder_numbers must return for these placeholder numbers, None for an error."""
    plain = all(
        raw.isascii() and raw.isdecimal() and len(raw) <= 6 and (raw == "0" or not raw.startswith("0"))
        for raw in raws
    )
    if num_images < 0 or not plain:
        return None
    numbers = [int(raw) for raw in raws]
    # Repeats are allowed (issue 11 point 8); every image needs a placeholder and no more.
    if set(numbers) != set(range(1, num_images + 1)):
        return None
    return numbers


@st.composite
def raw_prompts(draw: st.DrawFn) -> tuple[str, list[str], int]:
    """``(prompt, its placeholder numbers as written, number of images)``."""
    if draw(st.booleans()):  # a valid permutation, maybe perturbed
        count = draw(st.integers(0, 8))
        raws = [str(n) for n in draw(st.permutations(range(1, count + 1)))]
        raws = draw(st.sampled_from([raws, raws[:-1], [*raws, "1"], [*raws, "0"], [*raws, str(count + 2)]]))
        num_images = draw(st.sampled_from([count, count, count - 1, count + 1]))
    else:
        raws = draw(st.lists(PLACEHOLDER_NUMBERS, max_size=8))
        num_images = draw(st.integers(-2, 9))
    fillers = draw(st.lists(FILLER, min_size=len(raws) + 1, max_size=len(raws) + 1))
    text = fillers[0] + "".join(
        f"<|image_{raw}|>{filler}" for raw, filler in zip(raws, fillers[1:], strict=True)
    )
    return text, raws, num_images


@given(raw_prompts())
@example(("<|image_1|>", ["1"], 1))
@example(("<|image_0|>", ["0"], 1))
@example(("<|image_-1|>", ["-1"], 1))
@example(("<|image_99999999999|>", ["99999999999"], 1))
@example(("<|image_1|><|image_1|>", ["1", "1"], 1))
@example(("<|image_1|><|image_3|>", ["1", "3"], 2))
@example(("<|image_2|>x<|image_1|>", ["2", "1"], 2))
@example(("<|image_01|>", ["01"], 1))
@example(("\ud800<|image_1|>\x00", ["1"], 1))
def test_placeholder_numbers_return_the_numbers_in_text_order_or_raise_prompt_error(
    case: tuple[str, list[str], int],
) -> None:
    text, raws, num_images = case
    expected = expected_numbers(raws, num_images)
    result = outcome(PromptError, placeholder_numbers, text, num_images)
    if expected is None:
        assert isinstance(result, PromptError), f"{text!r} with {num_images} images gave {result}"
    else:
        assert result == expected
    # Prompt.from_text and resolve_prompt apply the same rule, images given as a list.
    images = [f"{k}.png" for k in range(max(num_images, 0))]
    if num_images >= 0:
        from_text = outcome(PromptError, Prompt.from_text, text, images)
        resolved = outcome(PromptError, resolve_prompt, text, images)
        if expected is None:
            assert isinstance(from_text, PromptError) and isinstance(resolved, PromptError)
        else:
            assert isinstance(from_text, Prompt) and from_text.render() == text and from_text.images == images
            assert resolved == (text, images)


@given(text=ANY_TEXT, num_images=st.integers(0, 3))
def test_random_raw_text_gives_numbers_or_prompt_error(text: str, num_images: int) -> None:
    result = outcome(PromptError, placeholder_numbers, text, num_images)
    if not isinstance(result, PromptError):
        assert set(result) == set(range(1, num_images + 1))


@settings(max_examples=3)
@given(count=st.sampled_from([20_000, 50_000]), shuffle_seed=st.integers(0, 2**32 - 1))
def test_many_placeholders_are_checked(count: int, shuffle_seed: int) -> None:
    # Quadratic checking took about a minute for 50 000 placeholders; linear takes milliseconds.
    # (No timing is asserted: a regression shows up as a slow suite, and the test timeout.)
    order = np.random.default_rng(shuffle_seed).permutation(count) + 1
    text = "".join(f"<|image_{n}|>" for n in order)
    assert placeholder_numbers(text, count) == order.tolist()
    assert placeholder_numbers(text + "<|image_1|>", count) == [*order.tolist(), 1]
    with pytest.raises(PromptError, match=f"no <\\|image_{count + 1}\\|>"):
        placeholder_numbers(text, count + 1)


@given(
    prompt_value=st.one_of(st.integers(), st.none(), st.binary(), st.builds(object), st.lists(st.text())),
    images=st.none() | st.lists(st.text(max_size=3), max_size=2),
)
def test_resolve_prompt_refuses_other_types(prompt_value: Any, images: list[str] | None) -> None:
    assert isinstance(outcome(PromptError, resolve_prompt, prompt_value, images), PromptError)


@given(
    images=st.one_of(
        st.lists(st.text(max_size=3), min_size=1, max_size=3),
        st.just(np.zeros((2, 2, 3), np.uint8)),
        st.just(np.zeros((0,), np.uint8)),
        st.text(min_size=1, max_size=5),
        st.binary(min_size=1, max_size=5),
    ),
)
def test_a_prompt_with_images_passed_again_is_a_prompt_error(images: Any) -> None:
    prompt = Prompt().user("what is this?", images=["cat.png"])
    with pytest.raises(PromptError, match="carries its own images"):
        resolve_prompt(prompt, images)
    assert resolve_prompt(prompt, None) == resolve_prompt(prompt, []) == (prompt.render(), ["cat.png"])


# --------------------------------------------------------------------------------------------
# Tokenisation


@settings(max_examples=60)
@given(
    texts=st.lists(st.text(ANY_CHAR, max_size=60), min_size=1, max_size=5),
    token_counts=st.lists(st.integers(1, 300), max_size=4),
    surrogate=st.none() | SURROGATE,
    where=st.integers(0, 4),
)
@example(texts=["a", "b"], token_counts=[5], surrogate="\ud800", where=1)
@example(texts=["\x00\x01\x1f\x7f", "\u2028"], token_counts=[1], surrogate=None, where=0)
def test_encoding_valid_prompts_gives_ids_or_prompt_error(
    texts: list[str], token_counts: list[int], surrogate: str | None, where: int
) -> None:
    assume(not any(ANY_PLACEHOLDER.search(text) or "<|image_" in text for text in texts))
    chunks = texts[: len(token_counts) + 1] + [""] * (len(token_counts) + 1 - len(texts))
    if surrogate is not None:
        chunks[where % len(chunks)] += surrogate
    prompt = chunks[0] + "".join(f"<|image_{n}|>{chunk}" for n, chunk in enumerate(chunks[1:], start=1))

    result = outcome(PromptError, TOKENIZER.encode, prompt, token_counts)
    if has_surrogate(prompt):
        assert isinstance(result, PromptError)
        assert "surrogate" in str(result)
        return
    assert isinstance(result, list), result
    assert result[0] == TOKENIZER.bos_token_id
    # Image N is one run of token_counts[N-1] ids -N, in order; text ids are vocabulary ids.
    runs = [(value, len(list(group))) for value, group in itertools.groupby(result) if value < 0]
    assert runs == [(-n, count) for n, count in enumerate(token_counts, start=1)]
    assert all(0 <= token < TOKENIZER.vocab_size for token in result if token >= 0)
    # Every text chunk is tokenised on its own: one <s> per chunk.
    assert result.count(TOKENIZER.bos_token_id) >= len(token_counts) + 1


@given(text=ANY_TEXT)
@example(text="\ud800")
@example(text="a\udfffb")
def test_encode_text_refuses_lone_surrogates_with_a_prompt_error(text: str) -> None:
    result = outcome(PromptError, TOKENIZER.encode_text, text)
    assert isinstance(result, PromptError) == has_surrogate(text)


def test_tokenising_a_long_prompt_with_a_late_surrogate() -> None:
    prompt = "<|user|>\n<|image_1|>\n" + "word " * 200_000 + "\udc80<|end|>\n<|assistant|>\n"
    with pytest.raises(PromptError, match=r"surrogate '\\udc80' at position 1000021"):
        TOKENIZER.encode(prompt, [10])
