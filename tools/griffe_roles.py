"""A griffe extension for the API reference (mkdocs.yml): the Sphinx-style cross-reference roles of dimcl's
docstrings, ``:class:`~dimcl.errors.ConfigError```, ``:func:`dimcl_loss```, become links.

A role's target is resolved the way Python would read the name where the docstring stands (the object's
members, its module's names and imports, then the enclosing scopes), or as a full ``dimcl.`` path. One that
resolves becomes an optional cross-reference: a link when the site documents that object, its name in
code otherwise (the reference shows the public API, not every helper a docstring names). One that does not
resolve is a warning in the modules that the reference shows (the extension's ``checked`` option, module
paths), so ``mkdocs build --strict`` fails on a reference there to a name that does not exist; elsewhere it
is shown in code.
"""

from __future__ import annotations

import html
import logging
import re

import griffe

# a logger under "mkdocs": MkDocs counts its warnings, and --strict fails the build on them
_log = logging.getLogger("mkdocs.plugins.dimcl.griffe_roles")

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj|const):`(~?)([\w.]+)(?:\(\))?`")
CALLABLE_ROLES = {"func", "meth"}


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is whole (all modules loaded).

    Args:
        checked: the modules (and their submodules) where a reference that does not resolve is a warning.
    """

    def __init__(self, checked: list[str] | None = None) -> None:
        super().__init__()
        self.checked = tuple(checked or ())

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                warn = any(obj.path == m or obj.path.startswith(m + ".") for m in self.checked)
                obj.docstring.value = ROLE.sub(lambda m, o=obj, w=warn: _crossref(o, pkg, m, w), obj.docstring.value)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _crossref(obj: griffe.Object, pkg: griffe.Module, match: re.Match, warn: bool) -> str:
    role, short, target = match.groups()
    path = _resolve(obj, pkg, target)
    shown = target.rsplit(".", 1)[-1] if short else target
    if role in CALLABLE_ROLES:
        shown += "()"
    if path is None:
        if warn:
            _log.warning("%s: the docstring's reference %s does not resolve to an object of %s",
                         obj.path, match.group(0), pkg.name)
        return f"`{shown}`"
    return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(shown)}</code></autoref>'


def _resolve(obj: griffe.Object, pkg: griffe.Module, target: str) -> str | None:
    """The full path of ``target`` as read in ``obj``'s docstring, or None."""
    if target == pkg.name or target.startswith(pkg.name + "."):
        return target if _exists(pkg, target) else None
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        if head in scope.members or scope.is_module or scope.is_class:
            try:
                path = scope.resolve(head)
            except griffe.NameResolutionError:
                path = None
            if path is not None:
                full = f"{path}.{rest}" if rest else path
                # a name imported from another package (torch, ...) is taken as Python would take it
                return full if _exists(pkg, full) or not full.startswith(pkg.name + ".") else None
        scope = scope.parent
    return None


def _exists(pkg: griffe.Module, path: str) -> bool:
    if path == pkg.name:
        return True
    try:
        pkg[path.removeprefix(pkg.name + ".")]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True
