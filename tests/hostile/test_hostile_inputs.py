"""Hostile inputs to every part of the public API, from fixed seeds in a bounded budget.

One rule (issue 10): whatever goes wrong surfaces as a ``Phi3VisionError`` subclass, or as the
``TypeError`` that docs/errors.md documents (Python's own, for a call whose arguments do not
fit the signature); never as anything else. Nothing here touches the network.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import requests
from PIL import Image

from phi3vision import (
    CheckpointError,
    GenerationOptions,
    ImageError,
    ImagePolicy,
    Phi3VisionError,
    Prompt,
    RequestLimits,
    VisionModel,
)
from phi3vision.images import download as downloader
from phi3vision.images import load_image
from phi3vision.testing import FakeVisionModel, tiny_checkpoint

SEED = 20261201


def documented_type_error(error: TypeError) -> bool:
    """The one TypeError docs/errors.md allows: Python's, for arguments that do not fit."""
    return "argument" in str(error)


def obeys_the_rule(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``call``; return its result or the library's error; fail on anything else."""
    try:
        return call(*args, **kwargs)
    except Phi3VisionError as error:
        str(error).encode("utf-8")  # messages stay printable
        return error
    except TypeError as error:
        if documented_type_error(error):
            return error
        raise AssertionError(f"undocumented TypeError from {call!r}: {error}") from error
    except Exception as error:
        raise AssertionError(
            f"{type(error).__module__}.{type(error).__name__} escaped {getattr(call, '__name__', call)}"
            f"({args!r:.200}, {kwargs!r:.200}): {error}"
        ) from error


ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**70,
    -(2**70),
    0.0,
    -0.0,
    0.5,
    1e308,
    math.nan,
    math.inf,
    "",
    "2",
    "yes",
    "false",
    "\ud800",
    "\x00",
    b"2",
    bytearray(b"x"),
    [],
    [True],
    [2**70],
    ["x", 2],
    (),
    {},
    {"a": 1},
    object(),
    np.int64(3),
    np.float32(0.5),
    Path("x"),
    "\n",
    ["\n", ""],
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVisionModel]:
    with FakeVisionModel(context_length=4096) as model:
        yield model


# --------------------------------------------------------------------------------------------
# Prompts

FRAGMENTS = [
    "text ",
    "<|image_1|>",
    "<|image_2|>",
    "<|image_01|>",
    "<|image_0|>",
    "<|image_-1|>",
    "<|image_x|>",
    "<|image_999999|>",
    "<|image_99999999999|>",
    "<|image_|>",
    "<|user|>",
    "<|end|>",
    "<|assistant|>",
    "<|system|>",
    "<|endoftext|>",
    "<|<|end|>end|>",
    "\ud800",
    "\x00",
    "é",
    "\U0001f600",
    "<|",
    "|>",
    "\n",
    " " * 50,
    "<|image_１|>",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(0, 8)))


def test_random_prompts_obey_the_rule(fake: FakeVisionModel) -> None:
    rng = random.Random(SEED)
    image = Image.new("RGB", (40, 30), (1, 2, 3))
    for _ in range(300):
        text = random_text(rng)
        images = [image] * rng.randrange(0, 3)
        obeys_the_rule(fake.generate, text, images, max_new_tokens=2)
        obeys_the_rule(fake.count_tokens, text, images)
        obeys_the_rule(Prompt.from_text, text, images)
        obeys_the_rule(lambda t=text, i=images: Prompt(system=t).user(t, images=i).assistant(t))
    for value in ODD_VALUES:
        obeys_the_rule(fake.generate, value, None, max_new_tokens=2)
        obeys_the_rule(fake.generate_batch, [value], max_new_tokens=2)
        obeys_the_rule(Prompt().user, value)
        obeys_the_rule(Prompt, value)


# --------------------------------------------------------------------------------------------
# Images of every source kind


def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def im_file(size: str) -> bytes:
    """A Pillow IM header claiming ``size`` ("4,4,4" has three dimensions)."""
    header = f"Image type: L image\r\nImage size (x*y): {size}\r\n".encode()
    return header.ljust(512, b"\x1a") + b"\x00" * 64


