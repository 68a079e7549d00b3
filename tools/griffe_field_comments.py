"""A griffe extension for the API reference (mkdocs.yml): a ``#:`` comment above an attribute is its docstring.

dimcl documents dataclass fields and module constants the way Sphinx's autodoc reads them, with ``#:``
comment lines right above the assignment::

    #: where it stands in the table (and so in reports, sweeps and ``dimcl --help``): lowest first
    order: int

griffe reads only a string literal *below* an assignment as its docstring, so without this the reference
would show those fields bare. An attribute that has a docstring of its own keeps it.
"""

from __future__ import annotations

import ast

import griffe

MARK = "#:"


class FieldComments(griffe.Extension):
    """Gives each attribute without a docstring the ``#:`` comment lines right above it, if any."""

    def on_attribute_instance(self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute,
                              agent: griffe.Visitor | griffe.Inspector, **kwargs: object) -> None:
        if attr.docstring is not None or attr.lineno is None or attr.filepath is None:
            return
        comment = comment_above(attr.lines_collection[attr.filepath], attr.lineno)
        if comment:
            # parsed as the handler parses every docstring (Google style, mkdocs.yml)
            parser = getattr(agent, "docstring_parser", None)
            options = getattr(agent, "docstring_options", None)
            attr.docstring = griffe.Docstring(comment, lineno=attr.lineno, parent=attr, parser=parser,
                                              parser_options=options)


def comment_above(lines: list[str], lineno: int) -> str:
    """The text of the ``#:`` lines right above line ``lineno`` (1-based) of ``lines``, joined; "" if none."""
    found: list[str] = []
    index = lineno - 2  # the line above, 0-based
    while index >= 0 and lines[index].lstrip().startswith(MARK):
        found.append(lines[index].lstrip()[len(MARK):].strip())
        index -= 1
    return "\n".join(reversed(found))
