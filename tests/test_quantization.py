"""Quantised loading (``quantization=``): which layers, the checks, and the int8 CPU path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from phi3vision import OptionsError, VisionModel
from phi3vision.errors import MissingExtraError
from phi3vision.quantization import check_quantization, is_quantization_target, require_library

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao is not installed (phi3vision[quant])"
)


@pytest.mark.parametrize(
    ("scheme", "device", "dtype", "message"),
    [
        ("int3", "cpu", "float32", "unknown quantization 'int3'"),
        ("int4", "cpu", "float32", "runs on cuda, not cpu (on a CPU use quantization='int8')"),
        ("nf4", "cpu", "bfloat16", "runs on cuda, not cpu"),
        ("int8", "mps", "float16", "runs on cpu or cuda, not mps"),
        ("int4", "cuda", "float16", "use dtype='bfloat16'"),
    ],
)
def test_unsupported_pairs_are_options_errors(scheme: str, device: str, dtype: str, message: str) -> None:
    with pytest.raises(OptionsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_quantization(scheme, device, dtype)


@pytest.mark.parametrize(
    ("scheme", "device", "dtype"),
    [
        (None, "cpu", "float32"),
        ("int8", "cpu", "float32"),
        ("int8", "cuda", "float16"),
        ("nf4", "cuda", "float16"),
    ],
)
def test_supported_pairs_pass(scheme: str | None, device: str, dtype: str) -> None:
    assert check_quantization(scheme, device, dtype) == scheme


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    with pytest.raises(
        MissingExtraError, match=r"needs torchao, which is not installed: pip install 'phi3vision\[quant\]'"
    ):
        require_library("int8")


def test_from_pretrained_refuses_int4_on_cpu_before_loading(golden_checkpoint: Path) -> None:
    with pytest.raises(OptionsError, match="quantization='int4' runs on cuda"):
        VisionModel.from_pretrained(golden_checkpoint, device="cpu", quantization="int4")


def test_targets_are_the_decoder_linears_and_lm_head_only() -> None:
    linear = torch.nn.Linear(4, 4)
    assert is_quantization_target("language_model.model.layers.0.mlp.down_proj", linear)
    assert is_quantization_target("language_model.lm_head", linear)
    assert not is_quantization_target("image_embedding.img_projection.0", linear)
    assert not is_quantization_target(
        "image_embedding.vision_tower.vision_model.encoder.layers.0.mlp.fc1", linear
    )
    assert not is_quantization_target("language_model.model.layers.0.input_layernorm", torch.nn.LayerNorm(4))


@needs_torchao
def test_int8_linear_matches_its_dequantised_weights_and_chunking_changes_nothing() -> None:
    from phi3vision.modeling.quantized import Int8CpuLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=True)
    whole = Int8CpuLinear.from_linear(linear, torch.float32, rows_per_step=1024)
    chunked = Int8CpuLinear.from_linear(linear, torch.float32, rows_per_step=7)
    assert whole.weight.dtype == torch.int8
    assert torch.equal(whole.weight, chunked.weight) and torch.equal(whole.scale, chunked.scale)
    x = torch.randn(3, 5, 256)
    with torch.inference_mode():
        out = whole(x)
        dequantised = torch.nn.functional.linear(
            x.bfloat16().float(), whole.weight.float() * whole.scale.float()[:, None], linear.bias
        )
        exact = linear(x)
    assert out.shape == (3, 5, 96) and out.dtype == torch.float32
    torch.testing.assert_close(out, dequantised, rtol=0.02, atol=0.02)
    assert (out - exact).norm() / exact.norm() < 0.02


@pytest.fixture(scope="module")
def int8_model(golden_checkpoint: Path) -> VisionModel:
    pytest.importorskip("torchao")
    with VisionModel.from_pretrained(
        golden_checkpoint, device="cpu", dtype="float32", quantization="int8"
    ) as model:
        yield model


@needs_torchao
def test_int8_loads_language_linears_quantised_and_keeps_vision_at_the_model_dtype(
    int8_model: VisionModel,
) -> None:
    from phi3vision.modeling.quantized import Int8CpuLinear

    module = int8_model.module
    layer = module.language_model.model.layers[0]
    for linear in (
        layer.self_attn.qkv_proj,
        layer.self_attn.o_proj,
        layer.mlp.gate_up_proj,
        layer.mlp.down_proj,
    ):
        assert isinstance(linear, Int8CpuLinear) and linear.weight.dtype == torch.int8
    assert isinstance(module.language_model.lm_head, Int8CpuLinear)
    assert module.language_model.model.embed_tokens.weight.dtype == torch.float32
    for name, parameter in module.image_embedding.named_parameters():
        assert parameter.dtype == torch.float32, name
    assert not any(p.is_meta for p in module.parameters())


@needs_torchao
def test_int8_is_reported_in_info_and_results(int8_model: VisionModel, cpu_model: VisionModel) -> None:
    assert int8_model.info.quantization == "int8"
    result = int8_model.generate("Say something.", max_new_tokens=3)
    assert result.model is not None and result.model.quantization == "int8"
    assert result.usage.completion_tokens >= 1
    assert cpu_model.info.quantization is None and cpu_model.model_ref.quantization is None
    assert int8_model.info.num_parameters == cpu_model.info.num_parameters


@needs_torchao
def test_int8_logits_stay_close_to_float32(int8_model: VisionModel, cpu_model: VisionModel) -> None:
    encoding = cpu_model.encode("Describe the weather in a few words, please.")
    reference = cpu_model.logits(encoding)
    quantised = int8_model.logits(encoding)
    assert (quantised - reference).norm() / reference.norm() < 0.05


@needs_torchao
def test_the_quant_bench_measures_every_variant_and_calibrates_the_agreement(golden_checkpoint: Path) -> None:
    from phi3vision import bench_quant

    result = bench_quant.measure(golden_checkpoint, 1, num_crops=2, new_tokens=4, log=lambda message: None)
    rows = result["variants"]
    assert list(rows) == ["float32", "bfloat16", "float32 + int8"]
    assert rows["float32"]["top1_agreement"] == 1.0 and rows["float32"]["rss_ratio"] == 1.0
    for row in rows.values():
        assert 0.0 <= row["top1_agreement"] <= 1.0
        assert row["decode_tokens_per_s"] > 0 and row["plan_total_bytes"] > 0
        assert row["call_peak_added_rss_bytes"] > 0
    calibration = result["calibration"]
    assert list(calibration["noise_agreement"]) == [str(level) for level in bench_quant.NOISE_LEVELS]
    assert all(0.0 <= a <= 1.0 for a in calibration["noise_agreement"].values())
    # Symmetric per-row int8 of normal weights: an error of about 1/127 of a row's largest weight.
    assert 0.001 < calibration["int8_weight_error"] < 0.02
    table = bench_quant.render(result)
    assert "| float32 + int8 |" in table and "| int8 (the row above) |" in table


def test_the_quant_bench_on_a_gpu_compares_the_cuda_schemes_with_bfloat16(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The GPU rows (none is lent here): which probes run, where, and against which reference."""
    from phi3vision import bench_quant

    probes: list[tuple[str, str | None, str]] = []

    def fake_probe(path: Path, variant: tuple[str, str | None], crops: int, tokens: int, device: str) -> dict:
        probes.append((*variant, device))
        scale = {None: 1.0, "int8": 0.5, "int4": 0.3, "nf4": 0.3}[variant[1]]
        return {
            "load_added_rss_bytes": 1000 * scale,
            "after_load_added_rss_bytes": 900 * scale,
            "decode_tokens_per_s": 10 / scale,
            "top1": [1, 2, 3, 4] if variant[1] is None else [1, 2, 3, 0],
            "call_peak_added_rss_bytes": 1200 * scale,
            "plan_total_bytes": 1100 * scale,
            "prompt_tokens": 7,
        }

    monkeypatch.setattr(bench_quant, "_run_probe", fake_probe)
    result = bench_quant.measure(tmp_path, 1, 4, 8, log=lambda message: None, device="cuda:1")
    assert result["device"] == "cuda:1" and result["memory"] == "torch.cuda allocated bytes"
    assert list(result["variants"]) == ["bfloat16", "bfloat16 + int8", "bfloat16 + int4", "bfloat16 + nf4"]
    assert {device for *_, device in probes} == {"cuda:1"}
    assert len(probes) == 5  # a warm-up, then one run of each
    int4 = result["variants"]["bfloat16 + int4"]
    assert int4["rss_ratio"] == pytest.approx(0.3) and int4["top1_agreement"] == 0.75
    assert "| variant | load adds (MiB) | x bfloat16 |" in bench_quant.render(result)
