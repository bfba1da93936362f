"""describe, ocr, compare, ask; exit codes, messages and the cost of importing the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from phi3vision.options import DEFAULT_MAX_NEW_TOKENS

from ..hub_stand_in import hanging_hub
from .conftest import IMAGES, MODEL_ARGS, Run, python_m, write_truncated_png

TINY = str(IMAGES / "tiny.png")
GRAY = str(IMAGES / "gray.png")


def test_describe_streams_the_same_text_as_json(cli: Callable[..., Run]) -> None:
    text = cli("describe", TINY, *MODEL_ARGS)
    as_json = cli("describe", TINY, "--json", *MODEL_ARGS)
    assert text.code == 0 and as_json.code == 0
    [result] = as_json.json_lines()
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 6
    assert result["usage"]["image_tokens"] > 0
    assert result["model"]["device"] == "cpu"
    # Greedy decoding: the streamed text is the result's text, ended with one newline.
    assert text.out == result["text"] + ("" if result["text"].endswith("\n") else "\n")


def test_describe_several_images_gives_one_result_each(cli: Callable[..., Run]) -> None:
    run = cli("describe", TINY, GRAY, "--json", *MODEL_ARGS)
    assert run.code == 0
    results = run.json_lines()
    assert len(results) == 2
    assert results[0]["text"] != results[1]["text"]  # two different images, two answers
    text = cli("describe", TINY, GRAY, *MODEL_ARGS)
    assert f"==> {TINY} <==" in text.out and f"==> {GRAY} <==" in text.out
    assert text.out.index(TINY) < text.out.index(GRAY)


def test_a_broken_image_among_several_fails_alone(cli: Callable[..., Run], tmp_path: Path) -> None:
    broken = write_truncated_png(tmp_path / "broken.png")
    run = cli("describe", TINY, str(broken), GRAY, "--json", *MODEL_ARGS)
    assert run.code == 1
    first, failed, last = run.json_lines()
    assert first["finish_reason"] == "length" and last["finish_reason"] == "length"
    assert failed["finish_reason"] == "error"
    assert failed["error"]["type"] == "ImageError"
    assert "broken.png" in run.err and "Traceback" not in run.err


def test_ocr_json_has_lines(cli: Callable[..., Run]) -> None:
    run = cli("ocr", TINY, "--json", *MODEL_ARGS)
    assert run.code == 0
    [result] = run.json_lines()
    assert "lines" in result
    assert result["lines"] == [line.strip() for line in result["text"].splitlines() if line.strip()]


def test_compare_gives_one_result_over_all_images(cli: Callable[..., Run]) -> None:
    a, b = str(IMAGES / "team_a.png"), str(IMAGES / "team_b.png")
    run = cli("compare", a, b, "--json", *MODEL_ARGS)
    assert run.code == 0
    [result] = run.json_lines()
    assert result["num_images"] == 2
    single = cli("describe", a, "--json", *MODEL_ARGS).json_lines()[0]
    assert result["usage"]["image_tokens"] > single["usage"]["image_tokens"]


def test_ask_with_question_and_system(cli: Callable[..., Run]) -> None:
    run = cli("ask", TINY, "-q", "What colour is it?", "--json", *MODEL_ARGS)
    assert run.code == 0
    [answer] = run.json_lines()
    assert answer["question"] == "What colour is it?"
    with_system = cli("ask", TINY, "-q", "What colour is it?", "--system", "Be brief.", "--json", *MODEL_ARGS)
    assert with_system.json_lines()[0]["usage"]["prompt_tokens"] > answer["usage"]["prompt_tokens"]
    streamed = cli("ask", "-q", "Hello?", *MODEL_ARGS)  # no image at all is allowed
    assert streamed.code == 0 and streamed.out.endswith("\n")


def test_image_from_stdin(cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    from_file = cli("describe", TINY, "--json", *MODEL_ARGS).json_lines()[0]
    png = Path(TINY).read_bytes()
    from_stdin = cli("describe", "-", "--json", *MODEL_ARGS, stdin=png, monkeypatch=monkeypatch)
    assert from_stdin.code == 0
    assert from_stdin.json_lines()[0]["text"] == from_file["text"]


def test_sampling_with_seed_repeats(cli: Callable[..., Run]) -> None:
    args = ("describe", TINY, "--json", "--temperature", "1.5", "--seed", "7", *MODEL_ARGS)
    first, second = cli(*args).json_lines()[0], cli(*args).json_lines()[0]
    assert first["text"] == second["text"]


def test_missing_file_is_named_without_traceback(cli: Callable[..., Run], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-image.png"
    run = cli("describe", TINY, str(missing), *MODEL_ARGS)
    assert run.code == 1
    assert run.err.strip() == f"phi3vision: error: image '{missing}': file not found"
    assert run.out == ""  # checked before any model work
    debug = cli("describe", str(missing), "--debug", *MODEL_ARGS)
    assert debug.code == 1 and "Traceback" in debug.err


def test_bad_checkpoint_is_a_one_line_error(cli: Callable[..., Run], tmp_path: Path) -> None:
    run = cli("describe", TINY, "--model", str(tmp_path))
    assert run.code == 1
    assert run.err.startswith("phi3vision: error: ") and "config.json" in run.err
    assert "Traceback" not in run.err


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["describe"],
        ["ask", TINY],
        ["ask", TINY, "-q", "  "],
        ["compare", TINY],
        ["compare", "-", "-"],
        ["chat", "-"],
        ["describe", TINY, "--temperature", "-1"],
        ["describe", TINY, "--max-new-tokens", "0"],
        ["describe", TINY, "--top-p", "2", "--temperature", "1"],
        ["describe", TINY, "--dtype", "float64"],
        ["describe", TINY, "--num-crops", "100"],
        ["describe", TINY, "--device", "gpu"],
        ["describe", TINY, "--dtype", "fp16", "--device", "cpu"],
        ["batch", "translate", "x", "--out", "y"],
        ["batch", "describe", "x"],
        ["batch", "describe", "x", "--out", "y", "--resume", "--overwrite"],
    ],
)
def test_usage_errors_exit_2_with_one_line_reason(cli: Callable[..., Run], argv: list[str]) -> None:
    run = cli(*argv)
    assert run.code == 2
    last = run.err.strip().splitlines()[-1]
    assert last.startswith("phi3vision") and ": error: " in last
    assert "Traceback" not in run.err


def test_help_and_version(cli: Callable[..., Run]) -> None:
    run = cli("--help")
    assert run.code == 0
    for command in ("describe", "ocr", "compare", "ask", "chat", "info", "batch"):
        assert command in run.out
    version = cli("--version")
    assert version.code == 0 and version.out.startswith("phi3vision ")


def test_help_states_the_real_default_of_max_new_tokens(cli: Callable[..., Run]) -> None:
    run = cli("describe", "--help")
    assert run.code == 0
    assert f"default, {DEFAULT_MAX_NEW_TOKENS})" in " ".join(run.out.split())


def test_importing_the_cli_loads_no_heavy_module() -> None:
    code = (
        "import sys, phi3vision.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'PIL', 'numpy', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_python_m_exit_codes_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "gone.png"
    result = python_m(["describe", str(missing), *MODEL_ARGS])
    assert result.returncode == 1
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    usage = python_m(["describe"])
    assert usage.returncode == 2
    assert usage.stderr.strip().splitlines()[-1].startswith("phi3vision describe: error:")


def test_bad_model_options_are_usage_errors_before_torch_loads() -> None:
    """As docs/cli.md promises: exit 2 and argparse's one line, before any slow work."""
    code = (
        "import sys; from phi3vision.cli import main; "
        "code = main(sys.argv[1:]); print(code, 'torch' in sys.modules)"
    )
    for option in (["--num-crops", "100"], ["--device", "gpu"]):
        result = subprocess.run(
            [sys.executable, "-c", code, "describe", TINY, *option],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.stdout.split() == ["2", "False"], result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("phi3vision describe: error: argument")


def test_a_dtype_the_device_cannot_run_is_a_usage_error(cli: Callable[..., Run]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("float16 runs on this machine's GPU")
    run = cli("describe", TINY, "--dtype", "fp16")  # auto picks the CPU here
    assert run.code == 2 and "float16 on CPU" in run.err.strip().splitlines()[-1]


def test_info_help_describes_its_own_json(cli: Callable[..., Run]) -> None:
    run = cli("info", "--help")
    assert run.code == 0
    text = " ".join(run.out.split())
    assert "one JSON object" in text and "streaming" not in text


def test_a_folder_points_to_batch(cli: Callable[..., Run], tmp_path: Path) -> None:
    run = cli("describe", f"{tmp_path}/", *MODEL_ARGS)
    assert run.code == 1
    assert run.err.strip().endswith(f"use batch: phi3vision batch describe {tmp_path}/ --out results.jsonl")


def test_verbose_reports_timings_speed_and_memory(cli: Callable[..., Run]) -> None:
    quiet = cli("describe", TINY, *MODEL_ARGS)
    run = cli("describe", TINY, "--verbose", *MODEL_ARGS)
    assert run.code == 0 and run.out == quiet.out and quiet.err == ""
    loaded, after = run.err.strip().splitlines()
    assert loaded.startswith("phi3vision: loaded ") and "M parameters, cpu, float32" in loaded
    assert "6 new tokens" in after and "tokens/s" in after and "first token" in after
    assert "peak process memory" in after and " GB" in after


@pytest.mark.parametrize(
    "command",
    [["describe", TINY], ["info", "--model", "microsoft/Phi-3-vision-128k-instruct"]],
    ids=["describe", "info-model"],
)
def test_a_hub_that_never_answers_is_one_line_in_bounded_time(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PHI3VISION_"))}
    with hanging_hub() as endpoint:
        result = subprocess.run(
            [sys.executable, "-m", "phi3vision", *command],
            capture_output=True,
            text=True,
            timeout=120,  # the library waits 1 s here: a hang fails the test
            env={**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path), "HF_HUB_ETAG_TIMEOUT": "1"},
            check=False,
        )
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"phi3vision: error: cannot reach the Hugging Face Hub at {endpoint}")
    assert "--model DIR" in line and "PHI3VISION_MODEL" in line and "HF_HUB_OFFLINE=1" in line
