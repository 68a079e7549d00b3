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
    """Cross-entropy of every student view against the centred, sharpened teacher's other global views.

    Args:
        student_logits: the student's prototype logits of all V views, view-major, global views first (V·N, P).
        teacher_logits: the teacher's logits of the two global views (2·N, P); no gradient flows into them.
        center: the teacher's centre (1, P).
        student_temp: τ_s.
        teacher_temp: τ_t.

    Returns:
        The loss, a scalar.

    Raises:
        ValueError: a temperature is not > 0, or the shapes do not hold two teacher views and V student views.
    """
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
    """The next teacher centre, ``momentum · center + (1 - momentum) · mean(teacher_logits)``.

    Args:
        center: the current centre (1, P).
        teacher_logits: the teacher's logits of the step (M, P).
        momentum: m, the weight of the current centre.
        gather_distributed: the mean over the global batch (one all-reduce), not this rank's.

    Returns:
        The new centre (1, P), in the dtype of ``center``.
    """
    total = teacher_logits.to(center.dtype).sum(dim=0, keepdim=True)  # half-precision logits summed in the centre's
    count = teacher_logits.shape[0]
    if gather_distributed and is_distributed():
        dist.all_reduce(total)
        count *= world_size()
    return center * momentum + total / count * (1 - momentum)
