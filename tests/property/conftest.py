"""Hypothesis settings for the property-based tests.

The ``ci`` profile (the default) gives every test a fixed budget and a fixed seed: examples are
derived from each test's name (``derandomize=True``) and no example database is read or
written, so a run on CI is reproducible and takes the same time every time. Set
``PHI3VISION_HYPOTHESIS_PROFILE=thorough`` locally for a longer, randomised search; a failure
prints a ``@reproduce_failure`` blob to replay it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    database=None,
    # Image decoding, tokenising and local HTTP round trips vary a lot in time on shared CI
    # machines; a per-example deadline would only make the suite flaky.
    deadline=None,
    print_blob=True,
    # Several strategies encode real PNG/JPEG/GIF files while generating data, which is slow
    # by design: the point is to feed the loader genuine (then damaged) files.
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    parent=settings.get_profile("ci"),
    max_examples=1000,
    derandomize=False,
)
settings.load_profile(os.environ.get("PHI3VISION_HYPOTHESIS_PROFILE", "ci"))
