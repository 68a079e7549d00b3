"""DimCL: contrastive learning along the feature dimension.

Nguyen et al., "DimCL: Dimensional Contrastive Learning for Improving Self-Supervised Learning",
IEEE Access 11, 2023 (arXiv 2309.11782).

For the projector outputs of two views ``z1, z2`` of shape (N, D):

1. standardise every dimension over the batch, each view on its own (biased variance, eps 1e-5,
   no affine parameters, no running statistics): ``ẑ = (z - mean) / sqrt(var + eps)``;
2. transpose, so each of the D dimensions is a vector of length N;
3. stack both views into 2D vectors ``h`` and L2-normalise them. Because they are centred,
   ``h_i · h_j`` is the Pearson correlation of two dimensions across the batch;
4. InfoNCE with temperature τ: the positive of vector i is the same dimension in the other view,
   the negatives are the other 2D - 2 vectors, and the self-similarity is left out:

        L = -1/(2D) Σ_i log( exp(s_i,p(i)/τ) / Σ_{j≠i} exp(s_ij/τ) )

The softmax gives each negative a gradient weight that grows with its similarity (hardness-aware).
The uniform ablation keeps the positives and negatives but weighs every negative equally:

       L_uniform = 1/(2D) Σ_i ( -s_i,p(i) + mean_{j∉{i,p(i)}} s_ij ) / τ

Under data parallelism the statistics and the dimension vectors span the *global* batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dimcl.distributed import gather
from dimcl.losses.dimcl_blockwise import blockwise_contrast, uniform_contrast
from dimcl.losses.info_nce import positive_index, two_view_info_nce
from dimcl.losses.precision import computed_in_float32

STANDARDIZE_EPS = 1e-5
#: implementations of the contrast over dimension vectors; "auto" picks blockwise above the threshold
IMPLEMENTATIONS = ("auto", "plain", "blockwise")
#: "auto" switches to the blockwise form when the 2D x 2D similarity matrix has more rows than this
BLOCKWISE_ABOVE = 4096


def _check_inputs(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> None:
    if z1.dim() != 2 or z2.dim() != 2:
        raise ValueError(
            f"DimCL expects two (N, D) projector outputs, got shapes {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape != z2.shape:
        raise ValueError(
            f"DimCL needs both views to have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n, d = z1.shape
    if n < 2:
        raise ValueError(
            f"DimCL standardises every dimension over the batch and needs a batch of at least 2, got N={n}"
        )
    if d < 2:
        raise ValueError(f"DimCL contrasts dimensions and needs at least 2 of them, got D={d}")
    if not temperature > 0:
        raise ValueError(f"DimCL temperature must be > 0, got {temperature}")


def check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"DimCL implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}"
        )


def standardize(z: torch.Tensor, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
    """Standardise each column of ``z`` (N, D) over the batch: biased variance, no affine, no running stats."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) * torch.rsqrt(var + eps)


def dimension_vectors(z1: torch.Tensor, z2: torch.Tensor, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
    """The 2D unit-length dimension vectors (2D, N): rows 0..D-1 from view 1, D..2D-1 from view 2."""
    h = torch.cat([standardize(z1, eps).T, standardize(z2, eps).T], dim=0)
    return F.normalize(h, dim=1)


def contrast_similarities(similarity: torch.Tensor, temperature: float, hardness_aware: bool = True) -> torch.Tensor:
    """Loss from the (2D, 2D) cosine similarities of the dimension vectors (rows are anchors).

    Row i's positive is column (i + D) mod 2D; the diagonal is excluded. The hardness-aware form is
    the two-view InfoNCE that NT-Xent uses too (:mod:`dimcl.losses.info_nce`).
    """
    if hardness_aware:
        return two_view_info_nce(similarity, temperature)
    two_d = similarity.shape[0]
    pos = positive_index(two_d // 2, similarity.device)
    logits = similarity / temperature
    positive = logits.gather(1, pos[:, None]).squeeze(1)
    # Every entry except self and the positive is a negative: 2D - 2 of them per row.
    negative_sum = logits.sum(dim=1) - logits.diagonal() - positive
    negative_mean = negative_sum / (two_d - 2)
    return (negative_mean - positive).mean()


@computed_in_float32
def dimcl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    hardness_aware: bool = True,
    *,
    gather_distributed: bool = False,
    eps: float = STANDARDIZE_EPS,
    implementation: str = "auto",
) -> torch.Tensor:
    """DimCL loss of two views' projector outputs (the module docstring's formula).

    Half-precision inputs are computed in float32 with autocast disabled, so the loss is safe to
    call inside ``torch.autocast``.

    Args:
        z1: projector outputs of view 1 (N, D), N >= 2 and D >= 2.
        z2: projector outputs of view 2 (N, D).
        temperature: τ of the InfoNCE over dimensions, > 0.
        hardness_aware: the InfoNCE (True) or the uniform ablation, every negative weighed equally (False).
        gather_distributed: with an initialised process group, gather the batch from every rank first, so
            the statistics are the global batch's (gradients flow back correctly, see :mod:`dimcl.distributed`).
        eps: added to the variance when standardising each dimension.
        implementation: ``"plain"`` builds the (2D, 2D) similarity matrix; ``"blockwise"`` never does
            (:mod:`dimcl.losses.dimcl_blockwise`, same value and gradients); ``"auto"`` takes blockwise when
            2D > ``BLOCKWISE_ABOVE``.

    Returns:
        The loss, a scalar (float32, or float64 for float64 inputs).

    Raises:
        ValueError: the inputs are not two (N, D) batches of the same shape with N, D >= 2, the temperature
            is not > 0, or the implementation is unknown.
    """
    _check_inputs(z1, z2, temperature)
    check_implementation(implementation)
    # Autocast is off and half inputs are float32 here (@computed_in_float32).
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    h = dimension_vectors(z1, z2, eps)
    blockwise = implementation == "blockwise" or (implementation == "auto" and h.shape[0] > BLOCKWISE_ABOVE)
    if not blockwise:
        return contrast_similarities(h @ h.T, temperature, hardness_aware)
    return blockwise_contrast(h, temperature) if hardness_aware else uniform_contrast(h, temperature)


class DimCLLoss(nn.Module):
    """Module form of :func:`dimcl_loss`; gathers across ranks by default (global-batch statistics).

    Args:
        temperature: τ, > 0.
        hardness_aware: the InfoNCE (True) or the uniform ablation (False).
        gather_distributed: compute over the global batch of every rank.
        implementation: ``"auto"``, ``"plain"`` or ``"blockwise"``, as in :func:`dimcl_loss`.

    Raises:
        ValueError: the temperature is not > 0 or the implementation is unknown.

    Example:
        ```python
        criterion = DimCLLoss(temperature=0.1)
        loss = (1 - 0.1) * loss_ssl + 0.1 * criterion(z1, z2)
        ```
    """

    def __init__(
        self,
        temperature: float = 0.1,
        hardness_aware: bool = True,
        gather_distributed: bool = True,
        implementation: str = "auto",
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"DimCL temperature must be > 0, got {temperature}")
        check_implementation(implementation)
        self.temperature = temperature
        self.hardness_aware = hardness_aware
        self.gather_distributed = gather_distributed
        self.implementation = implementation

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """The DimCL loss (a scalar) of two views' projector outputs (N, D) each."""
        return dimcl_loss(
            z1, z2, self.temperature, self.hardness_aware, gather_distributed=self.gather_distributed,
            implementation=self.implementation,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hardness_aware={self.hardness_aware}"
