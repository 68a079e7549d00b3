"""Backbones (image -> feature vector) and the MLP heads built on top of them."""

from dimcl.models.backbones import BACKBONES, TIMM_PREFIX, SmallCNN, build_backbone, check_backbone_name, stem_of
from dimcl.models.heads import mlp

__all__ = ["BACKBONES", "TIMM_PREFIX", "SmallCNN", "build_backbone", "check_backbone_name", "mlp", "stem_of"]
