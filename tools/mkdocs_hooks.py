"""MkDocs hooks of the documentation site (mkdocs.yml): docs/README.md is the one index of the docs.

- The navigation is made from docs/README.md's list, so a page linked there is in the site's navigation
  without an edit to mkdocs.yml: a bullet that starts with a link is a page (the link's text its title); a
  bullet that starts with words, ``Evaluations: [kNN](eval-knn.md), ...``, is a section of the pages it
  links, named by those words up to the first ``:``, ``,`` or ``(``.
- The home page (docs/README.md) starts with the repository README's opening and its quick start, links
  into docs/ made relative to the site; a link there to a file outside docs/ keeps only its text (the site
  holds docs/ alone).

- A notebook's Markdown links to pages (``../method.md``, right in Jupyter and on GitHub) become links to
  those pages in the site: mkdocs-jupyter renders notebooks to HTML that MkDocs never checks, so this
  hook checks them, and a link to a missing page is a warning.

Links to missing pages, and pages that docs/README.md does not link, are warnings (mkdocs.yml's
``validation``), which ``mkdocs build --strict`` turns into a failed build.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

_log = logging.getLogger("mkdocs.hooks.dimcl")
#: an href to a page in a notebook's rendered HTML
PAGE_HREF = re.compile(r'href="(?!https?:|#|/)([^"#]+\.(?:md|ipynb))(#[^"]*)?"')

INDEX = "README.md"
#: a Markdown link to a page of the site: [text](page.md) or [text](page.md#anchor)
PAGE_LINK = re.compile(r"\[((?:[^\]`]|`[^`]*`)+)\]\(([^)\s#]+\.(?:md|ipynb))(?:#[^)]*)?\)")
ANY_LINK = re.compile(r"\[((?:[^\]`]|`[^`]*`)+)\]\(([^)\s]+)\)")


def nav_from_index(text: str) -> list:
    """The MkDocs ``nav`` of docs/README.md's top-level bullets (the home page first)."""
    nav: list = [{"Home": INDEX}]
    seen = {INDEX}
    for bullet in _bullets(text):
        links = [(title, target) for title, target in PAGE_LINK.findall(bullet) if target not in seen]
        seen.update(target for _, target in links)
        if not links:
            continue
        if bullet.startswith("["):
            title, target = links[0]
            nav.append({_title(title): target})
            # pages linked further on in a page's bullet are pages of their own
            nav.extend({_title(t): p} for t, p in links[1:])
        else:
            label = re.split(r"[:,(]", bullet, maxsplit=1)[0].strip()
            nav.append({label: [{_title(t): p} for t, p in links]})
    return nav


def _bullets(text: str) -> list[str]:
    """The top-level ``- `` items of a Markdown list, each with its continuation lines joined."""
    bullets: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            bullets.append(line[2:].strip())
        elif bullets and line.startswith("  ") and line.strip():
            bullets[-1] += " " + line.strip()
    return bullets


def _title(link_text: str) -> str:
    """The link's text as a title: code marks dropped, a first word in lower case capitalised (not kNN)."""
    first = link_text.split(" ", 1)[0]
    plain = link_text.replace("`", "")
    return plain[:1].upper() + plain[1:] if first.isalpha() and first.islower() else plain


def home_start(readme: str, titles: dict[str, str] | None = None) -> str:
    """The repository README from its title to the end of its quick start, links made right for the site.

    A link whose text is its path (``[docs/method.md](docs/method.md)``) takes the page's title in ``titles``.
    """
    sections = re.split(r"(?m)^(?=## )", readme)
    quick = next((s for s in sections if s.startswith("## Quick start")), "")
    return _site_links(sections[0] + quick, titles or {}).rstrip() + "\n\n"


def _anchor(heading: str) -> str:
    """The anchor of a heading as GitHub and the toc extension make it: lower case, punctuation dropped,
    spaces made hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _site_links(markdown: str, titles: dict[str, str]) -> str:
    # an anchor of a README section the home page does not hold (the results, say) keeps only its text
    anchors = {_anchor(h) for h in re.findall(r"(?m)^#+ (.*)$", markdown)}

    def relink(match: re.Match) -> str:
        text, target = match.groups()
        if target.startswith(("http://", "https://")) or target.removeprefix("#") in anchors:
            return match.group(0)
        if target.startswith("docs/"):
            page = target.removeprefix("docs/") or INDEX
            return f"[{titles.get(page, text) if text == target else text}]({page})"
        return text

    return ANY_LINK.sub(relink, markdown)


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    config["nav"] = nav_from_index((docs / INDEX).read_text())
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri != INDEX:
        return markdown
    readme = Path(config["docs_dir"]).parent / "README.md"
    # docs/README.md's own title gives way to the README's: the home page reads as the project's front page
    body = re.sub(r"\A# .*\n", "## The documentation\n", markdown, count=1)
    titles = {page: title for title, page in _titled_pages(config["nav"])}
    return home_start(readme.read_text(), titles) + body


def _titled_pages(nav: list) -> list[tuple[str, str]]:
    out = []
    for entry in nav:
        for title, value in entry.items():
            out.extend(_titled_pages(value) if isinstance(value, list) else [(title, value)])
    return out


def on_page_content(html, page, config, files, **kwargs):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    from mkdocs.utils import get_relative_url  # here: the rest of this module is tested without the docs extra

    def relink(match: re.Match) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        path = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), target))
        linked = files.get_file_from_path(path)
        if linked is None:
            _log.warning("%s links to '%s', which is not a page of the site", page.file.src_uri, target)
            return match.group(0)
        return f'href="{get_relative_url(linked.url, page.url)}{anchor}"'

    return PAGE_HREF.sub(relink, html)
