"""``phi3vision serve``: load the model once and answer the OpenAI chat API over HTTP."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from ..errors import OptionsError

API_KEY_ENV_VAR = "PHI3VISION_API_KEY"


def add_arguments(
    parser: argparse.ArgumentParser,
    positive_int: Callable[[str], int],
    non_negative_int: Callable[[str], int],
) -> None:
    """The serve options (``positive_int`` and ``non_negative_int`` are app.py's argparse types)."""
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    net.add_argument("--port", type=positive_int, default=8000, help="port (default: 8000)")
    net.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV_VAR) or None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV_VAR}; prefer it, a "
        "command line is visible to other users)",
    )
    net.add_argument(
        "--served-model-name", metavar="NAME", help="the model id clients use (default: --model)"
    )
    net.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch image URLs on private, loopback and link-local addresses (refused by default)",
    )
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-tokens",
        type=positive_int,
        default=1024,
        metavar="N",
        help="cap on a request's max_tokens, and its value when omitted (default: 1024)",
    )
    limits.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=8,
        metavar="N",
        help="requests generated together (default: 8)",
    )
    limits.add_argument(
        "--batch-window-ms",
        type=non_negative_int,
        default=10,
        metavar="MS",
        help="how long a request waits for others to batch with (default: 10)",
    )
    limits.add_argument(
        "--batch-max-wait-ms",
        type=non_negative_int,
        default=250,
        metavar="MS",
        help="how long a batch may wait, beyond the window, for requests still being read (default: 250)",
    )
    limits.add_argument(
        "--max-queue",
        type=positive_int,
        default=64,
        metavar="N",
        help="requests waiting for the model; more get 503 (default: 64)",
    )
    limits.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=20 * 1024 * 1024,
        metavar="N",
        help="largest request body; more gets 413 (default: 20 MiB)",
    )
    limits.add_argument(
        "--max-images", type=positive_int, default=8, metavar="N", help="images per request (default: 8)"
    )
    limits.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        metavar="N",
        help="longest prompt, image tokens included (default: the model's context)",
    )
    limits.add_argument(
        "--max-pixels",
        type=positive_int,
        default=20_000_000,
        metavar="N",
        help="largest width*height of an image (default: 20000000)",
    )
    limits.add_argument(
        "--shutdown-timeout",
        type=positive_int,
        default=60,
        metavar="S",
        help="on SIGTERM, seconds for requests in flight to finish (default: 60)",
    )


def run_serve(args: argparse.Namespace) -> int:
    from ..server import require_server_extra

    require_server_extra()
    import uvicorn
    from pydantic import ValidationError

    from ..loading import default_model
    from ..server.app import create_app
    from ..server.config import ServerSettings
    from .common import load_model

    name = args.model or default_model()
    try:
        settings = ServerSettings(
            model_name=args.served_model_name or str(name),
            api_key=args.api_key,
            max_tokens=args.max_tokens,
            max_batch_size=args.max_batch_size,
            batch_window_s=args.batch_window_ms / 1000,
            batch_max_wait_s=args.batch_max_wait_ms / 1000,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            max_images=args.max_images,
            max_pixels=args.max_pixels,
            max_prompt_tokens=args.max_prompt_tokens,
            allow_private_urls=args.allow_private_urls,
            shutdown_timeout_s=args.shutdown_timeout,
        )
    except ValidationError as exc:
        raise OptionsError(f"invalid server options: {exc.errors()[0]['msg']}") from exc
    # The CLI already shows the library's log lines on stderr; only the level is ours to set.
    log = logging.getLogger("phi3vision.server")
    log.setLevel(args.log_level.upper())
    if settings.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it can use it", args.host)
    with load_model(args, image_policy=settings.image_policy(), limits=settings.request_limits()) as model:
        config = uvicorn.Config(
            create_app(model, settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
        )
        server = uvicorn.Server(config)
        try:
            server.run()
        except SystemExit:  # uvicorn exits (with its own code) when it cannot start
            if server.started:
                raise
        if not server.started:  # uvicorn has logged why (most often: the port is taken)
            raise OSError(f"the server could not listen on {args.host}:{args.port}")
    return 0
