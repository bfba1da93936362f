"""``phi3vision chat`` driven by a scripted stdin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import IMAGES, MODEL_ARGS, Run

TINY = str(IMAGES / "tiny.png")


def _script(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


SCRIPT = _script(
    "Hello there",
    f"/image {TINY}",
    "What is in this picture?",
    "/reset",
    "Hello there",
    "/quit",
    "this line is never read",
)


def test_chat_turns_images_and_reset(cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli("chat", "--json", *MODEL_ARGS, stdin=SCRIPT, monkeypatch=monkeypatch)
    assert run.code == 0, run.err
    first, with_image, after_reset = run.json_lines()
    assert first["usage"]["image_tokens"] == 0
    # The image went into the second turn, which also carries the first turn and its answer.
    assert with_image["usage"]["image_tokens"] > 0
    assert (
        with_image["usage"]["prompt_tokens"] - with_image["usage"]["image_tokens"]
        > (first["usage"]["prompt_tokens"])
    )
    # /reset forgot everything: the same message gives the same prompt and answer as the first.
    assert after_reset["usage"] == first["usage"]
    assert after_reset["text"] == first["text"]
    assert "(image 1 for your next message" in run.err
    assert "(conversation reset)" in run.err
    # Without --json the same answers stream to stdout, and nothing else goes there.
    text = cli("chat", *MODEL_ARGS, stdin=SCRIPT, monkeypatch=monkeypatch)
    assert text.code == 0
    answers = (first, with_image, after_reset)
    assert text.out == "".join(r["text"] if r["text"].endswith("\n") else r["text"] + "\n" for r in answers)


def test_chat_bad_image_and_unknown_command_keep_going(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.png"
    script = _script(f"/image {missing}", "/frobnicate", "Hi")  # ends at EOF, no /quit
    run = cli("chat", "--json", *MODEL_ARGS, stdin=script, monkeypatch=monkeypatch)
    assert run.code == 0
    [answer] = run.json_lines()
    assert answer["usage"]["image_tokens"] == 0  # the missing image was not queued
    assert f"image '{missing}': file not found" in run.err
    assert "unknown command /frobnicate" in run.err


def test_chat_first_images_from_the_command_line(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = cli("chat", TINY, "--json", *MODEL_ARGS, stdin=_script("Describe it."), monkeypatch=monkeypatch)
    assert run.code == 0
    assert run.json_lines()[0]["usage"]["image_tokens"] > 0
