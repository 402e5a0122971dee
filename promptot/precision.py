"""One precision policy per run, built once with the CLIP and read by every trainer.

``PREC`` (a trainer config key, as in the reference code) takes:

* ``fp16`` — CLIP's weights in half precision and the learnable prompts in the same dtype, updated directly
  (no master copy, no loss scaling): what the CoOp-family reference code does on GPU.
* ``fp32`` — everything in float32.
* ``amp`` — CLIP and fp32 master copies of the learnable parameters; the forward runs under autocast
  (fp16 with a gradient scaler on CUDA, bf16 on CPU, where fp16 autocast is not supported).

OT numerics ignore this and always run in fp32 or better (:mod:`promptot.ot`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional, Union

import torch

from .errors import ConfigError

__all__ = ["PRECISIONS", "Precision", "check_precision"]

PRECISIONS = ("fp16", "fp32", "amp")


def check_precision(mode: str, key: str = "PREC") -> str:
    """Return ``mode`` if it is one of :data:`PRECISIONS`, else raise a :class:`ConfigError` naming ``key``."""
    if mode not in PRECISIONS:
        raise ConfigError(f"{key} must be one of {list(PRECISIONS)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class Precision:
    """The dtypes and mixed-precision tools of a run.

    Attributes:
        mode: ``fp16`` | ``fp32`` | ``amp``.
        device: the device the run computes on (decides the autocast dtype and whether a scaler is used).
    """

    mode: str
    device: torch.device

    def __post_init__(self) -> None:
        check_precision(self.mode)
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def from_config(cls, mode: str, device: Union[str, torch.device], key: str = "PREC") -> "Precision":
        """Validate ``mode`` (errors name ``key``, e.g. ``TRAINER.COOP.PREC``) and build the policy."""
        return cls(check_precision(mode, key), torch.device(device))

    @property
    def clip_dtype(self) -> torch.dtype:
        """dtype of the frozen CLIP weights (half only for ``fp16``)."""
        return torch.float16 if self.mode == "fp16" else torch.float32

    @property
    def load_precision(self) -> str:
        """The ``precision`` argument of :func:`promptot.clip.load_clip` (``fp16`` or ``fp32``)."""
        return "fp16" if self.mode == "fp16" else "fp32"

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of learnable prompt parameters: CLIP's dtype, except fp32 master copies under ``amp``."""
        return self.clip_dtype

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype under ``amp`` (fp16 on CUDA, bf16 elsewhere); None otherwise."""
        if self.mode != "amp":
            return None
        return torch.float16 if self.device.type == "cuda" else torch.bfloat16

    def autocast(self) -> ContextManager:
        """Context for the forward pass: autocast under ``amp``, a no-op otherwise."""
        if self.mode != "amp":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A gradient scaler for ``amp`` on CUDA (fp16 gradients underflow without one); None otherwise."""
        if self.mode == "amp" and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None
