"""Memory-lean DimCL for wide projectors: row blocks, a streaming log-sum-exp, recomputation in backward.

The plain form materialises the (2D, 2D) similarity matrix, its softmax and its gradient: at D = 8192
that is 16384² entries, 1 GiB each in float32. Here the loss over the 2D unit dimension vectors
``h`` (2D, N) is computed ``block_size`` anchor rows at a time:

    forward:   lse_i = log Σ_{j≠i} exp(h_i·h_j / τ)   (one (B, 2D) block of logits alive at a time)
               L = 1/(2D) Σ_i (lse_i - h_i·h_p(i) / τ)
    backward:  G = softmax(rows) - onehot(p(i)) recomputed block by block from the saved lse;
               dL/dh = (G h + Gᵀ h) / (2D τ)

so the extra memory is O(B · 2D) instead of O((2D)²). Values and gradients equal the plain form's up
to floating-point summation order. The uniform ablation needs no similarity matrix at all:
Σ_j h_i·h_j = h_i·(Σ_j h_j), so it is computed in O(2D · N).
"""

from __future__ import annotations

import torch

from dimcl.losses.info_nce import positive_index

#: anchor rows per block: (block, 2D) logits; 1024 x 16384 float32 is 64 MiB
DEFAULT_BLOCK_SIZE = 1024


def _block_logits(h: torch.Tensor, start: int, stop: int, temperature: float) -> torch.Tensor:
    """Logits of anchor rows [start, stop) against every vector, the self-similarity set to -inf."""
    logits = h[start:stop] @ h.T / temperature
    rows = torch.arange(stop - start, device=h.device)
    logits[rows, rows + start] = float("-inf")
    return logits


class _BlockwiseInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, temperature: float, block_size: int) -> torch.Tensor:  # type: ignore[override]
        num_vectors = h.shape[0]
        pos = positive_index(num_vectors // 2, h.device)
        lse = torch.empty(num_vectors, dtype=h.dtype, device=h.device)
        for start in range(0, num_vectors, block_size):
            stop = min(start + block_size, num_vectors)
            lse[start:stop] = torch.logsumexp(_block_logits(h, start, stop, temperature), dim=1)
        positive = (h * h[pos]).sum(dim=1) / temperature
        ctx.save_for_backward(h, lse)
        ctx.temperature, ctx.block_size = temperature, block_size
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        h, lse = ctx.saved_tensors
        temperature, block_size = ctx.temperature, ctx.block_size
        num_vectors = h.shape[0]
        pos = positive_index(num_vectors // 2, h.device)
        grad = torch.zeros_like(h)
        for start in range(0, num_vectors, block_size):
            stop = min(start + block_size, num_vectors)
            weights = torch.exp(_block_logits(h, start, stop, temperature) - lse[start:stop, None])
            rows = torch.arange(stop - start, device=h.device)
            weights[rows, pos[start:stop]] -= 1.0  # G = softmax - onehot(positive)
            grad[start:stop] += weights @ h  # the block's anchors
            grad += weights.T @ h[start:stop]  # every vector, as a candidate of the block's anchors
        return grad * (grad_output / (num_vectors * temperature)), None, None


def blockwise_contrast(h: torch.Tensor, temperature: float, block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    """InfoNCE over the unit dimension vectors ``h`` (2D, N), block by block; equals the plain form."""
    if block_size < 1:
        raise ValueError(f"DimCL block_size must be >= 1, got {block_size}")
    return _BlockwiseInfoNCE.apply(h, temperature, block_size)


def uniform_contrast(h: torch.Tensor, temperature: float) -> torch.Tensor:
    """The uniform ablation from ``h`` (2D, N) without the (2D, 2D) matrix: ``mean(-pos + mean neg) / τ``."""
    num_vectors = h.shape[0]
    pos = positive_index(num_vectors // 2, h.device)
    positive = (h * h[pos]).sum(dim=1)
    self_similarity = (h * h).sum(dim=1)
    row_sums = h @ h.sum(dim=0)
    negative_mean = (row_sums - self_similarity - positive) / (num_vectors - 2)
    return (negative_mean - positive).mean() / temperature
