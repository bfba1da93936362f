"""Local stand-ins for the Hugging Face Hub, bound to 127.0.0.1 and stopped by the test.

- ``hanging_hub()``: accepts connections and never answers (a Hub behind a broken proxy).
- ``checkpoint_hub(directory, repo_id)``: serves one repository holding ``directory``'s files
  through the part of the Hub's HTTP API that huggingface_hub uses to download a snapshot:
  the model info (``/api/models/REPO[/revision/REV]``), the file tree
  (``/api/models/REPO/tree/REV``) and the files (``HEAD``/``GET /REPO/resolve/REV/FILE``).
  With ``answers`` it answers only some kinds of request and holds the others unanswered
  (a Hub, or a proxy, that stops answering part-way).
- ``run_against(endpoint, hf_home, script, *args)``: a Python script in a fresh process
  pointed at a stand-in, with 1 s Hub timeouts; ``hub_unavailable_message(run)`` checks the
  error it printed.

huggingface_hub reads ``HF_ENDPOINT`` when it is imported, so the code under test runs in a
subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"

REQUEST_KINDS = frozenset({"info", "tree", "head", "get"})
"""What ``checkpoint_hub`` answers: the model info, the file tree, a file's metadata (HEAD)
and a file's content (GET)."""


def run_against(
    endpoint: str, hf_home: Path, script: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh process whose huggingface_hub talks to ``endpoint``, caches in
    ``hf_home`` and waits 1 s for the Hub (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,  # far above what 1 s timeouts allow: a hang fails the test instead of CI
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_ETAG_TIMEOUT": "1",
            "HF_HUB_DOWNLOAD_TIMEOUT": "1",
            **env,
        },
        check=False,
    )


def hub_unavailable_message(run: subprocess.CompletedProcess[str]) -> str:
    """The message of the one-line ``HubUnavailableError`` that a script run by ``run_against``
    printed as ``KIND MESSAGE`` (exit status 3), checked to name the ways out."""
    assert run.returncode == 3, run.stdout + run.stderr
    kind, _, message = run.stdout.strip().partition(" ")
    assert kind == "HubUnavailableError" and "\n" not in message, run.stdout
    for way_out in ("--model DIR", "PHI3VISION_MODEL=DIR", "HF_HUB_OFFLINE"):
        assert way_out in message
    return message


@contextmanager
def hanging_hub() -> Iterator[str]:
    """The endpoint URL of a server that accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()
        for connection in connections:
            connection.close()
        thread.join(timeout=5)


@contextmanager
def checkpoint_hub(
    directory: Path, repo_id: str, answers: frozenset[str] = REQUEST_KINDS, files_commit: str = COMMIT
) -> Iterator[tuple[str, list[str]]]:
    """The endpoint URL of a Hub serving ``directory`` as ``repo_id`` (at commit ``COMMIT``),
    and the requests (``"METHOD PATH"``) it was asked for, to check what was downloaded.
    A request of a kind (see ``REQUEST_KINDS``) not in ``answers`` gets no answer at all.
    ``files_commit`` is the commit the files are served from (another one than the model
    info's: the branch moved between the two requests)."""
    files = {path.name: path for path in sorted(directory.iterdir()) if path.is_file()}
    etags = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    requests: list[str] = []
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _not_found(self, head: bool = False) -> None:
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)

        def _kind(self, path: str, head: bool) -> str | None:
            api = f"/api/models/{repo_id}/"
            if (path == api.rstrip("/") or path.startswith(api + "revision/")) and not head:
                return "info"
            if path.startswith(api + "tree/") and not head:
                return "tree"
            if path.startswith(f"/{repo_id}/resolve/"):
                return "head" if head else "get"
            return None

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            requests.append(f"{self.command} {path}")
            kind = self._kind(path, head)
            if kind is not None and kind not in answers:
                stopping.wait()  # hold the connection, never answer
                return
            resolve = f"/{repo_id}/resolve/"
            if kind == "info":
                self._json(
                    {
                        "id": repo_id,
                        "sha": COMMIT,
                        "siblings": [
                            {"rfilename": name, "size": file.stat().st_size, "blobId": etags[name]}
                            for name, file in files.items()
                        ],
                    }
                )
            elif kind == "tree":
                self._json(
                    [
                        {"type": "file", "path": name, "size": file.stat().st_size, "oid": etags[name]}
                        for name, file in files.items()
                    ]
                )
            elif kind in ("head", "get") and path[len(resolve) :].partition("/")[2] in files:
                name = path[len(resolve) :].partition("/")[2]
                body = files[name].read_bytes()
                headers = {"X-Repo-Commit": files_commit, "ETag": f'"{etags[name]}"'}
                self._send(200, body, headers, head)
            else:
                self._not_found(head)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
