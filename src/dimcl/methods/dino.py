"""DINO (Caron et al., ICCV 2021): a student distils an EMA teacher's centred, sharpened prototype outputs.

The head is an MLP to a bottleneck (``proj_output_dim``), L2-normalised, then a weight-normalised last
layer of ``num_prototypes`` prototypes (:class:`~dimcl.models.heads.WeightNormalizedLinear`). The teacher
(momentum backbone and head) sees the two global views, the student every view (multi-crop's local ones
too). The teacher's temperature warms up linearly from ``warmup_teacher_temperature`` to
``teacher_temperature`` over the first ``warmup_teacher_temperature_epochs`` epochs, and the last layer
learns nothing during the first ``freeze_last_layer`` epochs. The centre is a buffer (in checkpoints),
updated after every training step from the teacher's mean logit over the global batch.

DimCL applies to the student head's bottleneck outputs of the two global views (before the normalisation
and the prototypes), never to the P-wide prototype logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dimcl.errors import ConfigError
from dimcl.losses.dino import dino_loss, updated_center
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod, momentum_copy
from dimcl.models.heads import WeightNormalizedLinear, mlp


def teacher_temperature(epoch: int, warmup: float, final: float, warmup_epochs: int) -> float:
    """solo-learn's schedule, ``linspace(warmup, final, warmup_epochs)[epoch]`` during the warm-up, then ``final``."""
    if epoch >= warmup_epochs:
        return final
    if warmup_epochs == 1:
        return warmup
    return warmup + (final - warmup) * epoch / (warmup_epochs - 1)


class DINO(SSLMethod):
    """DINO: a student distils an EMA teacher's centred, sharpened prototype outputs (the module docstring).

    The teacher sees the two global views, the student every view.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the head's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the head's bottleneck width.
        num_prototypes: ``method.num_prototypes``, P, the last layer's width.
        use_bn_in_head: ``method.use_bn_in_head``, batch norm in the head's hidden layers.
        norm_last_layer: ``method.norm_last_layer``, fix the last layer's weight norms at 1.
        student_temperature: ``method.student_temperature``, τ_s.
        teacher_temperature: ``method.teacher_temperature``, τ_t after the warm-up.
        warmup_teacher_temperature: ``method.warmup_teacher_temperature``, τ_t at epoch 0.
        warmup_teacher_temperature_epochs: ``method.warmup_teacher_temperature_epochs``, the warm-up's
            length (0: none).
        freeze_last_layer: ``method.freeze_last_layer``, the epochs during which the last layer learns nothing.
        center_momentum: ``method.center_momentum``, the EMA momentum of the teacher's centre, in [0, 1).
        base_momentum: ``method.base_momentum``, the teacher's EMA momentum at step 0.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is
    :func:`~dimcl.losses.dino_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the student head's
    bottleneck outputs of the two global views, before the normalisation and the prototypes.
    """

    name = "dino"
    nonnegative_options = ("warmup_teacher_temperature_epochs", "freeze_last_layer", "center_momentum")

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 256,
        num_prototypes: int = 4096,
        use_bn_in_head: bool = False,
        norm_last_layer: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.07,
        warmup_teacher_temperature: float = 0.04,
        warmup_teacher_temperature_epochs: int = 0,
        freeze_last_layer: int = 1,
        center_momentum: float = 0.9,
        base_momentum: float = 0.9995,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        for key, value in (("student_temperature", student_temperature), ("teacher_temperature", teacher_temperature),
                           ("warmup_teacher_temperature", warmup_teacher_temperature)):
            if not value > 0:
                raise ConfigError(f"dino {key} must be > 0, got {value}")
        if warmup_teacher_temperature_epochs < 0 or freeze_last_layer < 0 or not 0 <= center_momentum < 1:
            raise ConfigError("dino warmup_teacher_temperature_epochs and freeze_last_layer must be >= 0 and "
                             f"center_momentum in [0, 1), got {warmup_teacher_temperature_epochs}, "
                             f"{freeze_last_layer}, {center_momentum}")
        # projector: the head up to its bottleneck (DINO's MLP: GELU, no batch norm unless use_bn_in_head)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 3,
                             hidden_norm=use_bn_in_head, activation="gelu")
        self.projector.apply(_truncated_normal_init)
        self.prototypes = WeightNormalizedLinear(proj_output_dim, num_prototypes, fixed_norm=norm_last_layer)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.momentum_prototypes = momentum_copy(self.prototypes)
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_teacher_temperature_epochs = warmup_teacher_temperature_epochs
        self.freeze_last_layer = freeze_last_layer
        self.center_momentum = center_momentum
        self.base_momentum = base_momentum

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector),
                (self.prototypes, self.momentum_prototypes)]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.prototypes.parameters()) if self.epoch < self.freeze_last_layer else []

    def current_teacher_temperature(self) -> float:
        """τ_t of the current epoch (:func:`teacher_temperature`)."""
        return teacher_temperature(self.epoch, self.warmup_teacher_temperature, self.teacher_temperature,
                                   self.warmup_teacher_temperature_epochs)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The student's prototype logits (N, P) of bottleneck outputs z (N, D)."""
        return self.prototypes(F.normalize(z, dim=-1))

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W), then any multi-crop local views.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        x1, x2, _ = self.split_views(views)
        local_z = self.encode_locals(views)
        student = torch.cat([self.logits(z) for z in (z1, z2, *local_z)])
        with torch.no_grad():
            teacher = torch.cat([
                self.momentum_prototypes(F.normalize(self.momentum_projector(self.momentum_backbone(x)), dim=-1))
                for x in (x1, x2)
            ])
        loss = dino_loss(student, teacher, self.center, self.student_temperature, self.current_teacher_temperature())
        if self.training:
            self.center.copy_(updated_center(self.center, teacher, self.center_momentum,
                                             gather_distributed=self.gather_distributed))
        return self.combine(loss, z1, z2, f1, local_z)


def _truncated_normal_init(module: nn.Module) -> None:
    """DINO's head initialisation: truncated normal weights (std 0.02), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
