"""What a ``FakeVisionModel`` answers: scripted responses and the records of the calls.

A test scripts answers in one of four ways, tried in this order for every call:

1. a queue (``responses=[...]``): the next item, consumed;
2. routes (``responses={...}``): a key that is a task name ("describe", "extract_text",
   "compare", "ask", "extract") matches calls made by that task helper; any other key matches
   calls whose rendered prompt contains it (first match in insertion order);
3. a responder (``responses=lambda call: ...``): called with the ``FakeCall``; returning
   ``None`` passes the call on;
4. the default: ``default=`` if set, else a text that describes the call
   ("fake answer to describe with 1 image(s)"), or for ``extract`` a placeholder object that
   validates against the schema; a call with ``choices`` gets the first choice and one with a
   ``json_schema`` a placeholder object (script a ``regex`` call's answer yourself).

A response is a ``str``, a ``dict`` or pydantic model (sent as JSON, for ``extract``), or an
exception instance (raised by the call, to test error handling). Queue items and route values
may also be responders.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ValidationError

from ..errors import OptionsError
from ..options import GenerationOptions
from ..results import Generation

TASK_NAMES = ("describe", "extract_text", "compare", "ask", "extract")
"""Task helpers whose calls a route key can name (``extract_result`` counts as "extract")."""

Method = Literal["generate", "stream", "generate_batch"]


@dataclass(frozen=True)
class ImageRecord:
    """One image of a recorded call, as the model saw it (loaded, so always RGB)."""

    source: str
    """A short description of what was passed in: a path, "PIL image (L, 64x48)", ..."""
    width: int
    height: int
    mode: str
    fingerprint: str
    """``phi3vision.images.image_fingerprint`` of the loaded pixels: equal pixels, equal value."""
    image_tokens: int
    """Prompt positions this image takes at the call's ``num_crops``."""

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, like ``PIL.Image.size``."""
        return (self.width, self.height)


@dataclass
class FakeCall:
    """One generation asked of a ``FakeVisionModel``: everything a test may want to assert on.

    Only calls whose inputs were valid are recorded (an invalid one raises, like the real
    model, before any record exists). ``response`` and ``result`` are filled in once the call
    has been answered; they stay ``None`` for a call answered with a scripted exception.
    """

    method: Method
    """The public method that ran: "generate" (task helpers too), "stream" or "generate_batch"."""
    task: str | None
    """The task helper behind the call ("describe", ..., "extract"), or None for a direct call."""
    prompt: str
    """The rendered prompt text, with its ``<|image_N|>`` placeholders."""
    images: tuple[ImageRecord, ...]
    options: GenerationOptions
    num_crops: int
    prompt_tokens: int
    image_tokens: int
    schema: type[BaseModel] | None = None
    """The pydantic schema of an ``extract`` call."""
    batch_index: int | None = None
    """Position of the item in its ``generate_batch`` call."""
    response: str | None = None
    """The scripted text, before stop strings and ``max_new_tokens`` were applied."""
    result: Generation | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The task name, or the method name for a direct call: what the default answer names."""
        return self.task or self.method


Response: TypeAlias = str | Mapping[str, Any] | BaseModel | BaseException
Responder: TypeAlias = Callable[[FakeCall], Response | None]
ScriptItem: TypeAlias = Response | Responder
Script: TypeAlias = Sequence[ScriptItem] | Mapping[str, ScriptItem] | Responder


