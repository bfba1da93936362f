"""Scenario 1 of the Phi-3 Cookbook: introduce the stock behind a revenue chart.

    python examples/describe_chart.py                   # examples/images/chart.png
    python examples/describe_chart.py --cookbook-urls   # the cookbook's chart, from the web
    python examples/describe_chart.py my-chart.png --model ./my-checkpoint
"""

from __future__ import annotations

from _common import images, parser, run

from phi3vision import Prompt, VisionModel

CHART_URL = "https://g.foolcdn.com/editorial/images/767633/nvidiadatacenterrevenuefy2017tofy2024.png"


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    chart = images(args, ["chart.png"], [CHART_URL])[0]
    with VisionModel.from_pretrained(args.model, num_crops=args.num_crops) as vm:
        # Renders exactly the cookbook's prompt:
        # "<|user|>\n<|image_1|>\nCould you please introduce this stock to me?<|end|>\n<|assistant|>\n"
        prompt = Prompt().user("Could you please introduce this stock to me?", images=[chart])
        stream = vm.stream(prompt, max_new_tokens=args.max_new_tokens)
        for piece in stream:
            print(piece, end="", flush=True)
        result = stream.result
        print(
            f"\n\n[{result.usage.completion_tokens} tokens, {result.timings.tokens_per_second:.1f} tokens/s]"
        )
    return 0


if __name__ == "__main__":
    run(main)
