"""Reading the YAML that users give dimcl (recipes, grid files, a run's config.yaml), with bounded work.

``yaml.safe_load`` runs no code, but a small file can still cost unbounded work: a "billion laughs"
document of nested aliases is a few hundred bytes that expand to gigabytes once walked (a run's
config.yaml of 1 KB ran to a MemoryError at 3 GB). dimcl's files never need aliases (``yaml.safe_dump``
writes none for configs, which hold no shared objects), so they are refused, as are files over
:data:`MAX_YAML_BYTES`; a syntax error or an unsafe tag (``!!python/object``) is bad input too. Every
error names the file and says what is wrong (:class:`~dimcl.errors.ConfigError`, a bad input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dimcl.errors import ConfigError

#: the largest YAML file dimcl reads (its recipes and configs are a few KB)
MAX_YAML_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first alias (``*name``) instead of following it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found an alias (*{event.anchor}); dimcl's files take plain values, write them out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, source: str) -> Any:
    """The document in ``text``; ``source`` names it in errors (e.g. ``"config file 'a.yaml'"``)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is {len(text)} bytes, over the {MAX_YAML_BYTES} dimcl reads; is it the "
                            "right file?")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "a syntax error"
        raise ConfigError(f"{source} is not valid YAML: {problem}{where}") from None


def read_yaml(path: str | Path, source: str) -> Any:
    """:func:`load_yaml` of the file at ``path`` (its size checked before it is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{source} is {size} bytes, over the {MAX_YAML_BYTES} dimcl reads; is it the "
                                "right file?")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source} cannot be read ({err})") from None
    return load_yaml(text, source)
