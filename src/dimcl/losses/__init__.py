"""Loss functions: DimCL and the base objectives of the six SSL methods, one file each."""

from dimcl.losses.barlow_twins import barlow_twins_loss
from dimcl.losses.dimcl import DimCLLoss, dimcl_loss
from dimcl.losses.moco import moco_loss
from dimcl.losses.multi_view_nt_xent import multi_view_nt_xent_loss
from dimcl.losses.negative_cosine import byol_loss, simsiam_loss
from dimcl.losses.nt_xent import nt_xent_loss
from dimcl.losses.vicreg import vicreg_loss

__all__ = [
    "DimCLLoss",
    "barlow_twins_loss",
    "byol_loss",
    "dimcl_loss",
    "moco_loss",
    "multi_view_nt_xent_loss",
    "nt_xent_loss",
    "simsiam_loss",
    "vicreg_loss",
]
