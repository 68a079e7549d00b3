"""Errors by origin: what the user gave dimcl, as opposed to a bug in dimcl.

Whether input is bad is decided where it is detected: the code that finds a mistyped key, an unreadable
or hostile file, or a value out of range raises a :class:`BadInputError` (or a subclass) with a
one-paragraph message naming the value and what would be accepted. The command line reports those
with exit 2 and no traceback. Every other exception, a ``ValueError`` raised deep inside a method's
``forward`` included, is a bug in dimcl: exit 1, the traceback, and the version.

``BadInputError`` derives from ``ValueError`` so that library callers who catch ``ValueError`` keep
working; the converse does not hold (a plain ``ValueError`` is never taken for bad input).
This module imports nothing of dimcl, so every layer can raise from it.
"""

from __future__ import annotations


class BadInputError(ValueError):
    """Input the user gave (a setting, a file, a folder) that dimcl cannot use; the message says why."""


class ConfigError(BadInputError):
    """A bad configuration value; its message names the key, the value and what is accepted."""


def message_of(err: BadInputError) -> str:
    """The error's own message, also when a DataLoader worker raised it.

    PyTorch re-raises a worker's exception in the main process as the same type with the message
    ``Caught <Type> in DataLoader worker process N.\\nOriginal Traceback ...\\n<module>.<Type>: <message>``;
    the user should read the ``<message>`` the same as if the main process had raised it.
    """
    text = str(err)
    marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
    if text.startswith("Caught ") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
