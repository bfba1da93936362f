"""Task helpers: a documented prompt for each task, and parsing of the answer into a result.

Both ``VisionModel`` and ``phi3vision.testing.FakeVisionModel`` get these methods from
``TaskMixin``; each one builds a ``Prompt`` and calls ``self.generate``.

The prompts (``TaskPrompts``; override per model with ``model.task_prompts = TaskPrompts(...)``
or per call with ``instruction=``):

- describe:      "Describe this image in detail."
- extract_text:  "Read all the text in this image. Reply with the text only, line by line, in reading order."
- compare:       "What are the differences between these images?"
- extract:       "Extract the information in this image as JSON matching this JSON schema: {schema}
                  Reply with the JSON object only."
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import constraints
from .errors import OptionsError, OutputParseError, PromptError
from .prompt import Prompt, strip_chat_markers
from .results import Answer, Comparison, Description, Generation, TextExtraction

SchemaT = TypeVar("SchemaT", bound=BaseModel)


class TaskPrompts(BaseModel):
    """The instructions behind the task helpers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    describe: str = "Describe this image in detail."
    extract_text: str = (
        "Read all the text in this image. Reply with the text only, line by line, in reading order."
    )
    compare: str = "What are the differences between these images?"
    extract: str = (
        "Extract the information in this image as JSON matching this JSON schema:\n{schema}\n"
        "Reply with the JSON object only."
    )
    extract_retry: str = (
        "That was not valid: {error}\nReply again with only a JSON object matching the schema."
    )


class Extraction(Generation):
    """``extract_result(image, schema)``: the validated object plus the generation behind it."""

    value: Any = Field(description="An instance of the requested schema")
    attempts: int
    constrained: bool = Field(
        False,
        description="True when decoding was constrained by the schema (the grammar extra is installed); "
        "False for the prompt-and-retry fallback",
    )


_log = logging.getLogger("phi3vision")
_fallback_said = threading.Event()


def _say_fallback_once() -> None:
    """Without the grammar backend, extract falls back to prompt-and-retry: say so once per process."""
    if not _fallback_said.is_set():
        _fallback_said.set()
        _log.warning(
            "phi3vision: extract() is asking for JSON in the prompt and retrying, because the grammar "
            "backend is not installed; pip install 'phi3vision[%s]' makes every answer valid by "
            "construction",
            constraints.GRAMMAR_EXTRA,
        )


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_json_object(text: str, schema: type[SchemaT]) -> SchemaT:
    """The first JSON object in ``text`` (a ```json fence or prose around it is fine),
    validated against ``schema``. Raises ``OutputParseError`` saying what was wrong."""
    match = _JSON_OBJECT.search(text)
    if match is None:
        raise OutputParseError(f"the answer holds no JSON object: {text[:200]!r}")
    try:
        data = json.loads(match.group(0))
    except ValueError as exc:
        raise OutputParseError(f"the answer's JSON does not parse: {exc}") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'object'}: {e['msg']}" for e in exc.errors()
        )
        raise OutputParseError(f"the answer does not match {schema.__name__}: {problems}") from exc


def extract_instruction(template: str, schema: type[BaseModel] | Mapping[str, Any] | None) -> str:
    """The extract task's instruction: ``template`` with its ``{schema}`` filled in (compact JSON)."""
    json_schema = schema.model_json_schema() if isinstance(schema, type) else dict(schema or {})
    return template.replace("{schema}", json.dumps(json_schema, separators=(",", ":")))


