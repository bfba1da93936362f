"""Checkpoints: find them (Hub or local directory), read their files, put weights on modules.

This is the only module that knows file names and checkpoint weight names. The checkpoint is
the real model repository's layout::

    config.json                      model_type phi3_v
    preprocessor_config.json         num_crops, image_mean, image_std
    tokenizer.json                   (tokenizer_config.json, special_tokens_map.json)
    model.safetensors                or model-0000N-of-0000M.safetensors + model.safetensors.index.json

Nothing else is read: no Python file of the repository is downloaded or run, and weights are
read from safetensors only (never pickle).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, HubUnavailableError
from .modeling.config import check_preprocessor

if TYPE_CHECKING:
    import torch

    from .modeling.phi3v import Phi3VForCausalLM

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "microsoft/Phi-3-vision-128k-instruct"

MODEL_ENV_VAR = "PHI3VISION_MODEL"


def default_model() -> str:
    """The checkpoint used when none is named: ``$PHI3VISION_MODEL``, else the 128k model."""
    return os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL_ID


CHECKPOINT_FILE_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
]
"""What is fetched from the Hub: data files only, never the repository's Python code."""

CONFIG_FILES = ["config.json", "preprocessor_config.json"]
"""What is fetched from the Hub to plan a model's memory (``phi3vision.plan_memory``)."""

WEIGHT_NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_embed_tokens.img_processor.vision_model.", "image_embedding.vision_tower.{vision}"),
    ("model.vision_embed_tokens.", "image_embedding."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
"""Checkpoint weight-name prefix -> our module-name prefix, first match wins.

``{vision}`` is ``"vision_model."`` where transformers' CLIPVisionModel nests its modules
under ``vision_model`` (transformers 4.x) and ``""`` where it does not (5.x).
"""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Checkpoint:
    """The files of one checkpoint directory, read and checked (weights are not read yet)."""

    directory: Path
    config: dict[str, Any]
    preprocessor: dict[str, Any]
    tokenizer_file: Path
    weight_files: list[Path]
    model_id: str
    revision: str | None = None


def resolve_directory(
    name_or_path: str | Path, revision: str | None = None, files: list[str] = CHECKPOINT_FILE_PATTERNS
) -> Path:
    """A local checkpoint directory for ``name_or_path``: the directory itself, or a Hub
    snapshot holding the repository's ``files`` (names or patterns; downloaded on first use,
    then taken from the cache; ``HF_HOME`` and ``HF_HUB_OFFLINE`` are respected)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    text = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{text} is a file; name a checkpoint directory or a Hub model id")
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(
            f"no checkpoint directory at {text!r}, and it is not a Hub model id like {DEFAULT_MODEL_ID!r}"
        )
    return _download(text, revision, files)


LOCAL_CHECKPOINT_WAY = (
    f"load a local checkpoint directory (--model DIR on the command line, {MODEL_ENV_VAR}=DIR, "
    "or VisionModel.from_pretrained(DIR))"
)
"""The way out named by every message about a Hub that cannot be used."""


def _one_line(exc: BaseException) -> str:
    """An exception as one line without a closing period (the hub library's messages span
    lines and end with one; ours go on after them)."""
    return f"{type(exc).__name__}: " + " ".join(str(exc).split()).rstrip(".")


def _download(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """The Hub snapshot of ``repo_id`` holding its files that match ``patterns``: from the
    cache, or downloaded.

    Every request has a timeout. huggingface_hub's own listings (``repo_info`` and
    ``list_repo_tree`` in ``snapshot_download``) have none, so a Hub that accepts connections
    and never answers would hang them for ever: the listing is ours instead, one ``model_info``
    request with connect and read timeouts of ``HF_HUB_ETAG_TIMEOUT`` seconds (10 by default),
    which also gives the commit and the file sizes. Then each file not cached yet is fetched
    by ``_fetch``.
    """
    from huggingface_hub import HfApi, constants

    at = f" at revision {revision!r}" if revision else ""
    if constants.HF_HUB_OFFLINE:
        return _cached_snapshot(
            repo_id,
            revision,
            f"{repo_id!r}{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE=1 forbids downloading it. Ways out: unset HF_HUB_OFFLINE to download "
            f"it, or {LOCAL_CHECKPOINT_WAY}.",
        )
    timeout = float(constants.HF_HUB_ETAG_TIMEOUT)
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
    except Exception as exc:  # network errors are huggingface_hub's transport library's own types
        error = _hub_failure(exc, f"{repo_id!r}{at}", _METADATA_WAIT)
        if isinstance(error, HubUnavailableError):
            return _cached_snapshot(repo_id, revision, str(error), exc)
        raise error from exc
    files = _matching_files(info, patterns)
    if not files:
        raise CheckpointError(
            f"{repo_id!r}{at} on the Hugging Face Hub has none of the files {', '.join(patterns)}"
        )
    cached, missing = _split_cached(repo_id, info.sha, files)
    _announce_download(repo_id, missing)
    snapshots = {path.parent for path in cached} | {
        _fetch(repo_id, revision, file.rfilename).parent for file in missing
    }
    if len(snapshots) != 1:  # the revision moved to a new commit part-way
        raise CheckpointError(f"{repo_id!r}{at} changed on the Hugging Face Hub while downloading; try again")
    return snapshots.pop()


_METADATA_WAIT = "waited up to {etag:g} s, set by HF_HUB_ETAG_TIMEOUT"
_DOWNLOAD_WAIT = "a download waits up to {download:g} s for data, set by HF_HUB_DOWNLOAD_TIMEOUT"


def _fetch(repo_id: str, revision: str | None, name: str) -> Path:
    """One file of a Hub repository, downloaded into the cache by ``hf_hub_download``.

    Its metadata is asked for first, once, with our timeout: huggingface_hub retries a
    metadata request that timed out with 60 s a try, for minutes. ``hf_hub_download``'s own
    requests then have timeouts: ``HF_HUB_ETAG_TIMEOUT`` for the metadata, and reads of the
    content ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds without data (resumed a few times).
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    timeout = float(constants.HF_HUB_ETAG_TIMEOUT)
    at = f" at revision {revision!r}" if revision else ""
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, name, revision=revision), timeout=timeout)
    except Exception as exc:
        raise _hub_failure(exc, f"{repo_id!r}{at}", _METADATA_WAIT) from exc
    try:
        return Path(hf_hub_download(repo_id, name, revision=revision, etag_timeout=timeout))
    except Exception as exc:
        raise _hub_failure(exc, f"{name} of {repo_id!r}{at}", _DOWNLOAD_WAIT) from exc


