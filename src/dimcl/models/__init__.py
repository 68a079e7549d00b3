"""Backbones (image -> feature vector) and the MLP heads built on top of them."""

from dimcl.models.backbones import BACKBONES, SmallCNN, build_backbone
from dimcl.models.heads import mlp

__all__ = ["BACKBONES", "SmallCNN", "build_backbone", "mlp"]
