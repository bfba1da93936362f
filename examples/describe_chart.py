"""Scenario 1 of the Phi-3 Cookbook: introduce the stock behind a revenue chart.

python examples/describe_chart.py                       # the cookbook's chart, from the web
python examples/describe_chart.py examples/images/chart.png --model ./my-checkpoint
"""

from __future__ import annotations

from _common import parser

from phi3vision import Prompt, VisionModel

CHART_URL = "https://g.foolcdn.com/editorial/images/767633/nvidiadatacenterrevenuefy2017tofy2024.png"


def main() -> None:
    args = parser(__doc__ or "", [CHART_URL]).parse_args()
    with VisionModel.from_pretrained(args.model, num_crops=args.num_crops) as vm:
        # Renders exactly the cookbook's prompt:
        # "<|user|>\n<|image_1|>\nCould you please introduce this stock to me?<|end|>\n<|assistant|>\n"
        prompt = Prompt().user("Could you please introduce this stock to me?", images=args.images[:1])
        stream = vm.stream(prompt, max_new_tokens=args.max_new_tokens)
        for piece in stream:
            print(piece, end="", flush=True)
        result = stream.result
        print(
            f"\n\n[{result.usage.completion_tokens} tokens, {result.timings.tokens_per_second:.1f} tokens/s]"
        )


if __name__ == "__main__":
    main()
