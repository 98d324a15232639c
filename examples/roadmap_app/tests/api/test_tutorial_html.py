"""LLM-written Markdown becomes HTML that carries no script, handler, style or foreign scheme."""

from __future__ import annotations

import pytest

from roadmap_app.api.tutorial_html import tutorial_html


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
        ('<img src=x onerror="alert(1)">', '<p>&lt;img src=x onerror="alert(1)"&gt;</p>'),
        ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
        ("[x](JaVaScRiPt:alert(1))", "<p>[x](JaVaScRiPt:alert(1))</p>"),
        ("[x](data:text/html,hi)", "<p>[x](data:text/html,hi)</p>"),
        ("![x](https://tracker.example/p.png)", "<p></p>"),
        (
            "<div style='position:fixed'>hi</div>",
            "<p>&lt;div style='position:fixed'&gt;hi&lt;/div&gt;</p>",
        ),
        (
            '[docs](https://example.org "Docs")',
            '<p><a href="https://example.org" title="Docs" target="_blank" '
            'rel="noopener noreferrer nofollow">docs</a></p>',
        ),
        ("**bold** *it* `code`", "<p><strong>bold</strong> <em>it</em> <code>code</code></p>"),
        ("```\n<b>x</b>\n```", "<pre><code>&lt;b&gt;x&lt;/b&gt;\n</code></pre>"),
    ],
)
def test_markdown_renders_as_inert_html(markdown: str, expected: str) -> None:
    assert tutorial_html(markdown, "Title").strip() == expected


def test_a_leading_heading_that_repeats_the_title_is_dropped_and_others_kept() -> None:
    assert tutorial_html("## Loops\n\nBody", "Loops").strip() == "<p>Body</p>"
    assert tutorial_html("## Loops\n\nBody", "Lists").startswith("<h2>Loops</h2>")
    assert "<h3>Loops</h3>" in tutorial_html("Intro\n\n### Loops", "Loops")
