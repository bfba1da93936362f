"""Every exception phi3vision raises on purpose, in one place.

The tree::

    Phi3VisionError                 base class: ``except Phi3VisionError`` catches them all
    ├── ImageError                  an image input could not be read or is not allowed
    │   └── ImageTooLargeError      over a pixel, byte or download limit
    ├── PromptError                 a prompt's placeholders, images or text are malformed
    │   └── ContextLengthError      the prompt (plus max_new_tokens) does not fit the context
    ├── OptionsError                an option (generation, num_crops, ...) has a bad value
    ├── CheckpointError             a checkpoint is missing, incomplete or of the wrong shape
    │   └── HubUnavailableError     the Hub does not answer, or offline mode and nothing cached
    ├── DeviceError                 a device, dtype or attention implementation cannot be used
    │   └── OutOfMemoryError        the accelerator ran out of memory during a call
    ├── ModelClosedError            the VisionModel was closed and cannot be used any more
    ├── OutputParseError            the model's answer could not be parsed into the asked schema
    └── MissingExtraError           an optional part needs an extra: pip install 'phi3vision[NAME]'

Input errors (image, prompt, options) also derive from ``ValueError`` so that code written
against plain Python conventions keeps working. Every message says what was wrong and, where
there is one, what to change.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ContextLengthError",
    "DeviceError",
    "HubUnavailableError",
    "ImageError",
    "ImageTooLargeError",
    "MissingExtraError",
    "ModelClosedError",
    "OptionsError",
    "OutOfMemoryError",
    "OutputParseError",
    "Phi3VisionError",
    "PromptError",
]


class Phi3VisionError(Exception):
    """Base class of every error phi3vision raises on purpose."""


class ImageError(Phi3VisionError, ValueError):
    """An image input could not be opened, decoded or fetched, or is not allowed."""


class ImageTooLargeError(ImageError):
    """An image is over a limit: pixels, bytes on disk or bytes downloaded."""


class PromptError(Phi3VisionError, ValueError):
    """A prompt is malformed: placeholder numbering, image count, or text."""


class ContextLengthError(PromptError):
    """The prompt, with the tokens asked for, is longer than the model's context."""


class OptionsError(Phi3VisionError, ValueError):
    """An option has a value that is not allowed (unknown field, out of range, wrong type)."""


class CheckpointError(Phi3VisionError):
    """A checkpoint cannot be loaded: a missing file, an unknown model type, a missing,
    unexpected or wrongly shaped weight."""


class DeviceError(Phi3VisionError):
    """The requested device, dtype or attention implementation cannot be honoured here."""


class OutOfMemoryError(DeviceError):
    """The accelerator ran out of memory. The model stays usable; ask for less."""


class ModelClosedError(Phi3VisionError):
    """The model was closed with ``close()`` (or its ``with`` block ended)."""


class OutputParseError(Phi3VisionError):
    """The model's answer could not be parsed and validated into the requested schema."""


class HubUnavailableError(CheckpointError):
    """A Hub checkpoint is not in the local cache and cannot be downloaded: the Hub did not
    answer in time (or not at all), or offline mode (``HF_HUB_OFFLINE=1``) forbids it. The
    message names the ways out: a local checkpoint directory, or offline mode."""


class MissingExtraError(Phi3VisionError, ImportError):
    """An optional capability is used but its extra is not installed; the message names the
    ``pip install 'phi3vision[NAME]'`` command. Also an ``ImportError``."""
