"""GenerationOptions: strict types (issue 10 point 6) and one sampling rule (issue 11 point 5)."""

from __future__ import annotations

from typing import Any

import pytest

from phi3vision.errors import OptionsError
from phi3vision.options import GenerationOptions, resolve_options
from phi3vision.processing.tokenization import DEFAULT_STOP_TOKEN_IDS

NUMBER_FIELDS = ["max_new_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty"]


@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_a_number(field: str, value: bool) -> None:
    with pytest.raises(OptionsError, match=field):
        resolve_options(None, {field: value})


@pytest.mark.parametrize("field", ["max_new_tokens", "top_k", "seed"])
@pytest.mark.parametrize("value", ["2", b"2", 2.0, " 2", bytearray(b"2")])
def test_integers_must_be_ints(field: str, value: Any) -> None:
    with pytest.raises(OptionsError, match=field):
        resolve_options(None, {field: value})


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", ["0.5", b"1", "1"])
def test_floats_must_be_numbers(field: str, value: Any) -> None:
    with pytest.raises(OptionsError, match=field):
        resolve_options(None, {field: value})


def test_an_int_is_a_fine_float() -> None:
    assert resolve_options(None, {"temperature": 1, "top_p": 1}).temperature == 1.0


@pytest.mark.parametrize("value", ["yes", "false", "true", 1, 0, "1", b"1", 1.0])
def test_do_sample_must_be_a_bool(value: Any) -> None:
    with pytest.raises(OptionsError, match="do_sample"):
        resolve_options(None, {"do_sample": value})


@pytest.mark.parametrize(
    "stop",
    [[True], [False], [2**70], [-1], [2**31], [1.0], [b"x"], [""], [None], [["x"]], {"x"}, 3, b"\n", ""],
)
def test_bad_stop_values_are_refused(stop: Any) -> None:
    with pytest.raises(OptionsError, match="stop"):
        resolve_options(None, {"stop": stop})


def test_a_single_stop_string_means_a_list_of_one() -> None:
    # issue 11 point 6
    assert resolve_options(None, {"stop": "\n"}).stop == ("\n",)
    assert GenerationOptions(stop="\n").stop == ("\n",)
    assert resolve_options(None, {"stop": ["\n", 32007]}).stop == ("\n", 32007)
    assert resolve_options(None, {"stop": ("a",)}).stop == ("a",)
    assert resolve_options(None, {"stop": []}).stop == ()


def test_temperature_zero_is_greedy_and_above_zero_samples() -> None:
    # issue 11 point 5: one rule, the OpenAI API's.
    assert resolve_options(None, {}).do_sample is False
    assert resolve_options(None, {"temperature": 0}).do_sample is False
    sampled = resolve_options(None, {"temperature": 1.5})
    assert sampled.do_sample is True and sampled.temperature == 1.5
    explicit = resolve_options(None, {"temperature": 1.5, "do_sample": False})
    assert explicit.do_sample is False
    plain = resolve_options(None, {"do_sample": True})
    assert plain.do_sample is True and plain.temperature == 1.0
    with pytest.raises(OptionsError, match="temperature=0"):
        resolve_options(None, {"do_sample": True, "temperature": 0})


def test_merging_options_keeps_what_the_caller_said() -> None:
    base = GenerationOptions(temperature=0.7)
    assert resolve_options(base, {"temperature": 0}).do_sample is False
    assert resolve_options(base, {"max_new_tokens": 3}).do_sample is True
    sampling = GenerationOptions(do_sample=True)
    assert resolve_options(sampling, {"temperature": 0.2}).temperature == 0.2
    assert resolve_options(base, {}).model_fields_set == {"temperature"}


def test_default_stop_tokens_include_the_configs_eos() -> None:
    # issue 11 point 7: </s> (2) like mlx-vlm, next to <|end|> and <|endoftext|>.
    assert set(DEFAULT_STOP_TOKEN_IDS) == {32007, 32000, 2}


@pytest.mark.parametrize(
    ("argv", "sampling"),
    [
        ([], False),
        (["--temperature", "0"], False),
        (["--temperature", "0.7"], True),
    ],
)
def test_the_cli_follows_the_same_sampling_rule(argv: list[str], sampling: bool, tmp_path: Any) -> None:
    from phi3vision.cli.app import _prepare, build_parser

    image = tmp_path / "x.png"
    image.write_bytes(b"")
    args = build_parser().parse_args(["describe", str(image), *argv])
    _prepare(args)
    python = resolve_options(None, {"temperature": args.temperature})
    assert args.options.do_sample is python.do_sample is sampling
    assert args.options == python
