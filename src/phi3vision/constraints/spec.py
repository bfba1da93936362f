"""What a constraint is, which JSON schemas can be enforced, and whether an answer satisfies one.

Torch-free and backend-free: the real model compiles the same ``Constraint`` with xgrammar
(``constraints.masking``); the fake model checks scripted answers with ``answer_problem``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ..errors import OptionsError
from ..processing.tokenization import END_TOKEN_ID, ENDOFTEXT_TOKEN_ID

if TYPE_CHECKING:
    from ..options import GenerationOptions

GRAMMAR_EXTRA = "grammar"
"""``pip install 'phi3vision[grammar]'`` installs the backend (xgrammar) and jsonschema."""

EOS_TOKEN_ID = 2
"""``</s>``: the config's eos. The instruct models do not emit it, but a grammar that ends may."""

CONSTRAINED_STOP_TOKEN_IDS = (END_TOKEN_ID, ENDOFTEXT_TOKEN_ID, EOS_TOKEN_ID)
"""Where a constrained answer may end when ``stop`` is not given. They are passed to the grammar
explicitly: grammar libraries default to the tokenizer's eos alone."""

ConstraintKind = Literal["json_schema", "regex", "choices"]
CONSTRAINT_FIELDS: tuple[ConstraintKind, ...] = ("json_schema", "regex", "choices")

# fmt: off
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "$schema", "$id", "$comment", "discriminator",
})
"""Keywords that describe and do not constrain (their values are not walked)."""
# fmt: on

# fmt: off
_SUPPORTED = frozenset({
    "type", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions",  # any value
    "properties", "required", "additionalProperties",  # objects
    "items", "prefixItems", "minItems", "maxItems",  # arrays
    "minLength", "maxLength", "pattern", "format",  # strings
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",  # numbers
})
"""Keywords the backend enforces. Any other keyword is refused rather than silently ignored
(xgrammar ignores ``not``, ``allOf``, ``uniqueItems``, ``patternProperties``, ... without error),
so that "valid by construction" stays true."""
# fmt: on

