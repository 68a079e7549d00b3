"""A restricted unpickler for data files (CIFAR's batches are Python pickles).

A plain unpickler calls whatever the file names (``os.system`` included), so a downloaded or shared data
file could run code of its author's choosing. :func:`load_safe_pickle` admits only what plain data and
numpy arrays need, and turns everything else into a :class:`~dimcl.data.errors.DatasetError`.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from dimcl.data.errors import DatasetError


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that names a callable other than the few that rebuild plain data and numpy arrays."""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, bytes, numbers and numpy arrays / scalars / dtypes only.

    Containers and scalars are pickle opcodes that call nothing; everything else is a global the file
    asks for by name, and only the constructors below are looked up (numpy 1.x and 2.x module names;
    ``_codecs.encode`` is how Python 3 pickles bytes at protocol 2). None of them runs code of the
    file's choosing: an object array's items are unpickled by this same unpickler.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"{module}.{name}")
        return super().find_class(module, name)


def load_safe_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a data file with :class:`_SafeUnpickler` (Python 2 pickles read as latin1).

    Raises :class:`DatasetError` naming the file when it asks for anything else, or is damaged.
    """
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as err:
        raise DatasetError(
            f"refusing to read '{path}': it is a pickle that calls {err}, which could run arbitrary code; a data "
            "file may hold only dicts, lists, strings, numbers and numpy arrays. Replace it with the file from "
            "the dataset's official archive."
        ) from None
    except Exception as err:  # unpickling fails in many ways on a damaged file
        raise DatasetError(
            f"could not read '{path}': it is truncated or corrupt ({type(err).__name__}: {err}); delete it "
            f"and get it again."
        ) from err
