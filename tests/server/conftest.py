"""Real ``phi3vision serve`` processes on 127.0.0.1, on the golden tiny checkpoint.

Every server started here is stopped by the fixture that started it, whatever the test did.
"""

from __future__ import annotations

import base64
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from ..conftest import GOLDEN, GOLDEN_CHECKPOINT

MODEL = "phi3v-tiny"
KEY = "test-key-123"
IMAGES = GOLDEN / "images"
STARTUP_S = 300  # the machine may be busy: torch imports and the load can take a while


def needs_server_extra() -> None:
    """Skip (with the reason) where the server extra or the openai client is not installed."""
    pytest.importorskip(
        "fastapi", reason="the server extra is not installed: pip install 'phi3vision[server]'"
    )
    pytest.importorskip(
        "uvicorn", reason="the server extra is not installed: pip install 'phi3vision[server]'"
    )
    pytest.importorskip("openai", reason="the openai client (a dev dependency) is not installed")


def data_uri(name: str = "tiny.png") -> str:
    return "data:image/png;base64," + base64.b64encode((IMAGES / name).read_bytes()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = KEY) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=600)

    def post(self, body: Any, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
        return requests.post(
            f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=600, **kwargs
        )

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = requests.get(f"{self.url}/health", timeout=30).json()
        return answer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def start_server(log_dir: Path, *args: str) -> Server:
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    command = [
        sys.executable, "-m", "phi3vision", "serve",
        "--model", str(GOLDEN_CHECKPOINT), "--device", "cpu", "--dtype", "float32",
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", MODEL, "--api-key", KEY, *args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    server = Server(process, port, log_path)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    server.stop()
    pytest.fail(f"the server did not answer /health within {STARTUP_S} s:\n{server.log()}")


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers with extra options; all are stopped when the test ends."""
    started: list[Server] = []

    def make(*args: str) -> Server:
        started.append(start_server(tmp_path, *args))
        return started[-1]

    yield make
    for server in started:
        server.stop()


@dataclass
class ImageHost:
    """A local HTTP server with one PNG, recording every request it gets."""

    port: int
    hits: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/image.png"


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    png = (IMAGES / "tiny.png").read_bytes()
    host = ImageHost(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield host
    httpd.shutdown()
    httpd.server_close()