def damaged(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    if kind == 1:
        flipped = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if kind == 2:
        return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    return data[:16] + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


class BadFile(io.RawIOBase):
    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error

    def read(self, size: int = -1) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def image_sources(tmp_path: Path) -> list[Any]:
    rng = random.Random(SEED)
    formats = [encoded(f) for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")]
    formats += [encoded("PNG", "I;16"), encoded("TIFF", "F"), encoded("PNG", "P"), encoded("PNG", "LA")]
    sources: list[Any] = [*formats, im_file("4,4,4"), im_file("4"), im_file("0,0"), im_file("-3,2")]
    sources += [png_claiming(w, h) for w, h in ((0, 5), (5, 0), (2**31 - 1, 2**31 - 1), (100_000, 100_000))]
    sources += [damaged(rng.choice(formats), rng) for _ in range(150)]
    sources += [bytes(rng.randrange(256) for _ in range(rng.randrange(200))) for _ in range(30)]
    released = memoryview(b"abc")
    released.release()
    sources += [b"", bytearray(formats[0]), memoryview(formats[0]), released]
    sources += [
        "data:image/png;base64,",
        "data:image/png;base64,!!!",
        "data:,",
        "data:text/html,<b>",
        "data:",
        "data:image/png," + "%89PNG",
        "data:image/png;base64," + "A" * 10,
        "DATA:image/png;base64,iVBOR",
    ]
    directory = tmp_path / "folder"
    directory.mkdir()
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    sources += [
        str(directory),
        directory,
        str(empty),
        str(tmp_path / "missing.png"),
        "\x00",
        "a\x00b",
        "",
        "/dev/null",
        "C:\\x.png",
        "~/nothing.png",
        "\ud800.png",
        "x" * 5000,
        os.fsencode("x.png"),
    ]
    sources += [
        io.BytesIO(formats[0]),
        io.StringIO("text"),
        BadFile(result=None),
        BadFile(result=3),
        BadFile(error=OSError("boom")),
        BadFile(error=ValueError("closed")),
        BadFile(error=RuntimeError("x")),
    ]
    sources += [
        Image.new(mode, (3, 2)) for mode in ("RGB", "RGBA", "L", "1", "P", "I;16", "I", "F", "CMYK", "LAB")
    ]
    sources += [Image.new("RGB", (0, 0))]
    sources += [
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((4, 4), np.float32),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((2, 2, 2, 2), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((4, 4, 1), np.uint8),
        np.zeros((4, 4, 3), np.uint8)[:, ::-1],
        np.array("x"),
    ]
    sources += [
        "http://",
        "ftp://x/y.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://[::1",
        3,
        None,
    ]
    return sources


@pytest.mark.parametrize("allowed_formats", ["default", None])
def test_images_of_every_source_kind_obey_the_rule(
    tmp_path: Path, fake: FakeVisionModel, allowed_formats: Any
) -> None:
    policy = ImagePolicy(allowed_formats=None) if allowed_formats is None else ImagePolicy()
    no_network = mock.patch.object(requests.Session, "get", side_effect=AssertionError("network"))
    with no_network, mock.patch.object(downloader, "_resolve", lambda host, port: ["10.0.0.1"]):
        for source in image_sources(tmp_path):
            result = obeys_the_rule(load_image, source, policy)
            if isinstance(result, Image.Image):
                assert result.mode == "RGB" and result.width >= 1 and result.height >= 1
            obeys_the_rule(fake.describe, source)


def test_an_image_with_three_dimensions_is_an_image_error() -> None:
    # issue 10 point 5: Pillow's IM plugin reports the size the file claims.
    with pytest.raises(ImageError, match="invalid image size"):
        load_image(im_file("4,4,4"), ImagePolicy(allowed_formats=None))
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(im_file("4,4,4"))  # IM is not among the default formats


# --------------------------------------------------------------------------------------------
# Options, RequestLimits, ImagePolicy

CONSTRAINTS = {"json_schema", "regex", "choices"}
OPTION_FIELDS = [*GenerationOptions.model_fields, "max_tokens", "Temperature"]
POLICY_FIELDS = [*ImagePolicy.model_fields, "allow_everything"]
LIMIT_FIELDS = [*RequestLimits.model_fields, "max_video"]


def random_fields(rng: random.Random, names: list[str]) -> dict[str, Any]:
    return {rng.choice(names): rng.choice(ODD_VALUES) for _ in range(rng.randrange(1, 3))}


def test_options_policies_and_limits_obey_the_rule(fake: FakeVisionModel) -> None:
    rng = random.Random(SEED)
    image = Image.new("RGB", (9, 9))
    for _ in range(400):
        options = random_fields(rng, OPTION_FIELDS)
        obeys_the_rule(GenerationOptions, **options)
        # Constraints are left out of the fake's calls: a scripted answer that breaks one is
        # the fake's ScriptedAnswerError (a wrong test, deliberately not a library error).
        unconstrained = {k: v for k, v in options.items() if k not in CONSTRAINTS}
        obeys_the_rule(fake.generate, "hi", **{**unconstrained, "max_new_tokens": 2})
        obeys_the_rule(fake.generate, "hi", options=unconstrained)
        policy = obeys_the_rule(ImagePolicy, **random_fields(rng, POLICY_FIELDS))
        limits = obeys_the_rule(RequestLimits, **random_fields(rng, LIMIT_FIELDS))
        if isinstance(policy, ImagePolicy) and isinstance(limits, RequestLimits):
            model = FakeVisionModel(image_policy=policy, limits=limits)
            obeys_the_rule(model.generate, "<|image_1|><|image_1|>", [image], max_new_tokens=1)
    for value in ODD_VALUES:
        obeys_the_rule(FakeVisionModel, image_policy=value)
        obeys_the_rule(FakeVisionModel, limits=value)
        obeys_the_rule(FakeVisionModel.from_pretrained, "x", feature_cache_size=value)
        obeys_the_rule(fake.generate, "hi", options=value)


# --------------------------------------------------------------------------------------------
# Checkpoint files, each damaged in several ways


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", shards=2)


def json_damages(text: str, rng: random.Random) -> list[bytes]:
    import json

    data = json.loads(text)
    damages = [b"", b"[]", b"\xff\xfe", text[: len(text) // 2].encode()]
    if isinstance(data, dict):
        for _ in range(4):
            mutated = json.loads(text)
            section = mutated
            keys = list(section)
            key = rng.choice(keys)
            if isinstance(section[key], dict) and section[key] and rng.random() < 0.5:
                section, key = section[key], rng.choice(list(section[key]))
            section[key] = rng.choice([None, -1, 0, 1.5, "x", True, [], {}, [1.0], 10**9])
            damages.append(json.dumps(mutated).encode())
    return damages


def binary_damages(data: bytes, rng: random.Random) -> list[bytes]:
    flipped = bytearray(data)
    for _ in range(16):
        flipped[rng.randrange(min(len(flipped), 4096))] = rng.randrange(256)
    return [data[:8], data[: len(data) // 2], bytes(flipped), b"\xff" * 8 + data[8:]]


NOT_READ = {"tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}
"""Files the loader never reads: damaging them changes nothing, so one damage is enough."""


def test_every_checkpoint_file_damaged_is_a_checkpoint_error(checkpoint: Path) -> None:
    rng = random.Random(SEED)
    files = sorted(path.name for path in checkpoint.iterdir())
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= set(files)
    for name in files:
        path = checkpoint / name
        original = path.read_bytes()
        damages = (
            json_damages(original.decode(), rng)
            if name.endswith(".json") and len(original) < 100_000
            else binary_damages(original, rng)
        )
        if name == "tokenizer.json":
            damages = [b"", b"{}", original[: len(original) // 2], b'{"model": 3}']
        if name in NOT_READ:
            damages = [b"\xff"]
        try:
            for damage in [*damages, None]:
                if damage is None:
                    path.unlink()
                else:
                    path.write_bytes(damage)
                result = obeys_the_rule(
                    VisionModel.from_pretrained, checkpoint, device="cpu", dtype="float32"
                )
                if isinstance(result, VisionModel):
                    result.close()  # some files are not read (special_tokens_map.json) or not damaged enough
                else:
                    assert isinstance(result, CheckpointError), (name, damage and damage[:80], result)
                    assert name in str(result) or "weight" in str(result) or "checkpoint" in str(result), (
                        result
                    )
        finally:
            path.write_bytes(original)
    VisionModel.from_pretrained(checkpoint, device="cpu").close()  # restored intact


def test_a_damaged_tokenizer_names_the_file(checkpoint: Path, tmp_path: Path) -> None:
    # issue 10 point 3
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: not a valid tokenizer file"):
        VisionModel.from_pretrained(copy, device="cpu")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_size", 72, "rope_scaling.short_factor has 8 factors.*need 9"),
        ("num_attention_heads", 8, "rope_scaling.short_factor has 8 factors.*need 4"),
        ("num_attention_heads", 0, "num_attention_heads must be an integer"),
        ("hidden_size", 62, "hidden_size .* must be an even multiple"),
        ("vocab_size", 3, "token id|vocab"),
        ("num_key_value_heads", 3, "num_key_value_heads .* must divide"),
        ("original_max_position_embeddings", "x", "original_max_position_embeddings must be an integer"),
        ("rope_theta", -1, "rope_theta must be a finite number"),
        ("num_hidden_layers", 10**12, "num_hidden_layers must be an integer from 1"),
        ("intermediate_size", 96, "weight .* has shape"),
    ],
)
def test_config_sizes_that_do_not_match_are_checkpoint_errors_naming_the_field(
    checkpoint: Path, tmp_path: Path, field: str, value: Any, message: str
) -> None:
    # issue 10 point 4: sizes against the rotary factors, each other and the weights.
    import json

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config[field] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as info:
        VisionModel.from_pretrained(copy, device="cpu")
    assert "config.json" in str(info.value) or "weight" in str(info.value)


# --------------------------------------------------------------------------------------------
# Every URL form (the differential test in tests/test_ssrf.py covers the hosts)


def test_url_forms_obey_the_rule_without_network() -> None:
    from tests.test_ssrf import url_spellings

    strict = ImagePolicy(allow_private_urls=False)
    no_network = mock.patch.object(requests.Session, "get", side_effect=AssertionError("network"))
    with no_network, mock.patch.object(downloader, "_resolve", lambda host, port: ["127.0.0.1"]):
        for url in url_spellings(1500, seed=SEED):
            assert isinstance(obeys_the_rule(load_image, url, strict), ImageError)
