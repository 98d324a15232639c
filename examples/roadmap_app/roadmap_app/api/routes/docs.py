"""`/docs` and `/redoc`: Swagger UI and ReDoc from files this app serves, under its strict CSP.

FastAPI's own pages load their scripts from a CDN and start them with an inline script; the
app's Content Security Policy (`script-src 'self'`) blocks both, which left `/docs` blank, and
many deployments have no network anyway (issue 22). The assets come from the `fastapi-offline`
wheel, the start-up code from `static/docs-*.js`: nothing inline, nothing fetched elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from roadmap_app.api.security_headers import CONTENT_SECURITY_POLICY

__all__ = ("ASSETS_DIR", "REDOC_CONTENT_SECURITY_POLICY", "router")

# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)

# ReDoc styles itself by inserting <style> elements (styled-components), which `style-src 'self'`
# refuses, leaving the page blank. This page alone allows inline styles; scripts stay as strict
# as everywhere (this origin's files only), and the page shows no user or LLM content.
REDOC_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self';", "style-src 'self' 'unsafe-inline';"
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Roadmap generator API · {name}</title>
  <link rel="icon" href="/static/vendor/favicon.png">
  {head}
</head>
<body>
  <div id="{mount}" data-spec="/openapi.json"></div>
  <script src="/static/vendor/{bundle}"></script>
  <script src="/static/{start}"></script>
</body>
</html>
"""


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(
            name="Swagger UI",
            head='<link rel="stylesheet" href="/static/vendor/swagger-ui.css">',
            mount="swagger-ui",
            bundle="swagger-ui-bundle.js",
            start="docs-swagger.js",
        )
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(
            name="ReDoc",
            head="",
            mount="redoc",
            bundle="redoc.standalone.js",
            start="docs-redoc.js",
        ),
        headers={"Content-Security-Policy": REDOC_CONTENT_SECURITY_POLICY},
    )
