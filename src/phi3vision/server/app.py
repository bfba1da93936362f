"""The HTTP application: OpenAI's chat completions over one loaded ``VisionModel``.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. Every error is an
OpenAI-style JSON object (``{"error": {"message", "type", "param", "code"}}``) with the status
that fits; input a client controls never produces a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    ContextLengthError,
    ImageError,
    ModelClosedError,
    OptionsError,
    OutOfMemoryError,
    Phi3VisionError,
    PromptError,
)
from ..images import ImagePolicy, load_image
from ..options import GenerationOptions, resolve_options
from ..prompt import Prompt
from ..results import Generation
from .batcher import Batcher, QueueFullError, StreamEvent, error_of
from .config import ServerSettings
from .protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    ErrorBody,
    ErrorResponse,
    ImagePart,
    Message,
    ModelCard,
    ModelList,
    ResponseFormat,
    completion_id,
    now,
)

if TYPE_CHECKING:
    from ..model import VisionModel

log = logging.getLogger("phi3vision.server")

# The chat template's own end markers: OpenAI's ``stop`` adds to them, it does not replace them.
_DEFAULT_STOPS = ("<|end|>", "<|endoftext|>")
_MAX_STOP_STRINGS = 8


class APIError(Exception):
    """An error answered as it is: the status, message and OpenAI error type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type, param=param, code=code)
        self.headers = headers


def _bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def api_error(exc: BaseException) -> APIError:
    """The answer for any exception. Library input errors are the client's (400); overload and
    memory are the server's and temporary (503); anything else is a bug, logged here and
    answered without details."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), code="invalid_image", param="messages")
    if isinstance(exc, (PromptError, OptionsError)):
        return APIError(400, str(exc))
    if isinstance(exc, QueueFullError):
        return APIError(
            503,
            f"server overloaded: {exc}; retry later",
            type="server_overloaded",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, (OutOfMemoryError, ModelClosedError)):
        return APIError(503, str(exc), type="server_error")
    log.error("unexpected error answering a request", exc_info=exc)
    return APIError(500, "internal server error (logged on the server)", type="server_error")


def _invalid_request(problems: Sequence[Any]) -> APIError:
    """A 400 naming the first fields pydantic found wrong (``messages.0.content``)."""

    def where(problem: Any) -> str:
        return ".".join(str(part) for part in problem.get("loc", ()))

    message = "; ".join(f"{where(p) or 'body'}: {p.get('msg')}" for p in problems[:5])
    return _bad_request(
        f"invalid request: {message}", param=(where(problems[0]) or None) if problems else None
    )


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=error.body).model_dump(), status_code=error.status, headers=error.headers
    )


# -- from the request to the library's objects -----------------------------------------------


def constraint_fields(response_format: ResponseFormat | None) -> dict[str, Any]:
    """The ``GenerationOptions`` fields that make the answer follow ``response_format``:
    constrained decoding (docs/structured.md), so that the answer parses by construction.
    ``json_object`` is any JSON object; ``json_schema`` the request's schema."""
    if response_format is None or response_format.type == "text":
        return {}
    if response_format.type == "json_object":
        return {"json_schema": {"type": "object"}}
    if response_format.json_schema is None or response_format.json_schema.schema_ is None:
        raise _bad_request(
            "response_format of type json_schema needs json_schema.schema", param="response_format"
        )
    return {"json_schema": response_format.json_schema.schema_}


def generation_options(request: ChatCompletionRequest, settings: ServerSettings) -> GenerationOptions:
    """The library's options for a request. ``temperature`` 0 or absent answers greedily;
    above 0 it samples. ``max_tokens`` is capped at the server's limit (and defaults to it)."""
    asked = request.max_completion_tokens or request.max_tokens or settings.max_tokens
    fields: dict[str, Any] = {"max_new_tokens": min(asked, settings.max_tokens)}
    if request.temperature:
        fields.update(do_sample=True, temperature=request.temperature)
    if request.top_p is not None:
        fields["top_p"] = request.top_p
    if request.seed is not None:
        fields["seed"] = request.seed
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else request.stop
        if len(stops) > _MAX_STOP_STRINGS:
            raise _bad_request(f"at most {_MAX_STOP_STRINGS} stop strings are allowed", param="stop")
        fields["stop"] = (*_DEFAULT_STOPS, *stops)
    fields.update(constraint_fields(request.response_format))
    return resolve_options(None, fields)


