"""``phi3vision.jobs.config``: one settings type, with its rules, for every caller of a job."""

from __future__ import annotations

import pytest

from phi3vision import GenerationOptions, OptionsError
from phi3vision.cli.app import build_parser
from phi3vision.jobs import BatchItem, BatchKeywords, BatchSettings, batch_settings


def test_defaults_and_retry_implies_resume() -> None:
    settings = batch_settings("describe")
    assert (settings.batch_size, settings.resume, settings.overwrite, settings.progress) == (
        4,
        False,
        False,
        None,
    )
    assert settings.options == GenerationOptions()
    retry = batch_settings("ocr", retry_failed=True, options={"max_new_tokens": 3})
    assert retry.resume and retry.options.max_new_tokens == 3


@pytest.mark.parametrize(
    ("task", "settings", "message"),
    [
        ("caption", {}, "unknown task 'caption'"),
        ("describe", {"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ("describe", {"batch_size": True}, "batch_size"),
        ("describe", {"resume": "yes"}, "resume"),
        ("describe", {"options": {"max_new_tokens": 0}}, "invalid generation options"),
        ("ask", {"question": " "}, "question must be a non-empty string"),
        ("describe", {"resume": True, "overwrite": True}, "exclude each other"),
        ("describe", {"retry_failed": True, "overwrite": True}, "retry_failed continues the file"),
        ("describe", {"colour": "red"}, "colour"),
    ],
)
def test_bad_settings_are_options_errors(task: str, settings: dict[str, object], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        batch_settings(task, **settings)


def test_questions_of_items() -> None:
    mine = BatchItem(key="a", image="a.png", source="a.png", question="Mine?")
    plain = BatchItem(key="b", image="b.png", source="b.png")
    ask = batch_settings("ask", question="Job's?")
    assert [ask.question_for(i) for i in (mine, plain)] == ["Mine?", "Job's?"]
    assert batch_settings("describe").question_for(mine) is None  # other tasks ask no question
    bare = batch_settings("ask")
    assert bare.item_without_question([mine, plain]) is plain
    with pytest.raises(OptionsError, match=r"'b' .* has none"):
        bare.check_items([mine, plain])


def test_keywords_are_the_settings_but_the_task() -> None:
    assert set(BatchKeywords.__annotations__) == set(BatchSettings.model_fields) - {"task"}
    settings = batch_settings("ask", question="Q?", batch_size=2)
    assert batch_settings(settings.task, **settings.keywords()) == settings


def test_the_batch_command_has_an_option_for_every_setting() -> None:
    """The command maps its options to the settings by name (cli/batch.py)."""
    args = build_parser().parse_args(["batch", "describe", "x", "--out", "o.jsonl"])
    args.options = None  # set by the command line's checks from the generation flags
    settings = batch_settings(**{name: getattr(args, name) for name in BatchSettings.model_fields})
    assert settings == batch_settings("describe")


def test_the_old_task_spelling_becomes_the_registry_name() -> None:
    """One name per task: "ocr" (the old CLI and manifest spelling) is extract_text."""
    assert batch_settings("ocr").task == "extract_text" == batch_settings("extract_text").task
