"""The errors of a dataset that cannot be used as given (all of them bad input: exit 2 at the command line)."""

from __future__ import annotations

from dimcl.errors import BadInputError


class DatasetError(BadInputError):
    """A dataset that cannot be used as given: bad name, split, subset, or a corrupt file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not where they were looked for (also a FileNotFoundError)."""


class BadImageError(DatasetError):
    """An image file that cannot be decoded, with ``data.on_bad_image=fail``."""
