"""``LoadOptions``: how a checkpoint is loaded, defined once for ``VisionModel.from_pretrained``,
``FakeVisionModel.from_pretrained`` and the command line."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .images import ImagePolicy
from .limits import RequestLimits
from .options import options_error


class LoadOptions(BaseModel):
    """The keyword arguments of ``VisionModel.from_pretrained`` (see its docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    num_crops: int | None = Field(None, description="Overrides the checkpoint's preprocessor setting")
    revision: str | None = Field(None, description="Hub branch, tag or commit")
    image_policy: ImagePolicy | None = None
    feature_cache_size: int = Field(16, ge=0, description="Images whose features are kept (0: none)")
    reuse_prefix: bool = True
    compile: bool = False
    limits: RequestLimits | None = None
    quantization: str | None = Field(None, description='None, "int8", "int4" or "nf4" (docs/loading.md)')

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, value: Any) -> Any:
        """A ``torch.device`` is taken as its name ("cuda:1"), without importing torch here."""
        if type(value).__module__ == "torch" and type(value).__name__ == "device":
            return str(value)
        return value

    @classmethod
    def of(cls, **fields: Any) -> LoadOptions:
        """Validated options; a bad value is an ``OptionsError``."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise options_error(exc, "loading options") from exc