def _hub_failure(exc: Exception, what: str, waited: str) -> CheckpointError:
    """The error for a failed Hub request about ``what``: the Hub's answer (HTTP < 500: not
    found, gated, no access) is a CheckpointError naming the id and access; anything else (no
    answer in time, 5xx, a network error) is a HubUnavailableError naming the ways out."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    if response is not None and response.status_code < 500:
        return CheckpointError(
            f"could not get {what} from the Hugging Face Hub: {_one_line(exc)}. "
            "Check the id, the revision and your access (HF_TOKEN), or pass a local checkpoint directory."
        )
    wait = waited.format(
        etag=float(constants.HF_HUB_ETAG_TIMEOUT), download=float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    )
    return HubUnavailableError(
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} for {what} ({_one_line(exc)}; "
        f"{wait}). Ways out: {LOCAL_CHECKPOINT_WAY}, or set HF_HUB_OFFLINE=1 to use the files "
        "already in the Hugging Face cache."
    )


def _matching_files(info: Any, patterns: list[str]) -> list[Any]:
    """The files of a repository (``model_info``'s siblings) that match ``patterns``, in its
    top folder only: a checkpoint's files lie side by side."""
    from huggingface_hub.utils import filter_repo_objects

    top = [file for file in info.siblings or [] if "/" not in file.rfilename]
    return list(filter_repo_objects(top, allow_patterns=patterns, key=lambda file: file.rfilename))


def _split_cached(repo_id: str, commit: str | None, files: list[Any]) -> tuple[list[Path], list[Any]]:
    """The cached paths of ``files`` at ``commit``, and the files not cached yet."""
    from huggingface_hub import try_to_load_from_cache

    cached: list[Path] = []
    missing: list[Any] = []
    for file in files:
        path = try_to_load_from_cache(repo_id, file.rfilename, revision=commit)
        if isinstance(path, str):
            cached.append(Path(path))
        else:
            missing.append(file)
    return cached, missing


def _cached_snapshot(
    repo_id: str, revision: str | None, message: str, cause: BaseException | None = None
) -> Path:
    """The snapshot already in the cache, or ``HubUnavailableError(message)``."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=CHECKPOINT_FILE_PATTERNS, local_files_only=True
            )
        )
    except Exception as exc:
        raise HubUnavailableError(message) from (cause or exc)


def _announce_download(repo_id: str, missing: list[Any]) -> None:
    """One line before a download: how much, and where to. Logged (the CLI shows it on stderr);
    huggingface_hub's progress bars follow."""
    from huggingface_hub import constants

    if not missing:
        return
    size = sum(file.size or 0 for file in missing)
    destination = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    logger.warning(
        "downloading %s (%d file%s) of %s to %s",
        _human_size(size),
        len(missing),
        "" if len(missing) == 1 else "s",
        repo_id,
        destination,
    )


def _human_size(size: int) -> str:
    """Decimal units, as the Hub shows file sizes."""
    if size < 1000:
        return f"{size} bytes"
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def open_checkpoint(name_or_path: str | Path, revision: str | None = None) -> Checkpoint:
    """Find and check a checkpoint's files (weights are only listed, not read)."""
    directory = resolve_directory(name_or_path, revision)
    config = _read_json(directory / "config.json")
    preprocessor = check_preprocessor(_read_json(directory / "preprocessor_config.json"))
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"checkpoint file missing: {tokenizer_file}")
    index_file = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        weight_files = [directory / "model.safetensors"]
    elif index_file.is_file():
        weight_map = _read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_file} has no weight_map")
        weight_files = sorted({directory / str(file) for file in weight_map.values()})
        for file in weight_files:
            if file.resolve().parent != directory.resolve() or file.suffix != ".safetensors":
                raise CheckpointError(
                    f"{index_file.name} names {file.name!r}: shards must be .safetensors files in the "
                    "checkpoint directory itself"
                )
            if not file.is_file():
                raise CheckpointError(f"checkpoint file missing: {file} (named in {index_file.name})")
    else:
        raise CheckpointError(
            f"no weights in {directory}: expected model.safetensors, or shards with "
            "model.safetensors.index.json (only safetensors are loaded, never pickle files)"
        )
    is_local = Path(name_or_path).expanduser().is_dir()
    return Checkpoint(
        directory=directory,
        config=config,
        preprocessor=preprocessor,
        tokenizer_file=tokenizer_file,
        weight_files=weight_files,
        model_id=str(Path(name_or_path).expanduser().resolve()) if is_local else str(name_or_path),
        revision=None if is_local else revision,
    )


