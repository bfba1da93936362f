"""Local stand-ins for the Hugging Face Hub, bound to 127.0.0.1 and stopped by the test.

- ``hanging_hub()``: accepts connections and never answers (a Hub behind a broken proxy).
- ``checkpoint_hub(directory, repo_id)``: serves one repository holding ``directory``'s files
  through the part of the Hub's HTTP API that huggingface_hub uses to download a snapshot:
  the model info (``/api/models/REPO[/revision/REV]``), the file tree
  (``/api/models/REPO/tree/REV``) and the files (``HEAD``/``GET /REPO/resolve/REV/FILE``).

Point huggingface_hub at one with ``HF_ENDPOINT`` (read when huggingface_hub is imported, so
the code under test runs in a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


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
def checkpoint_hub(directory: Path, repo_id: str) -> Iterator[tuple[str, list[str]]]:
    """The endpoint URL of a Hub serving ``directory`` as ``repo_id`` (at commit ``COMMIT``),
    and the list of request paths it was asked for (to check what was downloaded)."""
    files = {path.name: path for path in sorted(directory.iterdir()) if path.is_file()}
    etags = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    requests: list[str] = []

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

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            requests.append(f"{self.command} {path}")
            api = f"/api/models/{repo_id}/"
            resolve = f"/{repo_id}/resolve/"
            if (path == api.rstrip("/") or path.startswith(api + "revision/")) and not head:
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
            elif path.startswith(api + "tree/") and not head:
                self._json(
                    [
                        {"type": "file", "path": name, "size": file.stat().st_size, "oid": etags[name]}
                        for name, file in files.items()
                    ]
                )
            elif path.startswith(resolve) and path[len(resolve) :].partition("/")[2] in files:
                name = path[len(resolve) :].partition("/")[2]
                body = files[name].read_bytes()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etags[name]}"'}
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
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
