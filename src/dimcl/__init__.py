"""dimcl: Dimensional Contrastive Learning (Nguyen et al., IEEE Access 2023) as a regularizer for SSL."""

__version__ = "0.1.0"
