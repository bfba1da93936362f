"""Many threads sharing one VisionModel get exactly the results of sequential calls."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from phi3vision import Prompt, VisionModel

from .conftest import GOLDEN

IMAGES = [
    GOLDEN / "images" / name for name in ("square336.png", "chart_wide.png", "book_tall.png", "gray.png")
]


def _calls() -> list[tuple[str, Callable[[VisionModel], list[int]]]]:
    """A mix of every kind of call, each returning the generated token ids."""
    calls: list[tuple[str, Callable[[VisionModel], list[int]]]] = []
    for i, image in enumerate(IMAGES):
        prompt = Prompt().user(f"Question {i}?", images=[image])
        calls.append(
            (f"generate-{i}", lambda m, p=prompt: m.generate(p, num_crops=1, max_new_tokens=5).token_ids)
        )
        calls.append(
            (f"describe-{i}", lambda m, im=image: m.describe(im, num_crops=2, max_new_tokens=4).token_ids)
        )

        def streamed(m: VisionModel, p: Prompt = prompt) -> list[int]:
            stream = m.stream(p, num_crops=1, max_new_tokens=5)
            text = "".join(stream)
            assert text == stream.result.text
            return stream.result.token_ids

        calls.append((f"stream-{i}", streamed))
        calls.append(
            (
                f"batch-{i}",
                lambda m, p=prompt: [
                    t
                    for r in m.generate_batch(
                        [p, p.assistant("ok").user("more")], num_crops=1, max_new_tokens=3
                    )
                    for t in r.token_ids
                ],
            )
        )
        chat = prompt.assistant("An answer.").user("And then?")
        calls.append((f"chat-{i}", lambda m, p=chat: m.generate(p, num_crops=1, max_new_tokens=4).token_ids))
    return calls


def test_stress_many_threads_match_sequential_results(cpu_model: VisionModel):
    calls = _calls()
    expected = {name: call(cpu_model) for name, call in calls}
    cpu_model.clear_caches()  # concurrent calls must be right whatever is cached
    order = [name for name, _ in calls] * 3
    random.Random(7).shuffle(order)
    by_name = dict(calls)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda name: (name, by_name[name](cpu_model)), order))
    assert len(results) == len(order)
    for name, tokens in results:
        assert tokens == expected[name], name
