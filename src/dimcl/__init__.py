"""dimcl: Dimensional Contrastive Learning (Nguyen et al., IEEE Access 2023) as a regularizer for SSL.

``dimcl.load_backbone(path)`` returns a trained backbone and its metadata (:func:`dimcl.export.load_backbone`).
"""

from typing import Any

from dimcl.version import __version__

__all__ = ["__version__", "load_backbone"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import dimcl` (the version, the CLI's start) stays free of torch.
    if name == "load_backbone":
        from dimcl.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'dimcl' has no attribute {name!r}")
