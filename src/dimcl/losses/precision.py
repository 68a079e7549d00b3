"""Objectives in float32 under mixed precision.

Under ``trainer.precision=bf16-mixed`` / ``16-mixed`` the networks run in half precision, but the
objectives must not: Barlow Twins' and VICReg's (D, D) correlation / covariance sums, NT-Xent's,
MoCo's and DimCL's logits divided by a small temperature lose most of their digits in bfloat16
(8 bits of mantissa). Every objective is therefore computed with autocast disabled, half-precision
inputs first cast to float32; float32 and float64 inputs pass through untouched, so outside
autocast the result is the same to the bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)

LossFn = TypeVar("LossFn", bound=Callable[..., torch.Tensor])


def to_float32(tensor: Any) -> Any:
    """``tensor`` in float32 if it is a half-precision tensor, a list or tuple of tensors each so (SwAV's views);
    anything else unchanged."""
    if isinstance(tensor, (list, tuple)):
        return type(tensor)(to_float32(t) for t in tensor)
    if isinstance(tensor, torch.Tensor) and tensor.dtype in HALF_DTYPES:
        return tensor.float()
    return tensor


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


def computed_in_float32(loss_fn: LossFn) -> LossFn:
    """Decorate an objective so it runs with autocast off and its half-precision tensor arguments in float32."""

    @functools.wraps(loss_fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        first = next(_tensors((*args, *kwargs.values())))
        with torch.autocast(device_type=first.device.type, enabled=False):
            return loss_fn(*(to_float32(a) for a in args), **{k: to_float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
