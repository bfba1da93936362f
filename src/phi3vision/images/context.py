"""What every loading step needs to report a failure: the message prefix naming the input
(it differs between load_image and load_images) and the policy."""

from __future__ import annotations

from typing import NoReturn

from ..errors import ImageError, ImageTooLargeError
from .policy import ImagePolicy


class Context:
    def __init__(self, prefix: str, policy: ImagePolicy) -> None:
        self.prefix = prefix
        self.policy = policy

    def fail(self, reason: str, error: type[ImageError] = ImageError) -> NoReturn:
        raise error(f"{self.prefix}: {reason}")

    def too_large(self, reason: str) -> NoReturn:
        self.fail(reason, ImageTooLargeError)

    def check_byte_count(self, count: int, what: str) -> None:
        if count > self.policy.max_bytes:
            self.too_large(f"{what} is {count} bytes, over the limit of max_bytes={self.policy.max_bytes}")

    def check_pixels(self, width: int, height: int) -> None:
        if width * height > self.policy.max_pixels:
            self.too_large(
                f"{width}x{height} is {width * height} pixels, over the limit of "
                f"max_pixels={self.policy.max_pixels}"
            )
