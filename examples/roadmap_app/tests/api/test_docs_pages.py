"""/docs and /redoc: pages of this app's own files, no inline script, no CDN."""

from __future__ import annotations

import re

import httpx
import pytest

from roadmap_app.api.routes.docs import REDOC_CONTENT_SECURITY_POLICY
from roadmap_app.api.security_headers import CONTENT_SECURITY_POLICY

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.parametrize(
    ("path", "policy", "assets"),
    [
        ("/docs", CONTENT_SECURITY_POLICY, ["swagger-ui-bundle.js", "swagger-ui.css"]),
        ("/redoc", REDOC_CONTENT_SECURITY_POLICY, ["redoc.standalone.js"]),
    ],
)
async def test_docs_pages_load_only_local_scripts_under_the_policy(
    client: httpx.AsyncClient, path: str, policy: str, assets: list[str]
) -> None:
    page = await client.get(path)
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == policy
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts
    for attributes, body in scripts:
        assert body.strip() == ""  # nothing inline
        (source,) = re.findall(r'src="([^"]+)"', attributes)
        assert source.startswith("/static/")
    assert "http" not in page.text.replace('content="width', "")
    for asset in assets:
        response = await client.get(f"/static/vendor/{asset}")
        assert response.status_code == 200
        assert len(response.content) > 100_000
    for start in re.findall(r'src="(/static/docs-[a-z]+\.js)"', page.text):
        assert (await client.get(start)).status_code == 200


def test_only_the_redoc_page_allows_inline_styles_and_never_inline_scripts() -> None:
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in REDOC_CONTENT_SECURITY_POLICY
    assert REDOC_CONTENT_SECURITY_POLICY.count("'unsafe-inline'") == 1
    assert "style-src 'self' 'unsafe-inline';" in REDOC_CONTENT_SECURITY_POLICY
