"""Where image features go (issue 11 points 8 and 9), on the tiny golden checkpoint.

Image N's features always go at ``<|image_N|>``: at each place when the placeholder repeats,
and whatever the order of the placeholders in the text. Checked through the public API:
greedy answers and logits of prompts that must be the same computation.
"""

from __future__ import annotations

import pytest
import torch

from phi3vision import ContextLengthError, RequestLimits, VisionModel

from .conftest import GOLDEN, GOLDEN_CHECKPOINT

SQUARE = GOLDEN / "images" / "square336.png"
CHART = GOLDEN / "images" / "chart_wide.png"


def chat(body: str) -> str:
    return f"<|user|>\n{body}<|end|>\n<|assistant|>\n"


def test_a_repeated_placeholder_puts_the_image_at_each_place(cpu_model: VisionModel) -> None:
    repeated = cpu_model.encode(chat("<|image_1|>\nleft\n<|image_1|>\nright"), [SQUARE])
    twice = cpu_model.encode(chat("<|image_1|>\nleft\n<|image_2|>\nright"), [SQUARE, SQUARE])
    assert repeated.num_tokens == twice.num_tokens
    torch.testing.assert_close(cpu_model.logits(repeated), cpu_model.logits(twice), rtol=0, atol=0)
    one = cpu_model.generate(chat("<|image_1|>\nleft\n<|image_1|>\nright"), [SQUARE], max_new_tokens=6)
    two = cpu_model.generate(
        chat("<|image_1|>\nleft\n<|image_2|>\nright"), [SQUARE, SQUARE], max_new_tokens=6
    )
    assert one.token_ids == two.token_ids
    assert one.usage.image_tokens == two.usage.image_tokens == 2 * repeated.image_token_counts[0]


def test_a_repeated_placeholder_counts_at_each_place(cpu_model: VisionModel) -> None:
    single = cpu_model.count_tokens(chat("<|image_1|>\nx"), [SQUARE])
    repeated = cpu_model.count_tokens(chat("<|image_1|>\nx<|image_1|>"), [SQUARE])
    assert repeated.image_tokens == 2 * single.image_tokens
    encoding = cpu_model.encode(chat("<|image_1|>\nx<|image_1|>"), [SQUARE])
    assert encoding.num_image_tokens == repeated.image_tokens


def test_request_limits_count_every_place_of_a_repeated_placeholder() -> None:
    with VisionModel.from_pretrained(GOLDEN_CHECKPOINT, device="cpu", dtype="float32") as model:
        single = model.count_tokens(chat("<|image_1|>"), [SQUARE]).image_tokens
    limits = RequestLimits(max_image_tokens=single)
    with VisionModel.from_pretrained(
        GOLDEN_CHECKPOINT, device="cpu", dtype="float32", limits=limits
    ) as model:
        model.generate(chat("<|image_1|>"), [SQUARE], max_new_tokens=1)
        with pytest.raises(ContextLengthError, match="max_image_tokens"):
            model.generate(chat("<|image_1|><|image_1|>"), [SQUARE], max_new_tokens=1)


def test_out_of_order_placeholders_put_image_n_at_image_n(cpu_model: VisionModel) -> None:
    # The two images take different numbers of positions, so writing the features in image
    # order into the spans in text order (what the reference does) would not even fit.
    reversed_text = cpu_model.encode(chat("<|image_2|>\nfirst\n<|image_1|>\nsecond"), [SQUARE, CHART])
    in_order = cpu_model.encode(chat("<|image_1|>\nfirst\n<|image_2|>\nsecond"), [CHART, SQUARE])
    assert reversed_text.image_token_counts[0] != reversed_text.image_token_counts[1]
    torch.testing.assert_close(cpu_model.logits(reversed_text), cpu_model.logits(in_order), rtol=0, atol=0)
    ids = reversed_text.input_ids[0].tolist()
    assert ids.index(-2) < ids.index(-1)
    assert ids.count(-2) == reversed_text.image_token_counts[1]
