"""Generation options: one typed, validated object (unknown fields are rejected).

Types are strict: ``True`` is not a number, ``"2"`` and ``b"2"`` are not integers and
``"yes"`` is not a boolean, so a value is either what the caller meant or an ``OptionsError``.
The one convenience is ``stop``: a single string means a list of that one string, and any
sequence (list or tuple) of strings and token ids is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import OptionsError, validation_problems

DEFAULT_MAX_NEW_TOKENS = 512

MAX_TOKEN_ID = 2**31 - 1
"""Largest token id accepted in ``stop``: ids are 32-bit integers for the tokenizer and torch."""

DEFAULT_SAMPLING_TEMPERATURE = 1.0
"""The temperature of ``do_sample=True`` given without a temperature (as in transformers)."""


class CheckedModel(BaseModel):
    """Base of the library's option objects (GenerationOptions, ImagePolicy, RequestLimits):
    building one with a bad field raises :class:`OptionsError` (a ``ValueError``) listing
    every problem, instead of pydantic's ``ValidationError``."""

    options_name: ClassVar[str] = "options"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise options_error(exc, self.options_name) from exc


class GenerationOptions(CheckedModel):
    """How to generate. Every task helper, ``generate``, ``stream`` and ``generate_batch``
    take these fields as keyword arguments, or a whole ``options=GenerationOptions(...)``.

    ``json_schema`` (a JSON schema dict or a pydantic model class), ``regex`` and ``choices``
    (the answer is exactly one of these strings) constrain decoding so that the answer matches
    by construction (at most one per call; needs ``pip install 'phi3vision[grammar]'``; see
    docs/structured.md). With a constraint, ``stop`` may hold token ids only.

    Sampling follows one rule (the OpenAI API's and mlx-vlm's): ``temperature=0``, the
    default, is greedy decoding; a temperature above 0 samples at that temperature unless
    ``do_sample=False`` is given explicitly. ``do_sample=True`` without a temperature samples
    at temperature 1. After validation ``do_sample`` is always a ``bool`` saying what happens.

    ``stop`` replaces the default stop tokens: ``None`` stops on ``<|end|>``,
    ``<|endoftext|>`` and ``</s>``; ``[]`` never stops early; a string, or a list of strings
    and/or token ids, stops on any of them (add ``"<|end|>"`` yourself to keep the default).
    A stop string is not part of the returned text.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    options_name: ClassVar[str] = "generation options"

    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=131072)
    do_sample: bool | None = Field(None, description="None: sample exactly when temperature > 0")
    temperature: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, le=MAX_TOKEN_ID, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: tuple[str | int, ...] | None = None
    json_schema: dict[str, Any] | type[BaseModel] | None = None
    regex: str | None = None
    choices: tuple[str, ...] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        """A string, or a list or tuple of non-empty strings and token ids (``bool`` is not an
        id); checked here, item by item, so that the message names the bad item."""
        if value is None:
            return None
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(
                f"stop must be a string or a list of strings and token ids, got {type(value).__name__}"
            )
        for item in value:
            if isinstance(item, str):
                if not item:
                    raise ValueError("stop strings must not be empty")
                if not _is_text(item):
                    raise ValueError("stop strings must be valid text (no lone surrogates)")
            elif isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item <= MAX_TOKEN_ID:
                    raise ValueError(f"stop token ids must be from 0 to {MAX_TOKEN_ID}, got {item}")
            else:
                raise ValueError(
                    f"stop items must be strings or token ids (int), got {type(item).__name__} {item!r:.40}"
                )
        return tuple(value)

    @field_validator("choices", mode="before")
    @classmethod
    def _choices_as_tuple(cls, value: Any) -> Any:
        """A list or tuple of strings (strict types still refuse anything else in it)."""
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _settle_sampling(self) -> GenerationOptions:
        """Replace ``do_sample=None`` by what the temperature means, and give ``do_sample=True``
        without a temperature the default sampling temperature. The fields the caller set
        (``model_fields_set``) are unchanged, so merging options later still sees the intent."""
        temperature_given = "temperature" in self.model_fields_set
        if self.do_sample is None:
            sample = self.temperature > 0
        elif self.do_sample and self.temperature == 0:
            if temperature_given:
                raise ValueError(
                    "do_sample=True cannot use temperature=0 (temperature 0 means greedy decoding); "
                    "give a temperature above 0, or leave do_sample out"
                )
            object.__setattr__(self, "temperature", DEFAULT_SAMPLING_TEMPERATURE)
            sample = True
        else:
            sample = self.do_sample
        object.__setattr__(self, "do_sample", sample)
        return self

    @model_validator(mode="after")
    def _check_constraint(self) -> GenerationOptions:
        from .constraints import check_constraint_options

        check_constraint_options(self)
        return self


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def options_error(exc: ValidationError, what: str) -> OptionsError:
    """One ``OptionsError`` listing every problem pydantic found, field by field."""
    return OptionsError(f"invalid {what}: {validation_problems(exc, what)}")


def resolve_options(
    options: GenerationOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> GenerationOptions:
    """``options`` (object or dict) updated with keyword ``overrides``; errors are OptionsError."""
    if options is None:
        base: dict[str, Any] = {}
    elif isinstance(options, GenerationOptions):
        base = options.model_dump(exclude_unset=True)
    elif isinstance(options, Mapping):
        base = dict(options)
    else:
        raise OptionsError(f"options must be GenerationOptions or a dict, got {type(options).__name__}")
    base.update(overrides)
    unnamed = [name for name in base if not isinstance(name, str)]
    if unnamed:
        raise OptionsError(f"invalid generation options: option names are strings, got {unnamed[0]!r:.40}")
    try:
        return GenerationOptions.model_validate(base)
    except ValidationError as exc:
        raise options_error(exc, "generation options") from exc
