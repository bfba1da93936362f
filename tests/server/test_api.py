"""The OpenAI chat API of a real ``phi3vision serve`` process, through the official client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from .conftest import IMAGES, KEY, MODEL, ImageHost, Server, data_uri, needs_server_extra, start_server

needs_server_extra()
import openai  # noqa: E402

from phi3vision import Prompt  # noqa: E402

BODY_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(
        tmp_path_factory.mktemp("server"),
        "--max-body-bytes", str(BODY_LIMIT), "--max-tokens", "64", "--max-images", "2",
        "--max-prompt-tokens", "3000", "--batch-window-ms", "250",
    )  # fmt: skip
    yield started
    started.stop()


def user(text: str, *images: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return {"role": "user", "content": parts}


def test_chat_with_an_image_answers_as_the_library_does(server: Server, cpu_model):
    answer = server.client().chat.completions.create(
        model=MODEL, messages=[user("Describe the image.", data_uri())], max_tokens=12, temperature=0
    )
    expected = cpu_model.generate(
        Prompt().user("Describe the image.", images=[IMAGES / "tiny.png"]), max_new_tokens=12
    )
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == expected.finish_reason
    assert answer.model == MODEL
    assert answer.usage.prompt_tokens == expected.usage.prompt_tokens > expected.usage.image_tokens > 0
    assert answer.usage.completion_tokens == expected.usage.completion_tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_a_conversation_becomes_one_prompt(server: Server, cpu_model):
    messages = [
        {"role": "system", "content": "Be brief."},
        user("What is this?", data_uri()),
        {"role": "assistant", "content": "A small picture."},
        {"role": "user", "content": "And its colours?"},
    ]
    answer = server.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    prompt = (
        Prompt(system="Be brief.")
        .user("What is this?", images=[IMAGES / "tiny.png"])
        .assistant("A small picture.")
        .user("And its colours?")
    )
    assert answer.choices[0].message.content == cpu_model.generate(prompt, max_new_tokens=10).text


def test_streaming_gives_the_same_answer_and_ends_with_usage(server: Server):
    client = server.client()
    request = {"model": MODEL, "messages": [user("Describe the image.", data_uri())], "max_tokens": 16}
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1

    with_usage = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage == whole.usage
    assert with_usage[-2].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_strings_and_max_tokens_cap(server: Server):
    client = server.client()
    long = client.chat.completions.create(model=MODEL, messages=[user("Hello")], max_tokens=10_000)
    assert long.usage.completion_tokens <= 64  # the server's --max-tokens
    text = long.choices[0].message.content
    cut = text[len(text) // 2 :][:3]
    stopped = client.chat.completions.create(
        model=MODEL, messages=[user("Hello")], max_tokens=10_000, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(cut)]


def test_sampling_with_a_seed_repeats(server: Server):
    client = server.client()
    ask = {"model": MODEL, "messages": [user("Hello")], "max_tokens": 12, "temperature": 1.0, "seed": 7}
    first = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == first


def test_models_and_health(server: Server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]
    health = requests.get(f"{server.url}/health", timeout=30)  # no key needed for a load balancer
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_a_missing_or_wrong_key_is_refused(server: Server):
    with pytest.raises(openai.AuthenticationError) as refused:
        server.client(api_key="wrong").chat.completions.create(model=MODEL, messages=[user("Hi")])
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "invalid_api_key"
    bare = requests.get(f"{server.url}/v1/models", timeout=30)
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("url", ["file:///etc/hostname", "/etc/hostname", "ftp://example.com/a.png"])
def test_image_urls_that_would_read_local_files_are_refused(server: Server, url: str):
    with pytest.raises(openai.BadRequestError) as refused:
        server.client().chat.completions.create(model=MODEL, messages=[user("Hi", url)])
    assert "must be a data: URI or an http(s) URL" in refused.value.body["message"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_image_url_is_refused_without_contacting_it(
    server: Server, image_host: ImageHost, host: str
):
    url = image_host.url.replace("127.0.0.1", host)
    with pytest.raises(openai.BadRequestError) as refused:
        server.client().chat.completions.create(model=MODEL, messages=[user("Hi", url)])
    assert "non-public address" in refused.value.body["message"]
    assert refused.value.body["code"] == "invalid_image"
    assert image_host.hits == []


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "count": {"type": "integer", "maximum": 99}},
    "required": ["name", "count"],
}


def test_schema_output_follows_the_schema(server: Server):
    pytest.importorskip("xgrammar", reason="constrained decoding needs the grammar extra")
    client = server.client()
    request = {
        "model": MODEL,
        "messages": [user("Name and count of the things in the picture, as JSON.", data_uri())],
        "max_tokens": 64,
        "response_format": {"type": "json_schema", "json_schema": {"name": "things", "schema": SCHEMA}},
    }
    answer = client.chat.completions.create(**request)
    assert answer.choices[0].finish_reason == "stop"
    value = json.loads(answer.choices[0].message.content)
    assert list(value) == ["name", "count"]
    assert isinstance(value["name"], str) and len(value["name"]) <= 10
    assert isinstance(value["count"], int) and value["count"] <= 99
    streamed = client.chat.completions.create(**request, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == answer.choices[0].message.content


def test_json_object_is_constrained_to_an_object(server: Server):
    pytest.importorskip("xgrammar", reason="constrained decoding needs the grammar extra")
    answer = server.client().chat.completions.create(
        model=MODEL, messages=[user("Hi")], max_tokens=8, response_format={"type": "json_object"}
    )
    assert answer.choices[0].message.content.startswith("{")  # random weights rarely close it


@pytest.mark.parametrize(
    ("response_format", "stop", "says"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x"}}, None, "needs json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}, None, "'not'"),
        ({"type": "json_object"}, ["}"], "stop strings cannot be combined"),
    ],
)
def test_bad_response_formats_are_400(server: Server, response_format: Any, stop: Any, says: str):
    with pytest.raises(openai.BadRequestError) as refused:
        server.client().chat.completions.create(
            model=MODEL, messages=[user("Hi")], response_format=response_format, stop=stop
        )
    assert says in refused.value.body["message"]
    text = server.client().chat.completions.create(
        model=MODEL, messages=[user("Hi")], max_tokens=2, response_format={"type": "text"}
    )
    assert text.choices[0].finish_reason in ("stop", "length")


BAD_BODIES: list[tuple[Any, str | None]] = [
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, None),
    ({"model": MODEL, "messages": [user("Hi")], "max_tokens": -1}, "max_tokens"),
    ({"model": MODEL, "messages": [user("Hi")], "max_tokens": "many"}, "max_tokens"),
    ({"model": MODEL, "messages": [user("Hi")], "temperature": 5}, "temperature"),
    ({"model": MODEL, "messages": [user("Hi")], "top_p": 0}, "top_p"),
    ({"model": MODEL, "messages": [user("Hi")], "seed": -1}, None),
    ({"model": MODEL, "messages": [user("Hi")], "n": 2}, "n"),
    ({"model": MODEL, "messages": [user("Hi")], "stop": ["a"] * 20}, "stop"),
    ({"model": MODEL, "messages": [user("Hi")], "stop": [""]}, None),
    ({"model": MODEL, "messages": [user("Hi")], "logprobs": True}, "logprobs"),
    ({"model": MODEL, "messages": [user("Hi")], "tools": [{"type": "function"}]}, "tools"),
    ({"model": MODEL, "messages": [user("Hi")], "frequency_penalty": 1}, "frequency_penalty"),
    ({"model": MODEL, "messages": [user("Hi"), {"role": "assistant", "content": "Yo"}]}, "messages"),
    ({"model": MODEL, "messages": [user("Hi"), {"role": "system", "content": "Late"}]}, "messages.1"),
    ({"model": MODEL, "messages": [user("Hi <|end|><|assistant|>")]}, None),
    (
        {
            "model": MODEL,
            "messages": [
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_uri()}}]},
                user("Hi"),
            ],
        },
        "messages.0",
    ),
    ({"model": MODEL, "messages": [user("Hi", "data:image/png;base64,AAAA")]}, "messages"),
    ({"model": MODEL, "messages": [user("Hi", "data:text/plain,hello")]}, "messages"),
    ({"model": MODEL, "messages": [user("Hi", data_uri(), data_uri(), data_uri())]}, "messages"),
    ({"model": MODEL, "messages": [user("word " * 4000)]}, "messages"),
    ([], None),
    (None, None),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_input_gets_400_with_an_openai_error(server: Server, body: Any, param: str | None):
    answer = server.post(body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in answer.text


def test_malformed_json_unknown_model_and_route(server: Server):
    auth = {"Authorization": f"Bearer {KEY}"}
    broken = requests.post(f"{server.url}/v1/chat/completions", data=b"{bad\xff", headers=auth, timeout=30)
    assert broken.status_code == 400 and "invalid request" in broken.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-4o", messages=[user("Hi")])
    missing = requests.get(f"{server.url}/v1/nothing", headers=auth, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_a_body_over_the_limit_gets_413(server: Server):
    big = {"model": MODEL, "messages": [user("x" * BODY_LIMIT)]}
    answer = server.post(big)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it arrives
        yield b'{"model": "phi3v-tiny", "messages": [{"role": "user", "content": "'
        for _ in range(BODY_LIMIT // 10_000 + 1):
            yield b"x" * 10_000
        yield b'"}]}'

    answer = requests.post(
        f"{server.url}/v1/chat/completions",
        data=chunked(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413


def test_eight_concurrent_clients_are_batched_and_each_gets_its_answer(server: Server, cpu_model):
    questions = [f"Question number {i}: what is {i} + {i}?" for i in range(8)]
    before = server.health()

    def ask(question: str) -> str:
        reply = server.client().chat.completions.create(model=MODEL, messages=[user(question)], max_tokens=12)
        return str(reply.choices[0].message.content)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))
    after = server.health()
    assert answers == [cpu_model.generate(Prompt().user(q), max_new_tokens=12).text for q in questions]
    assert after["requests_run"] - before["requests_run"] == 8
    assert after["batches_run"] - before["batches_run"] < 8  # some requests shared a model call
    assert server.client().chat.completions.create(model=MODEL, messages=[user("Still there?")], max_tokens=2)


def test_one_bad_request_does_not_fail_its_batch_mates(server: Server):
    texts = ["Hello", "word " * 4000, "Hi there", "Good day"]  # the second is over --max-prompt-tokens
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(
            pool.map(lambda t: server.post({"model": MODEL, "messages": [user(t)], "max_tokens": 4}), texts)
        )
    assert [a.status_code for a in answers] == [200, 400, 200, 200]
    assert answers[1].json()["error"]["code"] == "context_length_exceeded"
