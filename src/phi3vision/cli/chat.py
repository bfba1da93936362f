"""``phi3vision chat``: a multi-turn conversation read line by line from stdin.

Each message extends an immutable ``Prompt`` (``prompt.user(...).assistant(answer)``), so a
failed turn (a bad image, a conversation grown past the context) leaves the conversation as it
was. Answers go to stdout; notes and errors to stderr, so a scripted chat's stdout holds only
the answers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ContextLengthError, Phi3VisionError
from .common import (
    check_local_file,
    debug_flag,
    image_inputs,
    load_model,
    note,
    print_json,
    print_stream,
    report,
    report_run,
)

HELP = (
    "commands: /image PATH_OR_URL adds an image to your next message; /reset starts over; "
    "/quit (or end of input) leaves; start a message with // to send one that begins with /"
)

def _read_line(interactive: bool) -> str | None:
    """The next message, or None at end of input. ``input()`` gives line editing on a
    terminal; a pipe is read directly so that nothing but answers reaches stdout."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def run_chat(args: argparse.Namespace) -> int:
    from ..images import load_image
    from ..prompt import Prompt, strip_chat_markers

    first_images = [source for _, source in image_inputs(args.images)]
    interactive = sys.stdin.isatty()
    with load_model(args) as vm:
        conversation = Prompt(system=args.system)
        pending: list[Any] = [load_image(source, vm.image_policy) for source in first_images]
        if interactive:
            note(HELP)
        while True:
            line = _read_line(interactive)
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/") and not text.startswith("//"):
                command, _, argument = text.partition(" ")
                argument = argument.strip()
                if command in ("/quit", "/exit"):
                    break
                if command == "/reset":
                    conversation, pending = Prompt(system=args.system), []
                    note("(conversation reset)")
                elif command == "/image" and argument:
                    try:
                        check_local_file(argument)
                        pending.append(load_image(argument, vm.image_policy, label=argument))
                    except Phi3VisionError as exc:
                        report(exc, debug_flag(args))
                        continue
                    note(f"(image {len(pending)} for your next message: {argument})")
                elif command == "/image":
                    note("usage: /image PATH_OR_URL")
                else:
                    note(f"unknown command {command}; {HELP}")
                continue
            if text.startswith("//"):
                text = text[1:]
            try:
                prompt = conversation.user(text, images=pending)
                if args.json:
                    result = vm.generate(prompt, options=args.options)
                    print_json(result)
                else:
                    result = print_stream(vm.stream(prompt, options=args.options))
            except ContextLengthError as exc:
                report(exc, debug_flag(args))
                note("(the conversation is too long for the model: /reset starts a new one)")
                continue
            except Phi3VisionError as exc:
                report(exc, debug_flag(args))
                continue
            report_run(args, result, vm.info.device)
            conversation = prompt.assistant(strip_chat_markers(result.text))
            pending = []
    return 0
