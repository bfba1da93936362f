"""Scenario 2 of the Phi-3 Cookbook: read a book cover's title and author (OCR), as text and
as a typed object.

    python examples/book_cover.py                   # examples/images/book_cover.png
    python examples/book_cover.py --cookbook-urls   # the cookbook's cover, from the web
"""

from __future__ import annotations

import sys

from _common import images, parser, run
from pydantic import BaseModel

from phi3vision import OutputParseError, VisionModel

COVER_URL = (
    "https://marketplace.canva.com/EAFPHUaBrFc/1/0/1003w/"
    "canva-black-and-white-modern-alone-story-book-cover-QHBKwQnsgzs.jpg"
)


class BookInfo(BaseModel):
    title: str
    author: str


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    cover = images(args, ["book_cover.png"], [COVER_URL])[0]
    with VisionModel.from_pretrained(args.model, num_crops=args.num_crops) as vm:
        answer = vm.ask(
            "Help me get the title and author information of this book?",
            [cover],
            max_new_tokens=args.max_new_tokens,
        )
        print(answer.text)  # real model: 'The title of the book is "ALONE" and the author is Morgan Maxwell.'
        try:
            book = vm.extract(cover, BookInfo, max_new_tokens=args.max_new_tokens)
        except OutputParseError as error:
            print(f"no BookInfo: {error}", file=sys.stderr)
            return 1
        print(book)  # real model: title='ALONE' author='Morgan Maxwell'
        return 0


if __name__ == "__main__":
    run(main)
