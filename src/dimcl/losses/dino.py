"""DINO's self-distillation objective and its teacher centre (Caron et al., ICCV 2021; solo-learn's form).

For a batch of N images the student's prototype logits of all V views, stacked view-major with the two
global views first (V·N, P), and the teacher's of the two global views (2·N, P):

    t_a = softmax((teacher_a - c) / τ_t)        a ∈ {1, 2}   (centred and sharpened, no gradient)
    s_b = log_softmax(student_b / τ_s)          b ∈ {1 .. V}
    L   = mean over the pairs (a, b), b ≠ a, of  -1/N Σ_i Σ_k t_a[i, k] · s_b[i, k]

The centre ``c`` (1, P) is an exponential moving average of the teacher's mean logit over the global batch,
``c ← m · c + (1 - m) · mean(teacher)`` (:func:`updated_center`), applied after the loss of the step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dimcl.distributed import is_distributed, world_size
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
) -> torch.Tensor:
    """Cross-entropy of the student's views against the centred teacher's other global view -> scalar."""
    if not (student_temp > 0 and teacher_temp > 0):
        raise ValueError(f"DINO temperatures must be > 0, got student {student_temp}, teacher {teacher_temp}")
    n = teacher_logits.shape[0] // 2
    if n == 0 or teacher_logits.shape[0] != 2 * n or student_logits.shape[0] % n:
        raise ValueError(
            f"DINO takes the teacher's two global views (2·N, P) and the student's V views (V·N, P); got "
            f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    teacher = F.softmax((teacher_logits.detach() - center.detach()) / teacher_temp, dim=-1).chunk(2)
    student = F.log_softmax(student_logits / student_temp, dim=-1).chunk(student_logits.shape[0] // n)
    terms = [-(t * s).sum(dim=-1).mean() for a, t in enumerate(teacher) for b, s in enumerate(student) if b != a]
    return torch.stack(terms).mean()


@torch.no_grad()
def updated_center(
    center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9, *, gather_distributed: bool = False
) -> torch.Tensor:
    """The next centre (1, P): ``momentum · center + (1 - momentum) · mean`` of ``teacher_logits`` (M, P),
    the mean over the global batch when ``gather_distributed`` (one all-reduce)."""
    total = teacher_logits.to(center.dtype).sum(dim=0, keepdim=True)  # half-precision logits summed in the centre's
    count = teacher_logits.shape[0]
    if gather_distributed and is_distributed():
        dist.all_reduce(total)
        count *= world_size()
    return center * momentum + total / count * (1 - momentum)
