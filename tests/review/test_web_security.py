"""People and trust: login, the session cookie, CSRF, roles on every route, escaping, languages."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from review.i18n import LANGUAGES, MESSAGES
from tamsoat.core.db import Database
from tamsoat.core.tables import AuditEvent, Study
from tests.review.conftest import Web
from tests.review.seed import PASSWORD, csrf_of, login, seed_study

# The API's own description is public (it holds no patient data): /docs is Swagger UI served from local files.
PUBLIC = {("GET", "/login"), ("POST", "/login"), ("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/docs"),
          ("GET", "/docs/init.js")}


def _routes(web: Web, study: str) -> list[tuple[str, str]]:
    out = []
    routes = []
    for route in web.app.routes:
        included = getattr(route, "original_router", None)  # an included router (newer FastAPI)
        routes.extend(included.routes if included is not None else [route])
    for route in routes:
        if isinstance(route, Mount):
            continue  # /static: the pages' own JS and CSS, no data
        assert isinstance(route, APIRoute) or hasattr(route, "methods"), route
        path = route.path  # type: ignore[attr-defined]
        path = (path.replace("{study_uid}", study).replace("{study_instance_uid}", study)
                .replace("{finding_id}", "1").replace("{index}", "0").replace("{fmt}", "csv"))
        for method in sorted(route.methods - {"HEAD"}):  # type: ignore[attr-defined]
            out.append((method, path))
    return out


def test_every_route_refuses_an_anonymous_user(web: Web, client: TestClient) -> None:
    study = seed_study(web.db, web.spool, slices=24)
    checked = 0
    for method, path in _routes(web, study.uid):
        if (method, path) in PUBLIC:
            continue
        r = client.request(method, path, json={}, follow_redirects=False)
        if path.startswith("/api/"):
            assert r.status_code == 401, (method, path, r.status_code)
        elif r.status_code == 303:
            assert r.headers["location"].startswith("/login?next="), (method, path)
        else:
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated", (method, path, r.status_code)
        checked += 1
    assert checked >= 24  # 4 API routes + 20 web routes, all found by walking the app
    # A forged or stale cookie is the same as none.
    client.cookies.set("tamsoat_session", "forged.signature")
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.get(f"/studies/{study.uid}/slices/0").status_code == 401


def test_each_role_sees_only_what_it_may(web: Web, client: TestClient) -> None:
    study = seed_study(web.db, web.spool, slices=24)
    s = study.uid
    reads = ["/", f"/studies/{s}", f"/studies/{s}/state", f"/studies/{s}/slices/3"]
    admin_only = ["/admin/audit", "/admin/audit.csv", "/admin/audit.json"]
    monitoring = ["/monitoring", "/monitoring.json"]
    expect = {
        "lan": {**dict.fromkeys(reads, 200), **dict.fromkeys(admin_only, 403), **dict.fromkeys(monitoring, 403)},
        "admin": {**dict.fromkeys(reads, 200), **dict.fromkeys(admin_only, 200), **dict.fromkeys(monitoring, 200)},
        "res": {**dict.fromkeys(reads, 403), "/": 303, **dict.fromkeys(admin_only, 403),
                **dict.fromkeys(monitoring, 200)},
    }
    for name, table in expect.items():
        client.cookies.clear()
        csrf = login(client, name)
        for path, status in table.items():
            r = client.get(path, follow_redirects=False)
            assert r.status_code == status, (name, path, r.status_code)
        # Only a radiologist decides; only an admin breaks a claim.
        r = client.post(f"/studies/{s}/findings/{study.finding_ids[0]}/accept", headers={"X-CSRF-Token": csrf})
        assert r.status_code == (200 if name == "lan" else 403), (name, r.text)
        r = client.post(f"/studies/{s}/claim/break", headers={"X-CSRF-Token": csrf})
        assert r.status_code == (200 if name == "admin" else 403), (name, r.text)
    # Researchers see no patient data anywhere they may go.
    client.cookies.clear()
    login(client, "res")
    page = client.get("/monitoring").text
    assert "PHAM" not in page and "VN-0042" not in page and "lung-nodule-phantom" in page


def test_login_cookie_csrf_and_logout(web: Web, client: TestClient) -> None:
    page = client.get("/login")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    token = csrf_of(page.text)
    # Without the login form's token (a cross-site login attempt): refused.
    r = client.post("/login", data={"username": "lan", "password": PASSWORD, "csrf_token": "x"},
                    follow_redirects=False)
    assert r.status_code == 303 and "error=expired" in r.headers["location"]
    r = client.post("/login", data={"username": "lan", "password": "wrong", "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303 and "error=failed" in r.headers["location"]
    # An open redirect after login is not possible.
    r = client.post("/login", data={"username": "lan", "password": PASSWORD, "csrf_token": token,
                                    "next": "//evil.example/x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "tamsoat_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "Strict", "strict")
    home = client.get("/")
    csrf = csrf_of(home.text)
    # State-changing requests need the CSRF token and the same origin.
    assert client.post("/language", data={"language": "vi"}, follow_redirects=False).status_code == 403
    r = client.post("/language", data={"language": "vi", "csrf_token": csrf}, follow_redirects=False,
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post("/language", data={"language": "vi", "csrf_token": csrf, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303
    assert 'lang="vi"' in client.get("/").text
    # Logout ends the session on the server: the old cookie no longer works.
    old = client.cookies.get("tamsoat_session")
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    client.cookies.set("tamsoat_session", old or "")
    assert client.get("/", follow_redirects=False).status_code == 303
    with web.db.session() as s:
        actions = [e.action for e in s.query(AuditEvent).order_by(AuditEvent.id)]
    assert "login.failed" in actions and "login" in actions and "logout" in actions


def test_failed_logins_are_throttled(web: Web, client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    for _ in range(5):
        client.post("/login", data={"username": "binh", "password": "nope", "csrf_token": token},
                    follow_redirects=False)
    r = client.post("/login", data={"username": "binh", "password": PASSWORD, "csrf_token": token},
                    follow_redirects=False)
    assert "error=throttled" in r.headers["location"]


def test_dicom_text_is_escaped(web: Web, client: TestClient, db: Database) -> None:
    evil = "EVIL^<script>alert(1)</script>"
    study = seed_study(web.db, web.spool, slices=24, patient_name=evil, description='<img src=x onerror="alert(2)">')
    login(client, "lan")
    for path in ("/", f"/studies/{study.uid}"):
        html = client.get(path).text
        assert "<script>alert(1)</script>" not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    # In the viewer's JSON data block the name is a JSON string whose < > are escaped too.
    assert "\\u003cscript\\u003e" in client.get(f"/studies/{study.uid}").text or evil not in client.get(
        f"/studies/{study.uid}").text
    with db.session() as s:
        assert s.get(Study, study.uid).patient_name == evil  # stored as received


def test_every_message_in_both_languages_and_no_raw_text_in_templates() -> None:
    for key, entry in MESSAGES.items():
        assert set(entry) == set(LANGUAGES), key
        assert all(entry[lang].strip() for lang in LANGUAGES), key
        fields = {lang: set(re.findall(r"\{(\w+)\}", entry[lang])) for lang in LANGUAGES}
        assert fields["en"] == fields["vi"], key
    allowed = {"tamsoat", "mm", "Lung-RADS", "W", "L"}  # names and units, the same in both languages
    templates = Path(__file__).resolve().parents[2] / "review" / "templates"
    for path in templates.glob("*.html"):
        text = path.read_text()
        text = re.sub(r"\{% block main_class %\}.*?\{% endblock %\}", " ", text)  # a CSS class name
        text = re.sub(r"<kbd>.</kbd>", " ", text)  # key names: the same keys in both languages
        text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", " ", text, flags=re.S)
        text = re.sub(r"<script\b.*?</script>|<style\b.*?</style>", " ", text, flags=re.S)
        text = re.sub(r"<[^>]+>", " ", text)
        words = [w for w in re.findall(r"[^\W\d_][\w-]*", text) if w not in allowed]
        assert not words, f"{path.name}: untranslated text {words[:10]}"
    used = set()
    for path in templates.glob("*.html"):
        used |= set(re.findall(r't\("([\w.]+)"', path.read_text()))
    missing = {k for k in used if k not in MESSAGES and not k.endswith((".", "_"))}  # prefixes of built keys
    assert not missing, missing


def test_pages_in_vietnamese_and_english(web: Web, client: TestClient) -> None:
    seed_study(web.db, web.spool, slices=24)
    login(client, "admin")
    pages = ["/", "/monitoring", "/admin/audit"]
    english = {p: client.get(p).text for p in pages}
    csrf = csrf_of(english["/"])
    client.post("/language", data={"language": "vi", "csrf_token": csrf})
    vietnamese = {p: client.get(p).text for p in pages}
    assert "Danh sách ca chờ đọc" in vietnamese["/"] and "Worklist" in english["/"]
    assert "Theo dõi mô hình" in vietnamese["/monitoring"] and "Nhật ký truy cập" in vietnamese["/admin/audit"]
    for p in pages:
        assert english[p] != vietnamese[p]


def test_cli_adds_a_user_with_a_password_who_can_log_in(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tamsoat.app import create_app
    from tamsoat.cli import app as cli
    from tamsoat.core.settings import Settings

    home = tmp_path / "home"
    runner = CliRunner()
    r = runner.invoke(cli, ["users", "add", "thu", "--role", "radiologist", "--home", str(home), "--password-stdin",
                            "--display-name", "Vo^Thu"], input="a-long-password\n")
    assert r.exit_code == 0 and "web login" in r.output, r.output
    r = runner.invoke(cli, ["users", "add", "x", "--role", "admin", "--home", str(home), "--password-stdin"],
                      input="short\n")
    assert r.exit_code == 2
    settings = Settings(home=home)
    with TestClient(create_app(Database(settings.db_url), settings=settings)) as client:
        token = csrf_of(client.get("/login").text)
        r = client.post("/login", data={"username": "thu", "password": "a-long-password", "csrf_token": token},
                        follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "Vo Thu" in client.get("/").text
    assert (home / "web_secret.key").stat().st_mode & 0o077 == 0  # the cookie key is private to the service
