"""An OpenAI-compatible HTTP server over one ``VisionModel`` (``phi3vision serve``).

Needs the ``server`` extra (``pip install 'phi3vision[server]'``: FastAPI and uvicorn). It is
built only on the library's public API; see docs/server.md.
"""

from __future__ import annotations

import importlib.util

from ..errors import MissingExtraError

__all__ = ["require_server_extra"]


def require_server_extra() -> None:
    """Raise one clear error when FastAPI or uvicorn is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"the server needs {' and '.join(missing)}: pip install 'phi3vision[server]'")
