"""The pytest plugin: registered through the package's entry point, fixtures of the right kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3vision import VisionModel
from phi3vision.testing import FakeVisionModel


def test_the_plugin_is_registered_by_the_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("phi3vision")
    assert plugin is not None
    assert plugin.__name__ == "phi3vision.testing.plugin"


@pytest.mark.parametrize("round_", [1, 2])
def test_fake_vision_model_is_fresh_for_every_test(fake_vision_model: FakeVisionModel, round_: int) -> None:
    assert isinstance(fake_vision_model, FakeVisionModel)
    assert fake_vision_model.calls == [] and fake_vision_model.pending_responses == 0
    fake_vision_model.script([f"round {round_}"])
    assert fake_vision_model.generate("Hi").text == f"round {round_}"


_models_seen: list[int] = []


@pytest.mark.parametrize("round_", [1, 2])
def test_tiny_vision_model_is_loaded_once_per_session(
    tiny_vision_model: VisionModel, tiny_vision_checkpoint: Path, round_: int
) -> None:
    _models_seen.append(id(tiny_vision_model))
    assert len(set(_models_seen)) == 1
    info = tiny_vision_model.info
    assert (info.device, info.dtype, info.state) == ("cpu", "float32", "loaded")
    assert Path(info.directory) == tiny_vision_checkpoint.resolve()
