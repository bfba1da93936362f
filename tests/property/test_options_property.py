"""Property tests of resolve_options: random dicts give valid GenerationOptions or OptionsError."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from phi3vision.errors import OptionsError
from phi3vision.options import GenerationOptions, resolve_options

from .helpers import ANY_TEXT, outcome

FIELDS = list(GenerationOptions.model_fields)

ODD_FLOATS = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 5e-324, 1e308])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    ODD_FLOATS,
    ANY_TEXT,
    st.sampled_from(["nan", "inf", "-inf", "1", "0.5", "1e3", " 2 ", "true", "0x10", "１"]),
    st.binary(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=5), inner)
    ),
    max_leaves=8,
)
NEAR_VALID = st.one_of(
    st.booleans(),
    st.integers(-2, 200),
    st.floats(-0.5, 2.0),
    ODD_FLOATS,
    st.none(),
    st.lists(st.one_of(st.integers(-1, 40000), st.text(max_size=6)), max_size=3),
)
"""Values near the valid ranges, so that some generated dicts are valid options."""
KEYS = st.one_of(
    st.sampled_from(FIELDS), ANY_TEXT, st.integers(), st.none(), st.sampled_from(["Temperature", "top-p"])
)


def assert_valid(options: GenerationOptions) -> None:
    """Every GenerationOptions that exists satisfies the documented ranges."""
    assert isinstance(options.max_new_tokens, int) and 1 <= options.max_new_tokens <= 131072
    assert isinstance(options.max_new_tokens, int) and not isinstance(options.max_new_tokens, bool)
    assert isinstance(options.do_sample, bool)  # None is settled by the temperature
    assert isinstance(options.temperature, float) and math.isfinite(options.temperature)
    assert 0.0 <= options.temperature <= 100.0
    assert options.temperature > 0 or not options.do_sample  # temperature 0 is always greedy
    for value, top in ((options.top_p, 1.0), (options.repetition_penalty, 100.0)):
        assert isinstance(value, float) and math.isfinite(value) and 0.0 < value <= top
    assert type(options.top_k) is int and options.top_k >= 0
    assert options.seed is None or (type(options.seed) is int and 0 <= options.seed < 2**63)
    if options.stop is not None:
        assert isinstance(options.stop, tuple)
        for item in options.stop:
            assert (type(item) is str and item) or (type(item) is int and 0 <= item < 2**31)


@given(
    options=st.dictionaries(KEYS, VALUES, max_size=5)
    | st.dictionaries(st.sampled_from(FIELDS), NEAR_VALID, max_size=2),
    overrides=st.dictionaries(st.sampled_from(FIELDS), NEAR_VALID | VALUES, max_size=2),
)
@example(options={"temperature": math.nan}, overrides={})
@example(options={"top_p": math.inf}, overrides={})
@example(options={"max_new_tokens": True, "top_k": False}, overrides={})
@example(options={"max_new_tokens": -1}, overrides={"seed": 2**64})
@example(options={"unknown": 1}, overrides={})
@example(options={1: 2, None: 3}, overrides={})
@example(options={"stop": ["", -1]}, overrides={})
@example(options={"stop": "<|end|>"}, overrides={})
def test_random_dicts_give_valid_options_or_options_error(
    options: dict[Any, Any], overrides: dict[str, Any]
) -> None:
    result = outcome(OptionsError, resolve_options, options, overrides)
    if isinstance(result, OptionsError):
        assert str(result).startswith("invalid generation options:")
        return
    assert isinstance(result, GenerationOptions)
    assert_valid(result)
    assert set(options) | set(overrides) <= set(FIELDS)  # unknown keys are never accepted


@given(
    field=st.sampled_from(["temperature", "top_p", "repetition_penalty"]),
    value=st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-Infinity"]),
    as_override=st.booleans(),
)
def test_nan_and_inf_floats_are_refused_as_not_finite(field: str, value: Any, as_override: bool) -> None:
    options, overrides = ({}, {field: value}) if as_override else ({field: value}, {})
    # Strings ("nan") are not numbers at all in strict mode; float nan and inf are not finite.
    with pytest.raises(OptionsError, match=f"{field}: Input should be a (finite|valid) number"):
        resolve_options(options, overrides)


@given(
    field=st.sampled_from(FIELDS),
    value=VALUES,
    base=st.builds(GenerationOptions, temperature=st.floats(0.01, 100), top_k=st.integers(0, 50)),
)
def test_overriding_an_options_object_keeps_it_valid(field: str, value: Any, base: GenerationOptions) -> None:
    result = outcome(OptionsError, resolve_options, base, {field: value})
    if isinstance(result, GenerationOptions):
        assert_valid(result)
        untouched = {name for name in base.model_fields_set if name != field}
        assert all(getattr(result, name) == getattr(base, name) for name in untouched)


@given(st.one_of(st.integers(), st.text(), st.lists(st.integers()), st.builds(object), st.floats()))
def test_options_of_other_types_are_options_errors(options: Any) -> None:
    assert isinstance(outcome(OptionsError, resolve_options, options, {}), OptionsError)
