"""Generation options: one typed, validated object (unknown fields are rejected)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import OptionsError, validation_problems

DEFAULT_MAX_NEW_TOKENS = 512


class GenerationOptions(BaseModel):
    """How to generate. Every task helper, ``generate``, ``stream`` and ``generate_batch``
    take these fields as keyword arguments, or a whole ``options=GenerationOptions(...)``.

    ``stop`` replaces the default stop tokens: ``None`` stops on ``<|end|>`` and
    ``<|endoftext|>``; ``[]`` never stops early; a list of strings and/or token ids stops on
    any of them (add ``"<|end|>"`` yourself to keep the default). A stop string is not part of
    the returned text.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=131072)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: tuple[str | int, ...] | None = None

    @model_validator(mode="after")
    def _check_stop(self) -> GenerationOptions:
        for item in self.stop or ():
            if isinstance(item, str) and not item:
                raise ValueError("stop strings must not be empty")
            if isinstance(item, int) and item < 0:
                raise ValueError(f"stop token ids must be >= 0, got {item}")
        return self


def resolve_options(
    options: GenerationOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> GenerationOptions:
    """``options`` (object or dict) updated with keyword ``overrides``; errors are OptionsError."""
    try:
        if options is None:
            base: dict[str, Any] = {}
        elif isinstance(options, GenerationOptions):
            base = options.model_dump(exclude_unset=True)
        elif isinstance(options, Mapping):
            base = dict(options)
        else:
            raise OptionsError(f"options must be GenerationOptions or a dict, got {type(options).__name__}")
        base.update(overrides)
        return GenerationOptions.model_validate(base)
    except ValidationError as exc:
        raise OptionsError(f"invalid generation options: {validation_problems(exc, 'options')}") from exc
