"""Loss functions: DimCL and the base objectives of the SSL methods, one file each."""

from dimcl.losses.barlow_twins import barlow_twins_loss
from dimcl.losses.dimcl import DimCLLoss, dimcl_loss
from dimcl.losses.dino import dino_loss, updated_center
from dimcl.losses.moco import moco_loss
from dimcl.losses.mocov3 import mocov3_loss
from dimcl.losses.multi_view_nt_xent import multi_view_nt_xent_loss
from dimcl.losses.negative_cosine import byol_loss, simsiam_loss
from dimcl.losses.nnclr import nnclr_loss
from dimcl.losses.nt_xent import nt_xent_loss
from dimcl.losses.swav import sinkhorn, swav_loss
from dimcl.losses.vicreg import vicreg_loss
from dimcl.losses.wmse import whiten, whitened_mse_loss, wmse_loss

__all__ = [
    "DimCLLoss",
    "barlow_twins_loss",
    "byol_loss",
    "dimcl_loss",
    "dino_loss",
    "moco_loss",
    "mocov3_loss",
    "multi_view_nt_xent_loss",
    "nnclr_loss",
    "nt_xent_loss",
    "simsiam_loss",
    "sinkhorn",
    "swav_loss",
    "updated_center",
    "vicreg_loss",
    "whiten",
    "whitened_mse_loss",
    "wmse_loss",
]
