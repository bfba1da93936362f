"""FakeVisionModel must keep VisionModel's public interface, so that code tested against the fake
runs unchanged on the real model. The fake is a VisionModel over a scripted engine, so the
front end is shared code; these checks fail as soon as the fake overrides or adds anything."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from phi3vision import GenerationStream, VisionModel
from phi3vision.testing import FakeGenerationStream, FakeVisionModel

TORCH_ONLY: set[str] = set()
"""VisionModel members a fake lacks: none (``module`` raises FakeNotSupportedError on a fake)."""

FAKE_ONLY = {"calls", "pending_responses", "script"}
"""What the fake adds for tests; anything else new on the fake is drift."""


def public_members(cls: type) -> dict[str, Any]:
    """Class-level public members, plus the context-manager protocol."""
    return {
        name: inspect.getattr_static(cls, name)
        for name in dir(cls)
        if not name.startswith("_") or name in ("__enter__", "__exit__", "__iter__")
    }


def parameters(function: Any) -> list[tuple[str, Any, Any]]:
    """What a caller depends on: each parameter's name, kind and default."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


REAL = public_members(VisionModel)
FAKE = public_members(FakeVisionModel)


def test_the_fake_has_every_public_member_and_only_the_documented_extras() -> None:
    assert set(REAL) - set(FAKE) == TORCH_ONLY
    assert set(FAKE) - set(REAL) == FAKE_ONLY


@pytest.mark.parametrize("name", sorted(set(REAL) - TORCH_ONLY))
def test_each_member_has_the_same_kind_and_signature(name: str) -> None:
    real, fake = REAL[name], FAKE[name]
    for kind in (property, classmethod, staticmethod):
        assert isinstance(real, kind) == isinstance(fake, kind), f"{name}: one is a {kind.__name__}"
    if isinstance(real, property):
        assert (real.fset is None) == (fake.fset is None), f"{name}: settable on one side only"
    elif callable(getattr(VisionModel, name)):
        assert parameters(getattr(FakeVisionModel, name)) == parameters(getattr(VisionModel, name))
    else:
        assert type(fake) is type(real)  # task_prompts: the same TaskPrompts default


def test_the_task_helpers_are_the_shared_code() -> None:
    """The fake's helpers are VisionModel's, so prompts, parsing and retries are the real ones."""
    assert issubclass(FakeVisionModel, VisionModel)
    for name in ("describe", "extract_text", "compare", "ask", "extract", "extract_result"):
        fake_helper = getattr(FakeVisionModel, name)
        assert fake_helper is getattr(VisionModel, name)
        assert fake_helper.__doc__ == getattr(VisionModel, name).__doc__


def test_the_fake_shares_the_whole_front_end() -> None:
    """Only the constructor, the loading hook and the test-side API are the fake's own."""
    own = {name for name in vars(FakeVisionModel) if not name.startswith("__") or name == "__init__"}
    assert own == FAKE_ONLY | {"__init__", "load"}


def test_the_fake_stream_has_the_stream_interface() -> None:
    real, fake = public_members(GenerationStream), public_members(FakeGenerationStream)
    assert set(real) == set(fake) == {"__iter__", "close", "result", "text"}
    for name in ("__iter__", "close"):
        assert parameters(getattr(FakeGenerationStream, name)) == parameters(getattr(GenerationStream, name))
    assert isinstance(fake["result"], property) and isinstance(fake["text"], property)
