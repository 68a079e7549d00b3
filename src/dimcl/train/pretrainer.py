"""The networks as the training loop runs them: the method and its online probe as one module (the one
Fabric wraps for DDP), in channels_last memory if asked, compiled if asked, with CUDA's fast defaults.

Nothing here changes a result on the CPU: channels_last and torch.compile only reorder sums, and the
CUDA defaults apply on CUDA only.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from dimcl.methods import SSLMethod


class Pretrainer(nn.Module):
    """The method plus an online linear probe trained on detached features (one module for DDP)."""

    def __init__(self, method: SSLMethod, probe: nn.Module | None, channels_last: bool = False):
        super().__init__()
        self.method = method
        self.probe = probe
        self.channels_last = channels_last
        if channels_last:
            self.method.to(memory_format=torch.channels_last)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        out: dict[str, torch.Tensor] = dict(self.method(views))  # the method's MethodOutput, plus the probe's keys
        if self.probe is not None:
            logits = self.probe(out["features"].detach())
            # Unlabelled images (label -1, e.g. STL-10's unlabeled split) do not train the probe. ignore_index and
            # not a boolean mask: indexing by a mask (or `if mask.any()`) waits for the device on every step.
            count = (labels >= 0).sum()
            loss = F.cross_entropy(logits, labels, ignore_index=-1)
            # A batch without labels makes the mean 0/0; its gradient through where() is zero, not NaN.
            out["loss_probe"] = torch.where(count > 0, loss, logits.sum() * 0)
            out["probe_correct"] = (logits.argmax(1) == labels).sum()  # argmax is never -1
            out["probe_count"] = count
        return out


def eager(compiled: bool) -> contextlib.AbstractContextManager:
    """Compiled modules run their plain forward inside (``torch.compiler.set_stance``, torch >= 2.6; older
    versions compile the evaluation's shapes too)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if compiled and set_stance is not None else contextlib.nullcontext()


def set_cuda_defaults(precision: str) -> None:
    """On CUDA only: cuDNN picks the fastest convolution algorithms for the run's fixed shapes, and float32
    matmuls / convolutions of fp32 recipes use TF32 tensor cores (10-bit mantissa inputs, float32 sums), as
    the SSL reference codes do. The CPU keeps its exact float32 arithmetic, and bit-identical runs with it."""
    torch.backends.cudnn.benchmark = True
    if precision in ("32", "32-true"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_networks(method: nn.Module) -> None:
    """``torch.compile`` every network of the method in place (backbone, projector, predictor, momentum
    copies): parameter names and checkpoints stay as without compiling. Loss modules hold no parameters."""
    for child in method.children():
        if any(True for _ in child.parameters()):
            child.compile()