def text_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class TaskMixin:
    """Task helpers over ``generate``. Options are ``GenerationOptions`` fields."""

    task_prompts: TaskPrompts = TaskPrompts()

    def generate(
        self,
        prompt: Prompt | str,
        images: Sequence[Any] | None = None,
        *,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> Generation:
        raise NotImplementedError

    def describe(
        self,
        image: Any,
        *,
        instruction: str | None = None,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> Description:
        """Describe one image."""
        prompt = Prompt().user(instruction or self.task_prompts.describe, images=[image])
        result = self.generate(prompt, num_crops=num_crops, options=options, **option_fields)
        return Description(**result.model_dump())

    def extract_text(
        self,
        image: Any,
        *,
        instruction: str | None = None,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> TextExtraction:
        """Read the text in an image (OCR): the whole text and its non-empty lines."""
        prompt = Prompt().user(instruction or self.task_prompts.extract_text, images=[image])
        result = self.generate(prompt, num_crops=num_crops, options=options, **option_fields)
        return TextExtraction(**result.model_dump(), lines=text_lines(result.text))

    def compare(
        self,
        image_a: Any,
        image_b: Any,
        *more: Any,
        instruction: str | None = None,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> Comparison:
        """Compare two or more images. The model card suggests num_crops=4 for several images."""
        images = [image_a, image_b, *more]
        prompt = Prompt().user(instruction or self.task_prompts.compare, images=images)
        result = self.generate(prompt, num_crops=num_crops, options=options, **option_fields)
        return Comparison(**result.model_dump(), num_images=len(images))

    def ask(
        self,
        question: str,
        images: Any = (),
        *,
        system: str | None = None,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> Answer:
        """Ask a question about zero or more images (one image may be given without a list)."""
        if not isinstance(question, str) or not question.strip():
            raise PromptError("ask() needs a non-empty question")
        prompt = Prompt(system=system).user(question, images=images)
        result = self.generate(prompt, num_crops=num_crops, options=options, **option_fields)
        return Answer(**result.model_dump(), question=question)

    def extract_result(
        self,
        image: Any,
        schema: type[BaseModel] | Mapping[str, Any],
        *,
        instruction: str | None = None,
        max_retries: int = 2,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> Extraction:
        """Structured output: JSON from the model, validated against ``schema``, a pydantic
        model class (``value`` is an instance) or a JSON schema dict (``value`` is the parsed
        JSON; this needs the grammar extra).

        With the grammar backend installed (``pip install 'phi3vision[grammar]'``), decoding is
        constrained by the schema, so the answer is valid by construction; an answer that runs
        out of tokens first raises ``OutputParseError`` (raise ``max_new_tokens`` or bound the
        schema). Without it, a reply that does not parse or validate is sent back with the
        error, up to ``max_retries`` more times; then ``OutputParseError``. ``constrained`` on
        the result says which way it went.
        """
        is_model = isinstance(schema, type) and issubclass(schema, BaseModel)
        if not is_model and not isinstance(schema, Mapping):
            raise OptionsError(
                f"schema must be a pydantic model class or a JSON schema dict, got {schema!r}"
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise OptionsError(f"max_retries must be an int >= 0, got {max_retries!r}")
        text = extract_instruction(instruction or self.task_prompts.extract, schema)
        prompt = Prompt().user(text, images=[image])
        if constraints.backend_available():
            return self._extract_constrained(prompt, schema, num_crops, options, option_fields)
        if not isinstance(schema, type):
            raise OptionsError(
                "extract() with a JSON schema dict needs the grammar backend (xgrammar), which is not "
                f"installed: pip install 'phi3vision[{constraints.GRAMMAR_EXTRA}]' (or pass a pydantic "
                "model class)"
            )
        _say_fallback_once()
        error = OutputParseError("not attempted")
        for attempt in range(1, max_retries + 2):
            result = self.generate(prompt, num_crops=num_crops, options=options, **option_fields)
            try:
                value = parse_json_object(result.text, schema)
            except OutputParseError as exc:
                error = exc
                prompt = prompt.assistant(strip_chat_markers(result.text)).user(
                    self.task_prompts.extract_retry.replace("{error}", strip_chat_markers(str(exc)))
                )
                continue
            return Extraction(**result.model_dump(), value=value, attempts=attempt)
        raise OutputParseError(
            f"no valid {schema.__name__} after {max_retries + 1} attempt(s): {error}"
        ) from error

    def _extract_constrained(
        self,
        prompt: Prompt,
        schema: type[BaseModel] | Mapping[str, Any],
        num_crops: int | None,
        options: Any,
        option_fields: dict[str, Any],
    ) -> Extraction:
        """One generation constrained by ``schema``: valid JSON of the schema unless it ran out of tokens."""
        name = schema.__name__ if isinstance(schema, type) else str(schema.get("title", "JSON"))
        fields = {**option_fields, "json_schema": schema}
        result = self.generate(prompt, num_crops=num_crops, options=options, **fields)
        if result.finish_reason == "length":
            raise OutputParseError(
                f"the answer ran out of tokens after {result.usage.completion_tokens} before the "
                f"{name} object was complete: raise max_new_tokens, or bound the schema "
                "(maxLength on strings, maxItems on lists; see docs/structured.md)"
            )
        if not isinstance(schema, type):
            data = json.loads(result.text)
            return Extraction(**result.model_dump(), value=data, attempts=1, constrained=True)
        try:
            value = schema.model_validate_json(result.text)
        except ValidationError as exc:  # the grammar checks the JSON schema; a validator may check more
            raise OutputParseError(f"the answer does not validate as {name}: {exc}") from exc
        return Extraction(**result.model_dump(), value=value, attempts=1, constrained=True)

    def extract(
        self,
        image: Any,
        schema: type[SchemaT],
        *,
        instruction: str | None = None,
        max_retries: int = 2,
        num_crops: int | None = None,
        options: Any = None,
        **option_fields: Any,
    ) -> SchemaT:
        """Like ``extract_result`` but returns just the validated ``schema`` instance."""
        value: SchemaT = self.extract_result(
            image,
            schema,
            instruction=instruction,
            max_retries=max_retries,
            num_crops=num_crops,
            options=options,
            **option_fields,
        ).value
        return value



__all__ = ["Extraction", "TaskMixin", "TaskPrompts", "parse_json_object"]