_FORMATS = frozenset({"date", "time", "date-time", "email", "ipv4", "ipv6", "uuid", "uri"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


@dataclass(frozen=True)
class Constraint:
    """One call's constraint in a canonical, hashable form (the cache key of its grammar)."""

    kind: ConstraintKind
    text: str
    """The JSON schema as compact JSON text, the regex, or the choices as a JSON list."""

    @property
    def schema(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text)
        return value

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(json.loads(self.text))

    def describe(self) -> str:
        if self.kind == "json_schema":
            return "the JSON schema"
        if self.kind == "regex":
            return f"the regex {self.text!r}"
        return f"one of the choices {list(self.choices)!r}"


def backend_available() -> bool:
    """Whether the grammar backend (xgrammar, the ``grammar`` extra) is installed (not imported)."""
    return importlib.util.find_spec("xgrammar") is not None


def require_backend(what: str) -> None:
    """Raise the one clear error for a missing ``grammar`` extra."""
    if not backend_available():
        raise OptionsError(
            f"{what} needs the grammar backend (xgrammar), which is not installed: "
            f"pip install 'phi3vision[{GRAMMAR_EXTRA}]'"
        )


def constraint_of(options: GenerationOptions) -> Constraint | None:
    """The options' constraint, or None for free text."""
    if options.json_schema is not None:
        return Constraint("json_schema", _schema_text(options.json_schema))
    if options.regex is not None:
        return Constraint("regex", options.regex)
    if options.choices is not None:
        return Constraint("choices", json.dumps(list(options.choices), ensure_ascii=False))
    return None


def check_constraint_options(options: GenerationOptions) -> None:
    """``GenerationOptions``' rules for constraints; raises ``ValueError`` (pydantic wraps it)."""
    given = [name for name in CONSTRAINT_FIELDS if getattr(options, name) is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of json_schema, regex and choices, got {' and '.join(given)}")
    if not given:
        return
    if options.stop is not None:
        if any(isinstance(item, str) for item in options.stop):
            raise ValueError(
                f"stop strings cannot be combined with {given[0]}: the constraint decides where the "
                "answer ends; leave stop unset or give stop token ids"
            )
        if not options.stop:
            raise ValueError(f"{given[0]} needs a stop token to end the answer: leave stop unset")
    if options.regex is not None and not options.regex:
        raise ValueError("regex must not be empty")
    if options.choices is not None:
        if not options.choices or not all(options.choices):
            raise ValueError("choices must be a non-empty list of non-empty strings")
        if len(set(options.choices)) != len(options.choices):
            raise ValueError("choices must not repeat")
    if options.json_schema is not None:
        _schema_text(options.json_schema)


def _schema_text(schema: Mapping[str, Any] | type[BaseModel]) -> str:
    """The schema as canonical JSON text, with its keywords checked and objects made strict."""
    if isinstance(schema, type):
        return _model_schema_text(schema)
    return _strict_schema_text(schema)


@functools.lru_cache(maxsize=64)
def _model_schema_text(model: type[BaseModel]) -> str:
    return _strict_schema_text(model.model_json_schema())


def _strict_schema_text(schema: Mapping[str, Any]) -> str:
    try:
        copy = json.loads(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"json_schema must be JSON-serialisable: {exc}") from exc
    if not isinstance(copy, dict):
        raise ValueError("json_schema must be a JSON object (a dict)")
    _check_node(copy, "#")
    # Key order is kept: the grammar writes properties in the schema's order.
    return json.dumps(copy, separators=(",", ":"), ensure_ascii=False)


def _check_node(node: Any, where: str) -> None:
    """Refuse keywords the backend would ignore; make objects refuse unlisted keys (what the
    backend does by default), so that the fake's validator and the grammar agree."""
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise ValueError(f"json_schema: {where} must be a schema object, got {type(node).__name__}")
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key not in _SUPPORTED:
            raise ValueError(
                f"json_schema uses the keyword {key!r} (at {where}), which constrained decoding cannot "
                f"enforce; supported keywords: {', '.join(sorted(_SUPPORTED))}"
            )
        path = f"{where}/{key}"
        if key in ("properties", "$defs", "definitions"):
            for name, child in _mapping(value, path).items():
                _check_node(child, f"{path}/{name}")
        elif key in ("additionalProperties", "items"):
            _check_node(value, path)
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"json_schema: {path} must be a non-empty list of schemas")
            for index, child in enumerate(value):
                _check_node(child, f"{path}/{index}")
        elif key == "type":
            types = value if isinstance(value, list) else [value]
            unknown = [t for t in types if t not in _TYPES]
            if unknown:
                raise ValueError(f"json_schema: unknown type {unknown[0]!r} at {path}")
        elif key == "format" and value not in _FORMATS:
            raise ValueError(
                f"json_schema: the format {value!r} (at {path}) cannot be enforced; supported formats: "
                f"{', '.join(sorted(_FORMATS))}"
            )
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"json_schema: {where} must be an object")
    return value


def answer_problem(constraint: Constraint, text: str) -> str | None:
    """Why ``text`` (a whole answer) does not satisfy ``constraint``, or None when it does.

    The check the fake model applies to scripted answers; the real model's answers satisfy it
    by construction (unless they ran out of tokens).
    """
    if constraint.kind == "choices":
        return None if text in constraint.choices else f"{text!r} is not {constraint.describe()}"
    if constraint.kind == "regex":
        try:
            matched = re.fullmatch(constraint.text, text) is not None
        except re.error as exc:
            raise OptionsError(f"regex {constraint.text!r} does not compile: {exc}") from exc
        return None if matched else f"{text!r} does not match {constraint.describe()}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"the answer is not JSON ({exc}): {text[:200]!r}"
    try:
        import jsonschema
    except ImportError:
        raise OptionsError(
            "checking an answer against a JSON schema needs jsonschema, which is not installed: "
            f"pip install 'phi3vision[{GRAMMAR_EXTRA}]'"
        ) from None
    validator = jsonschema.Draft202012Validator(
        constraint.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(data), key=lambda error: list(error.absolute_path))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(part) for part in first.absolute_path) or "the object"
    return f"the answer does not match the JSON schema at {where}: {first.message}"