class ResponseScript:
    """The queue, routes, responder and default of one fake model (not thread-safe on its own:
    the model holds its lock around ``answer``)."""

    def __init__(self) -> None:
        self.queue: deque[ScriptItem] = deque()
        self.routes: dict[str, ScriptItem] = {}
        self.responder: Responder | None = None
        self.default: ScriptItem | None = None

    def add(self, script: Script) -> None:
        """Add a queue (sequence), routes (mapping) or set the responder (callable)."""
        if isinstance(script, (str, bytes, BaseModel, BaseException)):
            raise OptionsError(
                "responses must be a list (a queue), a dict (routes) or a callable; to give one "
                "answer to every call use default=..., to give it once use [answer]"
            )
        if isinstance(script, Mapping):
            for key in script:
                if not isinstance(key, str) or not key:
                    raise OptionsError(f"route keys must be non-empty strings, got {key!r}")
            self.routes.update(script)
        elif isinstance(script, Sequence):
            self.queue.extend(script)
        elif callable(script):
            self.responder = script
        else:
            raise OptionsError(f"responses must be a list, a dict or a callable, got {type(script).__name__}")

    def answer(self, call: FakeCall) -> str:
        """The text for ``call``; raises a scripted exception."""
        found: Response | None = None
        if self.queue:
            found = _resolve(self.queue.popleft(), call)
        if found is None:
            found = self._route(call)
        if found is None and self.responder is not None:
            found = self.responder(call)
        if found is None and self.default is not None:
            found = _resolve(self.default, call)
        if found is None:
            found = default_answer(call)
        return response_text(found)

    def _route(self, call: FakeCall) -> Response | None:
        if call.task is not None and call.task in self.routes:
            return _resolve(self.routes[call.task], call)
        for key, item in self.routes.items():
            if key not in TASK_NAMES and key in call.prompt:
                return _resolve(item, call)
        return None


def _resolve(item: ScriptItem, call: FakeCall) -> Response | None:
    if isinstance(item, (str, Mapping, BaseModel, BaseException)):
        return item
    if callable(item):
        return item(call)
    raise OptionsError(
        f"a scripted response must be a str, dict, pydantic model, exception or callable, "
        f"got {type(item).__name__}"
    )


def response_text(response: Response) -> str:
    """The text a response stands for; an exception is raised here, in the caller's call."""
    if isinstance(response, BaseException):
        raise response
    if isinstance(response, str):
        return response
    if isinstance(response, BaseModel):
        return response.model_dump_json()
    if isinstance(response, Mapping):
        try:
            return json.dumps(dict(response), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise OptionsError(f"a scripted dict response must be JSON-serialisable: {exc}") from exc
    raise OptionsError(
        f"a scripted response must be a str, dict, pydantic model or exception, got {type(response).__name__}"
    )


def default_answer(call: FakeCall) -> Response:
    """What an unscripted call gets: for ``extract``, a placeholder object of the schema (so that
    code under test gets a valid value); otherwise a text that says what was asked."""
    if call.schema is not None:
        placeholder = placeholder_object(call.schema)
        if placeholder is not None:
            return placeholder
    if call.options.choices:
        return call.options.choices[0]
    schema = call.options.json_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return placeholder_object(schema) or "{}"
    if isinstance(schema, Mapping):
        return json.dumps(_placeholder(schema, schema.get("$defs", {}), "answer"), ensure_ascii=False)
    return f"fake answer to {call.name} with {len(call.images)} image(s)"


def placeholder_object(schema: type[BaseModel]) -> dict[str, Any] | None:
    """A dict that validates against ``schema``, built from its JSON schema ("fake title" for a
    string field ``title``, 0 for numbers, defaults where given), or None when the schema's
    constraints defeat this simple filler."""
    json_schema = schema.model_json_schema()
    data = _placeholder(json_schema, json_schema.get("$defs", {}), schema.__name__.lower())
    if not isinstance(data, dict):
        return None
    try:
        schema.model_validate(data)
    except ValidationError:
        return None
    return data


def _placeholder(schema: Mapping[str, Any], defs: Mapping[str, Any], name: str, depth: int = 0) -> Any:
    if depth > 8:  # a recursive schema: stop nesting
        return None
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return _placeholder(target, defs, name, depth + 1)
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            choices = [c for c in schema[key] if c.get("type") != "null"] or schema[key]
            return _placeholder(choices[0], defs, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {
            prop: _placeholder(sub, defs, prop, depth + 1)
            for prop, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        item = _placeholder(schema.get("items", {}), defs, name, depth + 1)
        return [item] * int(schema.get("minItems", 0))
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if schema.get("format") == "date":
        return "2000-01-01"
    if schema.get("format") == "date-time":
        return "2000-01-01T00:00:00Z"
    return f"fake {name}"[: schema.get("maxLength")]
