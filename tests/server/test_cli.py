"""``phi3vision serve`` on the command line: its options, and a missing extra named once."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from phi3vision.cli import build_parser, main
from phi3vision.errors import MissingExtraError
from phi3vision.server import require_server_extra

from ..conftest import GOLDEN_CHECKPOINT


def test_serve_options_have_safe_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PHI3VISION_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "--model", "some/model"])
    assert (args.host, args.port, args.api_key, args.allow_private_urls) == ("127.0.0.1", 8000, None, False)
    monkeypatch.setenv("PHI3VISION_API_KEY", "from-env")
    assert build_parser().parse_args(["serve"]).api_key == "from-env"


@pytest.mark.parametrize("bad", [["--port", "0"], ["--max-queue", "0"], ["--max-batch-size", "x"]])
def test_bad_serve_options_are_usage_errors(bad: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(["serve", *bad]) == 2
    assert "phi3vision serve: error:" in capsys.readouterr().err


def test_a_missing_server_extra_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"pip install 'phi3vision\[server\]'"):
        require_server_extra()
    assert main(["serve", "--model", "unused"]) == 1
    assert capsys.readouterr().err.strip() == (
        "phi3vision: error: the server needs uvicorn: pip install 'phi3vision[server]'"
    )


def test_a_taken_port_is_an_error(capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("uvicorn", reason="the server extra is not installed")
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--model", str(GOLDEN_CHECKPOINT), "--device", "cpu", "--port", str(port)])
    assert code == 1
    assert f"phi3vision: error: the server could not listen on 127.0.0.1:{port}" in capsys.readouterr().err
