"""``python -m phi3vision.bench``: a reproducible performance benchmark.

It measures, on one machine in one run, where the time and memory of a Phi-3-vision call go:
image preprocessing (against the PIL resize it cannot avoid), the vision encoder, prefill and
time to first token, decoding at batch 1 (default and ``compile=True``), batch throughput, a
chat's second turn with and without reuse of the first turn's work, peak memory, and the
memory needed to load the weights. Every figure is the median of ``--runs`` runs after one
warm-up run, with min and max; every ratio compares figures measured in the same run, so that
a busy or throttled machine cannot make one side of a comparison look better than the other.

The model is a checkpoint (``--model``) or random weights of a named size (``--size``), written
with ``tiny_checkpoint`` into a temporary directory: random weights run exactly the real code at
the real cost per token, only the answers are noise. Output: markdown tables on stdout, then the
whole result as one JSON line (and, with ``--json PATH``, as a file). Progress goes to stderr.

See docs/performance.md for what each figure means and the numbers it produced.

The package, one module per section:

- ``command``: the arguments, the run of the chosen sections, the report on stdout and files;
- ``harness``: ``Settings``, ``Bench`` (the default model, shared by the sections) and ``Section``;
- ``measure``: stats of runs, the device-synchronised ``Clock``, ``RssMeter``, the machine;
- ``tables`` and ``report``: the markdown;
- ``sections``: the list of sections, in the order they run;
- ``preprocess``, ``vision``, ``decoding`` (prefill and decode), ``batches``, ``chat``,
  ``memory``, ``compiled`` and ``loading``: the sections.

Adding a section (say ``grammar``):

1. Write ``bench/grammar.py`` with a function ``section_grammar(bench: Bench) -> dict`` that
   measures with ``bench.model()`` (or ``bench.load(...)`` for a model of its own, closed
   before it returns), ``repeat`` and ``bench.clock``, and returns JSON-able figures (use
   ``stat`` for repeated runs, so the report shows median, min and max); a function that
   renders those figures as a markdown ``table``; and
   ``SECTION = Section("grammar", "Title of its table", section_grammar, render)``.
2. Add ``grammar.SECTION`` to ``ALL`` in ``bench/sections.py``, where it should run. The
   ``--sections`` choices, the JSON report and the markdown pick it up from there.
3. Add the figures that must be numbers to ``REQUIRED`` in tests/test_bench.py, and say what
   they mean in docs/performance.md.
"""

from __future__ import annotations

from .batches import section_batch
from .chat import section_chat
from .command import (
    DEFAULT_CROPS,
    DEFAULT_IMAGE_SIZES,
    build_parser,
    checkpoint_directory,
    main,
    parse_ints,
    parse_sections,
    parse_size,
    parse_sizes,
    resolve_device,
    run,
)
from .compiled import section_compile
from .decoding import DECODE_HEADERS, section_decode, section_prefill
from .harness import DEFAULT_NUM_CROPS, MODEL_SIZES, QUESTION, Bench, Section, Settings
from .loading import LOADING_TARGET, section_loading
from .measure import Clock, RssMeter, cpu_model_name, machine_info, ratio, repeat, stat, synthetic_image
from .memory import probe, probe_runs, section_memory
from .preprocess import PREPROCESS_TARGET, section_preprocess
from .report import render_markdown
from .sections import SECTION_FUNCTIONS, SECTION_RENDERERS, SECTION_TITLES, SECTIONS
from .tables import mib, num, spread, spread_bytes, table
from .vision import section_vision

__all__ = [
    "DECODE_HEADERS",
    "DEFAULT_CROPS",
    "DEFAULT_IMAGE_SIZES",
    "DEFAULT_NUM_CROPS",
    "LOADING_TARGET",
    "MODEL_SIZES",
    "PREPROCESS_TARGET",
    "QUESTION",
    "SECTIONS",
    "SECTION_FUNCTIONS",
    "SECTION_RENDERERS",
    "SECTION_TITLES",
    "Bench",
    "Clock",
    "RssMeter",
    "Section",
    "Settings",
    "build_parser",
    "checkpoint_directory",
    "cpu_model_name",
    "machine_info",
    "main",
    "mib",
    "num",
    "parse_ints",
    "parse_sections",
    "parse_size",
    "parse_sizes",
    "probe",
    "probe_runs",
    "ratio",
    "render_markdown",
    "repeat",
    "resolve_device",
    "run",
    "section_batch",
    "section_chat",
    "section_compile",
    "section_decode",
    "section_loading",
    "section_memory",
    "section_prefill",
    "section_preprocess",
    "section_vision",
    "spread",
    "spread_bytes",
    "stat",
    "synthetic_image",
    "table",
]
