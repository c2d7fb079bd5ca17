"""The interactive API documentation (``/docs``), served entirely from this service.

FastAPI's default page loads Swagger UI from a CDN, which an on-premise hospital network cannot
reach; here the Swagger UI files come from the ``swagger-ui-bundle-v2`` package.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

STATIC = Path(__file__).resolve().parent / "static"
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tamsoat API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script></body></html>"""
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def install_api_docs(app: FastAPI) -> None:
    """Serve ``/docs`` from local files. Create the app with ``docs_url=None`` and ``redoc_url=None``."""
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs/init.js", include_in_schema=False)
    def docs_init() -> HTMLResponse:
        js = (STATIC / "api-docs.js").read_text()
        return HTMLResponse(js, media_type="text/javascript")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})