def _vision_prefix(model: Phi3VForCausalLM) -> str:
    return "vision_model." if hasattr(model.image_embedding.vision_tower, "vision_model") else ""


def module_name(checkpoint_name: str, vision_prefix: str) -> str | None:
    """Our parameter name for a checkpoint weight name, or None if no prefix matches."""
    for source, target in WEIGHT_NAME_PREFIXES:
        if checkpoint_name.startswith(source):
            return target.format(vision=vision_prefix) + checkpoint_name[len(source) :]
    return None


def checkpoint_name(name: str, vision_prefix: str) -> str:
    """The checkpoint weight name of one of our parameters (inverse of ``module_name``)."""
    for source, target in WEIGHT_NAME_PREFIXES:
        prefix = target.format(vision=vision_prefix)
        if name.startswith(prefix):
            return source + name[len(prefix) :]
    raise KeyError(name)


def expected_weight_names(model: Phi3VForCausalLM) -> dict[str, str]:
    """Checkpoint weight name -> our parameter name, for every parameter of ``model``."""
    vision = _vision_prefix(model)
    return {checkpoint_name(name, vision): name for name, _ in model.named_parameters()}


def build_empty_model(raw_config: dict[str, Any], attn_implementation: str) -> Phi3VForCausalLM:
    """The model with parameters on the meta device (no memory, no init) and real buffers."""
    from accelerate import init_empty_weights

    from .modeling.config import build_configs
    from .modeling.phi3v import Phi3VForCausalLM

    configs = build_configs(raw_config, attn_implementation=attn_implementation)
    try:
        with init_empty_weights(include_buffers=False):
            model = Phi3VForCausalLM(configs)
    except Exception as exc:  # a value build_configs passed on that a module cannot take
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"config.json: the model cannot be built from it ({reason})") from exc
    return model


_SAFETENSORS_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lies in a safetensors file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    """Absolute offset of its first byte in the file."""
    nbytes: int


