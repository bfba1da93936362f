"""Scenario 3 of the Phi-3 Cookbook: what is the difference between two photos?

    python examples/compare_photos.py                   # the two photos in examples/images
    python examples/compare_photos.py --cookbook-urls   # the cookbook's photos, from the web
    python examples/compare_photos.py before.jpg after.jpg
"""

from __future__ import annotations

from _common import images, parser, run

from phi3vision import Prompt, VisionModel

PHOTOS = [
    "https://hinhnen.ibongda.net/upload/wallpaper/doi-bong/2012/11/22/arsenal-wallpaper-free.jpg",
    "https://assets-webp.khelnow.com/d7293de2fa93b29528da214253f1d8d0/news/uploads/2021/07/Arsenal-1024x576.jpg.webp",
]
# The cookbook's prompt, as written (with the space before "What"): a raw prompt is used exactly.
COOKBOOK_PROMPT = (
    "<|user|>\n<|image_1|>\n<|image_2|>\n What is difference in this two images?<|end|>\n<|assistant|>\n"
)


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    photos = images(args, ["team_trophies.jpg", "team_celebrating.webp"], PHOTOS)[:2]
    # The model card suggests num_crops=4 for several images.
    num_crops = args.num_crops or 4
    with VisionModel.from_pretrained(args.model, num_crops=num_crops) as vm:
        result = vm.generate(
            Prompt.from_text(COOKBOOK_PROMPT, photos), max_new_tokens=args.max_new_tokens
        )
        print(result.text)
        # The same with the task helper and its own prompt:
        comparison = vm.compare(*photos, max_new_tokens=args.max_new_tokens)
        print(comparison.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    run(main)