def check_supported(request: ChatCompletionRequest) -> None:
    """Refuse what would change the answer but is not implemented, instead of ignoring it."""
    if request.n not in (None, 1):
        raise _bad_request("only n=1 is supported", param="n")
    if request.tools or request.functions:
        raise _bad_request("tools and function calling are not supported", param="tools")
    if request.logprobs:
        raise _bad_request("logprobs are not supported", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise _bad_request(f"{name} is not supported (only 0)", param=name)


def count_images(messages: list[Message]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.content, list)
        for part in message.content
        if isinstance(part, ImagePart)
    )


def _image(url: str, policy: ImagePolicy, number: int) -> Any:
    """One ``image_url``: a data URI, or an http(s) URL fetched under the policy (which refuses
    private and loopback hosts unless allowed). Anything else (``file://``, a path) is refused
    before it is looked at."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    label = f"image {number}"
    if scheme == "data" or scheme in policy.allowed_schemes:
        return load_image(url, policy, label=label if scheme == "data" else None)
    raise ImageError(f"{label}: image_url must be a data: URI or an http(s) URL, got scheme {scheme!r}")


def build_prompt(messages: list[Message], policy: ImagePolicy) -> Prompt:
    """The conversation as a ``Prompt``: system (or developer) messages first, then user and
    assistant turns in order, ending with a user turn. A user turn's images come before its
    text, as the checkpoint was trained. Downloads happen here (call it off the event loop)."""
    system = [m for m in messages[: _leading_system(messages)]]
    prompt = Prompt(system="\n\n".join(_text(m, i) for i, m in enumerate(system)) if system else None)
    number = 0
    for index, message in enumerate(messages[len(system) :], start=len(system)):
        if message.role in ("system", "developer"):
            raise _bad_request("system messages must come before the others", param=f"messages.{index}")
        if message.role == "assistant":
            prompt = prompt.assistant(_text(message, index))
            continue
        images = []
        for part in message.content if isinstance(message.content, list) else []:
            if isinstance(part, ImagePart):
                number += 1
                images.append(_image(part.image_url.url, policy, number))
        prompt = prompt.user(_text(message, index), images=images)
    if messages[-1].role != "user":
        raise _bad_request("the last message must be the user's", param="messages")
    return prompt


def _leading_system(messages: list[Message]) -> int:
    count = 0
    while count < len(messages) and messages[count].role in ("system", "developer"):
        count += 1
    return count


def _text(message: Message, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if message.role != "user" and any(isinstance(part, ImagePart) for part in content):
        raise _bad_request(f"only user messages may hold images ({message.role})", param=f"messages.{index}")
    return "\n".join(part.text for part in content if not isinstance(part, ImagePart))


def _usage(result: Generation) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        total_tokens=result.usage.total_tokens,
    )


def _finish_reason(result: Generation) -> Any:
    return "stop" if result.finish_reason == "stop" else "length"


# -- the application ---------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 before the app reads it (from
    Content-Length, or while a chunked body arrives)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks)}], receive), send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        error = APIError(
            413, f"the request body is over the limit of {self.limit} bytes", code="request_too_large"
        )
        await _error_response(error)(scope, receive, send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Callable[[], Awaitable[Any]]:
    """An ASGI ``receive`` that returns ``messages`` first, then defers to ``then``."""
    queue = list(messages)

    async def receive() -> Any:
        if queue:
            return queue.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


def create_app(model: VisionModel, settings: ServerSettings) -> FastAPI:
    """The FastAPI application serving ``model``. The caller owns the model (and closes it)."""
    policy = settings.image_policy()
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = Batcher(
            model,
            max_batch_size=settings.max_batch_size,
            window_s=settings.batch_window_s,
            max_wait_s=settings.batch_max_wait_s,
            max_queue=settings.max_queue,
        )
        yield
        # uvicorn has let the requests in flight finish; finish what is still queued.
        await asyncio.to_thread(state["batcher"].close, settings.shutdown_timeout_s)

    app = FastAPI(title="phi3vision", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def _known(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(api_error(exc))

    for known in (APIError, Phi3VisionError, QueueFullError):
        app.add_exception_handler(known, _known)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug: uvicorn logs the traceback; the client learns nothing of the internals.
        return _error_response(
            APIError(500, "internal server error (logged on the server)", type="server_error")
        )

    @app.middleware("http")
    async def _authorize(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if settings.api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), settings.api_key.encode()
            ):
                return _error_response(
                    APIError(
                        401,
                        "missing or wrong API key (Authorization: Bearer KEY)",
                        type="authentication_error",
                        code="invalid_api_key",
                    )
                )
        return await call_next(request)

    @app.get("/health")
    async def health() -> JSONResponse:
        batcher = state.get("batcher")
        if batcher is None or batcher.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "model": settings.model_name,
                "queued": batcher.queued,
                "requests_run": batcher.requests_run,
                "batches_run": batcher.batches_run,
            }
        )

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name, created=now())])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(http: Request) -> ChatCompletion | StreamingResponse:
        batcher = state["batcher"]
        with batcher.arrival():  # a batch about to start may wait for this request
            # Parsed here rather than by FastAPI so that a body sent without a JSON content type
            # (curl -d) is read all the same, and errors get OpenAI's 400 rather than a 422.
            try:
                request = ChatCompletionRequest.model_validate_json(await http.body())
            except ValidationError as exc:
                raise _invalid_request(exc.errors()) from None
            if request.model != settings.model_name:
                raise APIError(
                    404,
                    f"model {request.model!r} does not exist; this server serves {settings.model_name!r}",
                    type="not_found_error",
                    param="model",
                    code="model_not_found",
                )
            check_supported(request)
            options = generation_options(request, settings)
            if count_images(request.messages) > settings.max_images:
                raise _bad_request(
                    f"at most {settings.max_images} images are allowed per request", param="messages"
                )
            prompt = await asyncio.to_thread(build_prompt, request.messages, policy)
            if request.stream:
                events, cancelled = _submit_stream(batcher, prompt, options)
            else:
                answer = batcher.submit(prompt, options)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return await _stream(events, cancelled, settings.model_name, include_usage)
        result = await asyncio.wrap_future(answer)
        failure = error_of(result)
        if failure is not None:
            raise api_error(failure)
        return ChatCompletion(
            id=completion_id(),
            created=now(),
            model=settings.model_name,
            choices=[
                Choice(message=AssistantMessage(content=result.text), finish_reason=_finish_reason(result))
            ],
            usage=_usage(result),
        )

    return BodyLimit(app, settings.max_body_bytes)  # type: ignore[return-value]


def _submit_stream(
    batcher: Batcher, prompt: Prompt, options: GenerationOptions
) -> tuple[asyncio.Queue[StreamEvent], threading.Event]:
    """Queue a streamed request: the queue its events arrive in, and the event that stops it."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[StreamEvent] = asyncio.Queue()

    def emit(event: StreamEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens any more
            loop.call_soon_threadsafe(events.put_nowait, event)

    return events, batcher.submit_stream(prompt, options, emit)


async def _stream(
    events: asyncio.Queue[StreamEvent], cancelled: threading.Event, model_name: str, include_usage: bool
) -> StreamingResponse:
    """Answer a queued streamed request with server-sent events once it has started, so that a
    bad request still gets its error status instead of a broken stream."""
    try:
        kind, value = await events.get()
    except BaseException:
        cancelled.set()
        raise
    if kind == "error":
        assert isinstance(value, BaseException)
        raise api_error(value)
    ident, created = completion_id(), now()

    def chunk(
        delta: Delta, finish: Any = None, usage: CompletionUsage | None = None, empty: bool = False
    ) -> str:
        body = ChatCompletionChunk(
            id=ident,
            created=created,
            model=model_name,
            choices=[] if empty else [ChunkChoice(delta=delta, finish_reason=finish)],
            usage=usage,
        )
        return f"data: {body.model_dump_json()}\n\n"

    async def sse() -> AsyncIterator[str]:
        try:
            yield chunk(Delta(role="assistant", content=""))
            while True:
                kind, value = await events.get()
                if kind == "delta":
                    assert isinstance(value, str)
                    yield chunk(Delta(content=value))
                elif kind == "done":
                    assert isinstance(value, Generation)
                    usage = _usage(value)
                    yield chunk(Delta(), _finish_reason(value), None if include_usage else usage)
                    if include_usage:  # OpenAI's shape: a last chunk with no choices
                        yield chunk(Delta(), usage=usage, empty=True)
                    break
                else:
                    assert isinstance(value, BaseException)
                    yield f"data: {json.dumps(ErrorResponse(error=api_error(value).body).model_dump())}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