def read_safetensors_header(file: Path) -> dict[str, StoredTensor]:
    """The tensors of a safetensors file, from its header alone, checked for consistency.

    The format: 8 bytes of little-endian header length, a JSON header mapping each name to
    its dtype, shape and byte range in the data that follows. Broken files are a
    ``CheckpointError`` naming the file.
    """
    import math

    def broken(reason: str) -> CheckpointError:
        return CheckpointError(f"cannot read weights from {file}: {reason}")

    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or not 0 < length <= min(size - 8, _MAX_HEADER_BYTES):
                raise broken("not a safetensors file (bad header length)")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise broken(str(exc)) from exc
    except ValueError as exc:
        raise broken(f"the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise broken("the header is not a JSON object")
    data_start = 8 + length
    tensors: dict[str, StoredTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise broken(f"bad header entry for {name!r}") from exc
        import torch

        itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= size - data_start:
            raise broken(f"tensor {name!r} lies outside the file")
        if end - begin != math.prod(shape) * itemsize:
            raise broken(f"tensor {name!r}: {end - begin} bytes do not fit shape {list(shape)} of {dtype}")
        tensors[name] = StoredTensor(dtype, shape, data_start + begin, end - begin)
    return tensors


def load_weights(
    model: Phi3VForCausalLM,
    checkpoint: Checkpoint,
    device: torch.device,
    dtype: torch.dtype,
    quantization: str | None = None,
) -> None:
    """Read the checkpoint's weights onto ``model``'s parameters, one tensor at a time.

    Names and shapes are checked for the whole checkpoint (from the file headers) before any
    tensor is read. Each tensor is read with plain file reads into memory of its own (the file
    is not memory-mapped, so its pages never count as the process's memory), then converted
    to its device and dtype: the peak is the model plus one tensor, never a second copy.

    With ``quantization`` ("int8", "int4", "nf4"; see ``phi3vision.quantization``) each
    language-model linear layer is replaced by its quantised form as soon as its weights are
    read, so the full-precision layers never exist all at once.
    """
    import torch

    from .quantization import check_quantization, is_quantization_target, quantize_linear, require_library

    if quantization is not None:
        check_quantization(quantization, device.type, str(dtype).removeprefix("torch."))
        require_library(quantization)

    expected = expected_weight_names(model)
    params = dict(model.named_parameters())
    stored: dict[str, tuple[Path, StoredTensor]] = {}
    for file in checkpoint.weight_files:
        for name, entry in read_safetensors_header(file).items():
            if name in stored:
                raise CheckpointError(
                    f"weight {name!r} is stored twice ({stored[name][0].name}, {file.name})"
                )
            if name not in expected:
                raise CheckpointError(
                    f"unexpected weight {name!r} in {file.name}: not part of a Phi-3-vision model"
                )
            want = tuple(params[expected[name]].shape)
            if entry.shape != want:
                raise CheckpointError(
                    f"weight {name!r} in {file.name} has shape {list(entry.shape)}, but the model "
                    f"built from config.json needs {list(want)}"
                )
            stored[name] = (file, entry)
    missing = sorted(set(expected) - set(stored))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{len(missing)} weight(s) missing from the checkpoint: {shown}")

    for file in checkpoint.weight_files:
        with open(file, "rb") as handle:
            for name, (source, info) in stored.items():
                if source != file:
                    continue
                raw = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
                if info.nbytes:
                    handle.seek(info.start)
                    buffer = raw.view(-1).view(torch.uint8).numpy().data  # the tensor's own memory
                    if handle.readinto(buffer) != info.nbytes:
                        raise CheckpointError(f"cannot read weights from {file}: {name!r} is cut short")
                owner_name, _, attr = expected[name].rpartition(".")
                owner = model.get_submodule(owner_name)
                scheme = quantization if is_quantization_target(owner_name, owner) else None
                # A layer to quantise keeps the stored dtype until it is quantised: no full copy.
                tensor = raw if scheme else raw.to(device=device, dtype=dtype)
                del raw
                setattr(owner, attr, torch.nn.Parameter(tensor, requires_grad=False))
                del tensor
                if (
                    scheme
                    and isinstance(owner, torch.nn.Linear)
                    and not any(p.is_meta for p in owner.parameters())
                ):
                    parent_name, _, child = owner_name.rpartition(".")
                    replacement = quantize_linear(owner, scheme, device, dtype)
                    setattr(model.get_submodule(parent_name), child, replacement)
                del owner
    model.to(device)  # the buffers (rotary frequencies, CLIP position ids), still on the CPU
    model.eval()
