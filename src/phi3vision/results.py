"""Result types: small pydantic models that serialise with ``model_dump_json()``.

Every result carries the generated ``text``, the ``finish_reason``, ``usage`` (token counts),
``timings`` (seconds) and ``model`` (which checkpoint, device, dtype and attention ran it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "error"]


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(description="All prompt positions: text tokens plus image tokens")
    image_tokens: int = Field(description="Prompt positions taken by image features")
    completion_tokens: int = Field(description="Tokens generated (the stop token included)")

    @property
    def text_tokens(self) -> int:
        return self.prompt_tokens - self.image_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(BaseModel):
    model_config = ConfigDict(frozen=True)

    preprocess_s: float = Field(description="Image loading, HD transform and tokenisation")
    time_to_first_token_s: float = Field(description="From the call to the first generated token")
    decode_s: float = Field(description="From the first generated token to the last")
    total_s: float = Field(description="The whole call")
    tokens_per_second: float = Field(
        description="Decode speed after the first token (0 when fewer than two tokens were made)"
    )


class ModelRef(BaseModel):
    """Which model produced a result, and how it ran."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_id: str
    revision: str | None = None
    device: str
    dtype: str
    attn_implementation: str
    quantization: str | None = None
    """The quantised loading scheme ("int8", "int4", "nf4"), or None for full weights."""


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    message: str


class Generation(BaseModel):
    """The outcome of one generation; task results extend it with parsed fields."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    text: str
    token_ids: list[int] = Field(default_factory=list)
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    model: ModelRef | None = None
    error: ErrorInfo | None = Field(None, description="Set when finish_reason is 'error' (batches)")

    @classmethod
    def failed(cls, exc: BaseException, model: ModelRef | None = None) -> Generation:
        """The result that stands for an item that failed (batches, batch jobs): no text, zero
        usage and timings, and the error's type and message."""
        zero = Timings(
            preprocess_s=0.0, time_to_first_token_s=0.0, decode_s=0.0, total_s=0.0, tokens_per_second=0.0
        )
        return cls(
            text="",
            finish_reason="error",
            usage=Usage(prompt_tokens=0, image_tokens=0, completion_tokens=0),
            timings=zero,
            model=model,
            error=ErrorInfo(type=type(exc).__name__, message=str(exc)),
        )


class Description(Generation):
    """``describe(image)``: a description of one image."""


class TextExtraction(Generation):
    """``extract_text(image)``: the text read from an image, whole and by line."""

    lines: list[str] = Field(default_factory=list)


class Comparison(Generation):
    """``compare(a, b, ...)``: how two or more images differ."""

    num_images: int


class Answer(Generation):
    """``ask(question, images)``: an answer to a question about images."""

    question: str
