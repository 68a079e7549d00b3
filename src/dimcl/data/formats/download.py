"""Fetching missing files with torchvision's downloaders, for the readers that offer ``data.download``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dimcl.data.errors import DatasetError
from dimcl.data.info import DatasetInfo


def download_with_torchvision(info: DatasetInfo, root: Path, fetch: Callable[[str], Any]) -> None:
    """Run a torchvision downloader into ``root``, turning its failures into one clear error."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch(str(root))
    except Exception as err:  # network, checksum and disk errors all end the same way for the user
        raise DatasetError(
            f"downloading {info.name} into '{root}' with torchvision failed ({type(err).__name__}: {err}); "
            f"check the network connection and that '{root}' is writable, or put the files there yourself."
        ) from err
