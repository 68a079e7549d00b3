"""Fetching missing files with torchvision's downloaders, for the readers that offer ``data.download``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dimcl.data.errors import DatasetError, DatasetNotFoundError
from dimcl.data.info import DatasetInfo


def require_files(
    info: DatasetInfo, root: Path, files: list[Path], folder: str, fetch: Callable[[str], Any], download: bool,
    size_note: str = "",
) -> None:
    """Make sure ``files`` (under ``root/folder``, torchvision's layout) exist: fetched with ``fetch`` when
    ``download`` and some are missing, else a :class:`DatasetNotFoundError` naming the first missing one."""
    if download and not all(f.is_file() for f in files):
        download_with_torchvision(info, root, fetch)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{info.name} files not found: '{missing[0]}' does not exist (data.root is '{root}', which should "
            f"hold the folder {folder}/ in torchvision's format). Set data.root to the folder that holds "
            f"{folder}/, or set data.download=true to fetch it with torchvision{size_note}."
        )


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
