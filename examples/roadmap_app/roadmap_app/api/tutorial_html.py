"""LLM-written tutorials as inert HTML: CommonMark without raw HTML, then an allow-list sanitizer."""

from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt

__all__ = ("tutorial_html",)

# Raw HTML in the Markdown stays text ("html": False) and markdown-it refuses javascript:, vbscript:
# and data: links; nh3 then keeps only the tags and attributes below, so whatever the model wrote,
# the page receives no script, no event handler and no style (issue 14).
_MARKDOWN = MarkdownIt("commonmark", {"html": False})
_TAGS = {
    "a", "blockquote", "br", "code", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol",
    "p", "pre", "strong", "ul",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
_LEADING_HEADING = re.compile(r"^#{1,3}[ \t]+(.*?)[ \t#]*\n+")


def tutorial_html(markdown: str, title: str) -> str:
    """`markdown` as sanitised HTML, without a leading heading that repeats `title` (the page
    already shows the concept's title above the tutorial)."""
    heading = _LEADING_HEADING.match(markdown)
    if heading is not None and heading.group(1).strip() == title:
        markdown = markdown[heading.end() :]
    return nh3.clean(
        _MARKDOWN.render(markdown),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
