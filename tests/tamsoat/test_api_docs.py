from __future__ import annotations

from fastapi.testclient import TestClient

from tamsoat.app import create_app
from tamsoat.core.db import Database


def test_docs_are_served_without_any_cdn(db: Database) -> None:
    client = TestClient(create_app(db))
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "http" not in page.text.lower()
    for asset in ("/docs/assets/swagger-ui.css", "/docs/assets/swagger-ui-bundle.js",
                  "/docs/assets/swagger-ui-standalone-preset.js", "/docs/init.js"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
    assert "/openapi.json" in client.get("/docs/init.js").text
    assert client.get("/openapi.json").json()["info"]["title"] == "tamsoat"
