"""The report as markdown: the machine and settings, then each section's table."""

from __future__ import annotations

from typing import Any

from .sections import ALL_SECTIONS, SECTION_RENDERERS, SECTION_TITLES
from .tables import mib, num, table


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables, one per section; times are median (min–max) in ms."""
    machine, settings, sections = report["machine"], report["settings"], report["sections"]
    parts = [
        "## Machine and settings",
        "",
        table(
            ["field", "value"],
            [
                ["command", f"`{report['command']}`"],
                ["platform", machine["platform"]],
                ["CPU", f"{machine['cpu_model']} ({machine['cpu_count']} logical CPUs)"],
                ["GPU", machine["gpu"] or "none"],
                [
                    "python / torch / transformers",
                    f"{machine['python']} / {machine['torch']} / {machine['transformers']}",
                ],
                ["torch threads", str(machine["torch_threads"])],
                ["load average (start → end)", _load_text(machine)],
                ["model", settings["model"]],
                [
                    "parameters",
                    f"{settings['num_parameters']:,}" if settings.get("num_parameters") else "n/a",
                ],
                [
                    "device / dtype / attention",
                    f"{settings['device']} / {settings['dtype']} / {settings['attn']}",
                ],
                ["runs", f"{settings['runs']} (median, min–max, after 1 warm-up)"],
                ["benchmark process peak RSS", mib(report.get("process_peak_rss_bytes"))],
                ["benchmark time", f"{num(report['elapsed_s'])} s"],
            ],
        ),
    ]
    for name in ALL_SECTIONS:
        if name not in sections:
            continue
        body = sections[name]
        title = SECTION_TITLES[name]
        parts += ["", f"## {title}", ""]
        if "skipped" in body:
            parts.append(f"Skipped: {body['skipped']}.")
        elif "error" in body:
            parts.append(f"Failed: {body['error']}")
        else:
            parts.append(SECTION_RENDERERS[name](body))
    return "\n".join(parts) + "\n"


def _load_text(machine: dict[str, Any]) -> str:
    start, end = machine.get("load_average_at_start"), machine.get("load_average_at_end")
    if not start:
        return "n/a"
    return f"{start[0]:.2f} → {end[0]:.2f}" if end else f"{start[0]:.2f}"
