"""Constrained decoding (json_schema, regex, choices) on the tiny random-weight checkpoint.

Random weights pick tokens at random: whatever the grammar allows, some row will try it. So
every answer below being valid shows the grammar, not the model. Budgets are small and the
schemas bounded, to keep this file's runtime modest.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from phi3vision import GenerationOptions, OptionsError, OutputParseError, Prompt
from phi3vision.constraints import (
    CONSTRAINED_STOP_TOKEN_IDS,
    answer_problem,
    backend_available,
    constraint_of,
)
from phi3vision.options import resolve_options
from phi3vision.testing import FakeVisionModel, ScriptedAnswerError

needs_grammar = pytest.mark.skipif(
    not backend_available(), reason="the grammar extra (xgrammar) is not installed"
)

PROMPT = "<|user|>\nDescribe the picture as JSON.<|end|>\n<|assistant|>\n"
PROMPTS = [PROMPT, PROMPT.replace("Describe", "Summarise")]
BUDGET = 96  # tokens: each schema below is bounded inside it (at worst one token per character)


class LineItem(BaseModel):
    sku: str = Field(pattern=r"^[A-Z][0-9]{1,2}$")
    qty: int = Field(ge=1, le=9)


class Invoice(BaseModel):
    currency: Literal["EUR", "USD"]
    items: list[LineItem] = Field(min_length=1, max_length=2)
    total: float = Field(ge=0, le=99)


SCHEMAS: dict[str, dict[str, Any] | type[BaseModel]] = {
    "nested-numbers": {
        "type": "object",
        "properties": {
            "item": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 6},
                    "price": {"type": "number", "minimum": 0, "maximum": 100},
                },
                "required": ["name", "price"],
            },
            "count": {"type": "integer", "minimum": -3, "maximum": 12},
        },
        "required": ["item", "count"],
    },
    "enums-lists": {
        "type": "object",
        "properties": {
            "colors": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue"]},
                "minItems": 1,
                "maxItems": 3,
            },
            "shape": {"enum": ["circle", "square", None]},
            "label": {"type": ["string", "null"], "pattern": "^[a-z]{0,5}$"},
        },
        "required": ["colors", "shape", "label"],
    },
    "pydantic-invoice": Invoice,
}


def _control_ids(model: Any) -> set[int]:
    added = set(model.processor.tokenizer.tokenizer.get_added_tokens_decoder())
    return added | set(range(model.processor.tokenizer.vocab_size, model.module.vocab_size))


def _assert_valid(model: Any, schema: dict[str, Any] | type[BaseModel], results: list[Any]) -> None:
    constraint = constraint_of(GenerationOptions(json_schema=schema))
    assert constraint is not None
    control = _control_ids(model)
    for result in results:
        assert result.finish_reason == "stop", result.text
        assert answer_problem(constraint, result.text) is None, result.text
        *content, last = result.token_ids
        assert last in CONSTRAINED_STOP_TOKEN_IDS
        assert not control.intersection(content), result.token_ids  # no control token as content
        if isinstance(schema, type):
            schema.model_validate_json(result.text)


def test_the_tiny_checkpoint_has_the_real_vocabulary_widths(cpu_model):
    assert cpu_model.module.vocab_size == 32064  # the model's output ids: the mask's width
    assert cpu_model.processor.tokenizer.vocab_size == 32045  # with the added tokens


@needs_grammar
@pytest.mark.parametrize("name", SCHEMAS)
def test_bounded_schemas_are_valid_in_20_sampled_runs(cpu_model, name):
    schema = SCHEMAS[name]
    results = cpu_model.generate_batch(
        [PROMPT] * 20,
        batch_size=20,
        json_schema=schema,
        do_sample=True,
        temperature=1.5,  # flatter than the random logits already are: more variety per row
        seed=sorted(SCHEMAS).index(name),
        max_new_tokens=BUDGET,
    )
    _assert_valid(cpu_model, schema, results)
    assert len({result.text for result in results}) > 10  # twenty samples, not one answer twenty times


@needs_grammar
@pytest.mark.parametrize("name", SCHEMAS)
def test_bounded_schemas_are_valid_greedy_and_batched_equals_one_by_one(cpu_model, name):
    schema = SCHEMAS[name]
    single = [cpu_model.generate(p, json_schema=schema, max_new_tokens=BUDGET) for p in PROMPTS]
    batched = cpu_model.generate_batch(PROMPTS, batch_size=2, json_schema=schema, max_new_tokens=BUDGET)
    _assert_valid(cpu_model, schema, single)
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]


@needs_grammar
def test_seeded_sampled_runs_repeat_and_stream_as_generate(cpu_model):
    schema = SCHEMAS["nested-numbers"]
    options = {"json_schema": schema, "do_sample": True, "seed": 7, "max_new_tokens": BUDGET}
    first = cpu_model.generate(PROMPT, **options)
    stream = cpu_model.stream(PROMPT, **options)
    streamed = "".join(stream)
    assert streamed == first.text == stream.result.text
    _assert_valid(cpu_model, schema, [first, stream.result])


@needs_grammar
def test_choices_always_answer_one_of_them(cpu_model):
    choices = ["yes", "no", "not sure", 'a "quoted" one']
    results = cpu_model.generate_batch(
        [PROMPT] * 12,
        batch_size=12,
        choices=choices,
        do_sample=True,
        temperature=2.0,
        seed=3,
        max_new_tokens=16,
    )
    results.append(cpu_model.generate(PROMPT, choices=choices, max_new_tokens=16))
    assert all(r.text in choices and r.finish_reason == "stop" for r in results), [r.text for r in results]
    answer = cpu_model.ask("Is it red?", choices=["red", "blue"], max_new_tokens=8)  # a chat prompt
    assert answer.text in {"red", "blue"}


@needs_grammar
def test_regex_on_a_chat_prompt_with_earlier_turns(cpu_model):
    prompt = Prompt().user("Give a code.").assistant("AB-12").user("Another one.")
    for seed in range(3):
        result = cpu_model.generate(
            prompt, regex=r"[A-Z]{2}-[0-9]{2}", do_sample=True, seed=seed, max_new_tokens=16
        )
        assert result.finish_reason == "stop"
        assert (
            answer_problem(constraint_of(GenerationOptions(regex=r"[A-Z]{2}-[0-9]{2}")), result.text) is None
        )  # type: ignore[arg-type]


@needs_grammar
def test_the_mask_covers_the_model_width_and_blanks_control_tokens(cpu_model):
    import torch

    from phi3vision.constraints.masking import RowMatchers, grammars_for

    tokenizer = cpu_model.processor.tokenizer
    constraint = constraint_of(GenerationOptions(choices=["<|user|>", "1"]))
    assert constraint is not None
    matchers = RowMatchers(grammars_for(tokenizer, 32064), constraint, 1, CONSTRAINED_STOP_TOKEN_IDS)
    allowed = torch.isfinite(matchers.mask(torch.zeros(1, 32064)))[0]
    assert not allowed[32000:].any()  # the added tokens and the 19 ids past the tokenizer's end
    assert allowed[tokenizer.tokenizer.token_to_id("<")]  # the choice spelled in plain characters
    matchers.advance(torch.tensor([tokenizer.tokenizer.token_to_id("1")]))
    allowed = torch.isfinite(matchers.mask(torch.zeros(1, 32064)))[0]
    assert set(allowed.nonzero().flatten().tolist()) == set(CONSTRAINED_STOP_TOKEN_IDS)


def test_constraint_options_are_checked():
    with pytest.raises(OptionsError, match="at most one of json_schema, regex and choices"):
        resolve_options(None, {"regex": "a", "choices": ["a"]})
    for stop in (["\n"], ["<|end|>"]):
        with pytest.raises(ValueError, match="stop strings cannot be combined with choices"):
            GenerationOptions(choices=["a"], stop=stop)
    assert GenerationOptions(choices=["a"], stop=[32007]).stop == (32007,)
    with pytest.raises(ValueError, match="needs a stop token"):
        GenerationOptions(regex="a+", stop=[])
    with pytest.raises(ValueError, match="non-empty"):
        GenerationOptions(choices=["a", ""])
    with pytest.raises(ValueError, match="must not repeat"):
        GenerationOptions(choices=["a", "a"])


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "'not'"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems'"),
        ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, "'allOf'"),
        ({"type": "string", "format": "hostname"}, "'hostname'"),
        ({"type": "tuple"}, "'tuple'"),
    ],
)
def test_a_schema_that_cannot_be_enforced_names_the_keyword(schema, keyword):
    with pytest.raises(ValueError, match=keyword):
        GenerationOptions(json_schema=schema)


@needs_grammar
def test_a_grammar_that_does_not_compile_is_an_options_error(cpu_model):
    with pytest.raises(OptionsError, match=r"regex cannot be compiled.*Unclosed"):
        cpu_model.generate(PROMPT, regex="[a-", max_new_tokens=4)
    with pytest.raises(OptionsError, match="Cannot find field 'nope'"):
        cpu_model.generate(PROMPT, json_schema={"$ref": "#/nope"}, max_new_tokens=4)


def test_without_the_backend_a_constraint_names_the_extra(monkeypatch, cpu_model):
    import phi3vision.constraints.spec

    monkeypatch.setattr(phi3vision.constraints.spec, "backend_available", lambda: False)
    for model in (cpu_model, FakeVisionModel()):
        with pytest.raises(OptionsError, match=r"pip install 'phi3vision\[grammar\]'"):
            model.generate(PROMPT, choices=["a", "b"], max_new_tokens=4)


class Tag(BaseModel):
    label: str = Field(max_length=4)


@needs_grammar
def test_extract_is_constrained_and_says_so(cpu_model):
    result = cpu_model.extract_result(
        _image(), Tag, num_crops=1, max_new_tokens=BUDGET, do_sample=True, seed=1
    )
    assert result.constrained and result.attempts == 1
    assert isinstance(result.value, Tag) and result.value == Tag.model_validate_json(result.text)


@needs_grammar
def test_extract_takes_a_json_schema_dict():
    fake = FakeVisionModel()
    result = fake.extract_result(_image(), SCHEMAS["nested-numbers"])
    assert result.constrained and result.value == json.loads(result.text) and result.value["count"] == -3


@needs_grammar
def test_extract_that_runs_out_of_tokens_says_what_to_change(cpu_model):
    with pytest.raises(
        OutputParseError, match=r"ran out of tokens.*raise max_new_tokens, or bound the schema"
    ):
        cpu_model.extract(_image(), Tag, num_crops=1, max_new_tokens=3)


@pytest.mark.usefixtures("prompt_and_retry")
def test_extract_without_the_backend_falls_back_and_says_so_once(caplog, monkeypatch):
    import phi3vision.tasks

    monkeypatch.setattr(phi3vision.tasks, "_fallback_said", type(phi3vision.tasks._fallback_said)())
    fake = FakeVisionModel(default='Sure: {"label": "cat"}')
    with caplog.at_level(logging.WARNING, logger="phi3vision"):
        results = [fake.extract_result(_image(), Tag) for _ in range(2)]
    assert [r.constrained for r in results] == [False, False]
    assert all(r.value == Tag(label="cat") for r in results)
    said = [r for r in caplog.records if "grammar backend is not installed" in r.getMessage()]
    assert len(said) == 1 and "phi3vision[grammar]" in said[0].getMessage()


@needs_grammar
def test_the_fake_honours_constraints():
    fake = FakeVisionModel(['{"label": "cat"}', '{"label": "a long label"}', "maybe"])
    assert fake.extract(_image(), Tag) == Tag(label="cat")
    assert fake.calls[0].options.json_schema is Tag
    with pytest.raises(ScriptedAnswerError, match="label"):
        fake.extract(_image(), Tag)  # longer than maxLength: a real model could not say it
    with pytest.raises(ScriptedAnswerError, match="not one of the choices"):
        fake.generate_batch(["q"], choices=["yes", "no"])  # not hidden as a failed batch item
    assert FakeVisionModel().generate("q", choices=["yes", "no"]).text == "yes"  # unscripted
    assert (
        json.loads(FakeVisionModel().generate("q", json_schema=SCHEMAS["nested-numbers"]).text)["count"] == -3
    )


def _image() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 48), (30, 120, 200))
