"""``python -m phi3vision``: the same as the ``phi3vision`` command."""

from __future__ import annotations

import sys

from phi3vision.cli import main

if __name__ == "__main__":
    sys.exit(main())
