"""compile=True (static KV cache, compiled decode step) gives the same tokens as the default
path, for batches with left padding and for streams too (single prompts are in the golden tests)."""

from __future__ import annotations

from phi3vision import Prompt, VisionModel

from .conftest import GOLDEN, GOLDEN_CHECKPOINT


def test_compiled_batches_and_streams_match_the_default_path(cpu_model: VisionModel):
    prompts = [
        Prompt().user("Describe.", images=[GOLDEN / "images" / "square336.png"]),
        ("<|user|>\nhello there<|end|>\n<|assistant|>\n", []),
        Prompt().user(
            "Compare.", images=[GOLDEN / "images" / "chart_wide.png", GOLDEN / "images" / "book_tall.png"]
        ),
    ]
    expected = cpu_model.generate_batch(prompts, batch_size=3, num_crops=2, max_new_tokens=10, stop=[])
    with VisionModel.from_pretrained(
        GOLDEN_CHECKPOINT, device="cpu", dtype="float32", compile=True
    ) as compiled:
        assert not compiled.reuse_prefix  # the static cache replaces prefix reuse
        batch = compiled.generate_batch(prompts, batch_size=3, num_crops=2, max_new_tokens=10, stop=[])
        assert [r.token_ids for r in batch] == [r.token_ids for r in expected]
        stream = compiled.stream(prompts[0], num_crops=2, max_new_tokens=10, stop=[])
        assert "".join(stream) == expected[0].text
        assert stream.result.token_ids == expected[0].token_ids
        # A call made while a stream is half-read must not touch the stream's static cache.
        stream = compiled.stream(prompts[0], num_crops=2, max_new_tokens=10, stop=[])
        pieces = iter(stream)
        first = next(pieces)
        other = compiled.generate(prompts[1][0], max_new_tokens=10, stop=[])
        assert first + "".join(pieces) == expected[0].text
        assert other.token_ids == expected[1].token_ids
