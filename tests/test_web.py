"""The web base: headers, CSRF, sessions, error pages, languages, request ids, health, metrics."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, abort, render_template_string, request, session
from flask.testing import FlaskClient
from werkzeug.exceptions import TooManyRequests

from gateway import clock, metrics
from gateway.settings import Settings
from gateway.store import DatabaseStore, RedisStore, get_store
from gateway.web import (
    IDLE_TIMEOUT,
    MAX_CONTENT_LENGTH,
    RENEW_AFTER,
    allow_form_action,
    csrf_exempt,
    no_store,
    regenerate_session,
    request_id,
)
from gateway.web.logs import JsonFormatter

from .conftest import TEST_REDIS

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM_PAGE = """{% import "_forms.html" as forms %}<!doctype html><html><body>
{% call forms.form(action="/t/form") %}{{ forms.submit("Go") }}{% endcall %}</body></html>"""


def add_test_routes(app: Flask) -> None:
    @app.route("/t/form", methods=["GET", "POST", "PUT", "DELETE"])
    def t_form() -> str:
        if request.method == "GET":
            return render_template_string(FORM_PAGE)
        return "accepted"

    @app.post("/t/exempt")
    @csrf_exempt
    def t_exempt() -> str:
        return "exempt:" + str(len(request.get_data()))

    api = Blueprint("t_api", __name__)

    @api.post("/t/api/thing")
    def t_api() -> str:
        return "api"

    app.register_blueprint(csrf_exempt(api))

    @app.get("/t/set")
    def t_set() -> str:
        session["who"] = request.args.get("v", "x")
        return "set"

    @app.get("/t/read")
    def t_read() -> str:
        return str(session.get("who"))

    @app.get("/t/login")
    def t_login() -> str:
        regenerate_session()
        session["logged_in"] = True
        return "in"

    @app.get("/t/logout")
    def t_logout() -> str:
        session.clear()
        return "out"

    @app.get("/t/nostore")
    @no_store
    def t_nostore() -> str:
        return "secret page"

    @app.get("/t/post-to-sp")
    def t_post_to_sp() -> str:
        allow_form_action("https://sp.example.org:8443/acs?x=1")
        return "ok"

    @app.get("/t/boom")
    def t_boom() -> str:
        raise RuntimeError("boom with personal data 123456782")

    @app.get("/t/rid")
    def t_rid() -> str:
        return request_id() or ""

    @app.get("/t/abort/<int:code>")
    def t_abort(code: int) -> str:
        if code == 429:
            raise TooManyRequests(retry_after=30)
        abort(code)


@pytest.fixture
def web(make_app: Callable[..., Flask]) -> Flask:
    app = make_app()
    add_test_routes(app)
    return app


@pytest.fixture
def wc(web: Flask) -> FlaskClient:
    return web.test_client()


def csrf_from(client: FlaskClient) -> str:
    match = TOKEN.search(client.get("/t/form").get_data(as_text=True))
    assert match is not None
    return match.group(1)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/healthz", "/nope", "/t/form"])
def test_security_headers_on_every_response(wc: FlaskClient, path: str) -> None:
    response = wc.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert directives["base-uri"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "camera=()" in response.headers["Permissions-Policy"]
    assert "Strict-Transport-Security" not in response.headers


def test_hsts_only_on_https(make_app: Callable[..., Flask]) -> None:
    app = make_app(issuer="https://login.example.nl")
    response = app.test_client().get("/", base_url="https://login.example.nl")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_one_view_can_widen_form_action_safely(wc: FlaskClient, web: Flask) -> None:
    csp = wc.get("/t/post-to-sp").headers["Content-Security-Policy"]
    assert "form-action 'self' https://sp.example.org:8443;" in csp
    assert "form-action 'self';" in wc.get("/").headers["Content-Security-Policy"]
    with web.test_request_context("/"):
        for hostile in [
            "https://x.example; script-src *",
            "javascript:alert(1)",
            "https://user:pw@x.example/",
            "data:text/html,hi",
            "https://x.example'",
        ]:
            with pytest.raises(ValueError):
                allow_form_action(hostile)


def test_no_store_for_marked_views_and_pages_with_forms(wc: FlaskClient) -> None:
    assert wc.get("/t/nostore").headers["Cache-Control"] == "no-store"
    assert wc.get("/t/form").headers["Cache-Control"] == "no-store"
    assert "no-store" not in wc.get("/").headers.get("Cache-Control", "")


# --- CSRF ---------------------------------------------------------------------------------


def test_csrf_refuses_missing_and_wrong_tokens_and_accepts_the_right_one(wc: FlaskClient) -> None:
    token = csrf_from(wc)
    missing = wc.post("/t/form", data={})
    assert missing.status_code == 400
    page = missing.get_data(as_text=True)
    assert "Dit formulier is verlopen" in page and "Traceback" not in page
    other = wc.application.test_client()
    for bad in [
        csrf_from(other),  # valid, but another session's
        "A" * 86,
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "not base64 at all ✓",
        "x" * 5000,
        "",
    ]:
        assert wc.post("/t/form", data={"csrf_token": bad}).status_code == 400, bad
    assert wc.post("/t/form", data={"csrf_token": token}).get_data(as_text=True) == "accepted"
    assert wc.post("/t/form", headers={"X-CSRF-Token": token}).status_code == 200
    assert wc.put("/t/form", data={"csrf_token": token}).status_code == 200
    assert wc.delete("/t/form").status_code == 400
    # Tokens are masked: each render differs, and each one works.
    second = csrf_from(wc)
    assert second != token
    assert wc.post("/t/form", data={"csrf_token": second}).status_code == 200


def test_csrf_page_in_english_and_problem_json_for_apis(wc: FlaskClient) -> None:
    page = wc.post("/t/form?lang=en").get_data(as_text=True)
    assert "This form has expired" in page
    problem = wc.post("/t/form", headers={"Accept": "application/json"})
    assert problem.status_code == 400
    assert problem.mimetype == "application/problem+json"
    assert problem.get_json()["status"] == 400


def test_exempt_views_and_blueprints_need_no_token(wc: FlaskClient) -> None:
    assert wc.post("/t/exempt", data="abc").get_data(as_text=True) == "exempt:3"
    assert wc.post("/t/api/thing").get_data(as_text=True) == "api"


# --- sessions -----------------------------------------------------------------------------


class SpyStore:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.inner, name)


def test_requests_that_never_touch_the_session_never_touch_the_store(
    web: Flask, wc: FlaskClient
) -> None:
    spy = SpyStore(get_store(web))
    web.extensions["gateway.store"] = spy
    for path in ["/", "/healthz", "/nope", "/static/gateway.css", "/t/read"]:
        response = wc.get(path)
        assert "gw_session" not in response.headers.get("Set-Cookie", "")
    # /t/read looked, found nothing (no cookie): no read, no write.
    assert spy.calls == []
    wc.post("/t/form", data={"csrf_token": "x"})  # a bot posting without a session
    assert "set" not in spy.calls


def test_session_cookie_holds_only_an_id_with_safe_flags(wc: FlaskClient) -> None:
    response = wc.get("/t/set?v=alice")
    header = response.headers["Set-Cookie"]
    assert header.startswith("gw_session=")
    value = header.split(";", 1)[0].split("=", 1)[1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)
    assert "alice" not in header
    flags = [f.strip().lower() for f in header.split(";")[1:]]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags
    assert response.headers["Cache-Control"] == "no-store"
    assert wc.get("/t/read").get_data(as_text=True) == "alice"


def test_session_cookie_on_https_is_secure_host_prefixed(make_app: Callable[..., Flask]) -> None:
    app = make_app(issuer="https://login.example.nl")
    add_test_routes(app)
    client = app.test_client()
    header = client.get("/t/set", base_url="https://login.example.nl").headers["Set-Cookie"]
    assert header.startswith("__Host-gw_session=")
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header
    assert "Domain" not in header


def test_a_client_chosen_session_id_is_never_adopted(wc: FlaskClient) -> None:
    planted = "A" * 43
    wc.set_cookie("gw_session", planted)
    header = wc.get("/t/set").headers["Set-Cookie"]
    assert planted not in header
    for junk in ["../../etc", "x" * 4000, "é" * 43]:
        wc.set_cookie("gw_session", junk)
        assert wc.get("/t/read").get_data(as_text=True) == "None"


def test_regenerate_gives_a_new_id_and_kills_the_old_one(wc: FlaskClient, web: Flask) -> None:
    wc.get("/t/set?v=bob")
    old = wc.get_cookie("gw_session")
    assert old is not None
    old_id = old.value
    token = csrf_from(wc)
    wc.get("/t/login")
    new = wc.get_cookie("gw_session")
    assert new is not None and new.value != old_id
    assert wc.get("/t/read").get_data(as_text=True) == "bob"  # the data moved along
    # The CSRF secret was renewed with the id: the pre-login token no longer works.
    assert wc.post("/t/form", data={"csrf_token": token}).status_code == 400
    thief = web.test_client()
    thief.set_cookie("gw_session", old_id)
    assert thief.get("/t/read").get_data(as_text=True) == "None"


def test_clearing_the_session_deletes_it(wc: FlaskClient, web: Flask) -> None:
    wc.get("/t/set?v=carol")
    sid = wc.get_cookie("gw_session")
    assert sid is not None
    response = wc.get("/t/logout")
    assert "gw_session=;" in response.headers["Set-Cookie"]
    replay = web.test_client()
    replay.set_cookie("gw_session", sid.value)
    assert replay.get("/t/read").get_data(as_text=True) == "None"


def test_idle_sessions_expire_and_use_renews_them(
    make_app: Callable[..., Flask], frozen_clock: None
) -> None:
    app = make_app(redis_url=None)  # the database store follows the frozen clock
    add_test_routes(app)
    client = app.test_client()
    client.get("/t/set?v=dave")
    for _ in range(3):
        clock.advance(IDLE_TIMEOUT - timedelta(minutes=1))
        assert client.get("/t/read").get_data(as_text=True) == "dave"
    clock.advance(IDLE_TIMEOUT + timedelta(seconds=1))
    assert client.get("/t/read").get_data(as_text=True) == "None"


def test_an_unchanged_session_is_written_back_at_most_once_a_minute(
    make_app: Callable[..., Flask], frozen_clock: None
) -> None:
    """Reading an unchanged session renews its idle timeout only when the entry is older than
    RENEW_AFTER (a page view costs a store read, not a read and a write); a change, and a
    change made in place inside a value, is always written."""
    app = make_app(redis_url=None)
    add_test_routes(app)

    @app.get("/t/append")
    def t_append() -> str:
        session.setdefault("items", [])
        session["items"].append(1)  # in place: no __setitem__ on the session itself
        return "ok"

    spy = SpyStore(get_store(app))
    app.extensions["gateway.store"] = spy
    client = app.test_client()
    client.get("/t/set?v=erin")
    spy.calls.clear()
    assert client.get("/t/read").get_data(as_text=True) == "erin"
    assert client.get("/t/read").get_data(as_text=True) == "erin"
    assert "run" not in spy.calls and "set" not in spy.calls
    clock.advance(RENEW_AFTER + timedelta(seconds=1))
    client.get("/t/read")
    assert spy.calls.count("run") == 1  # renewed
    client.get("/t/append")
    client.get("/t/append")
    assert client.get("/t/read").get_data(as_text=True) == "erin"
    stored = get_store(app).get(app.session_interface.store_key(  # type: ignore[attr-defined]
        client.get_cookie("gw_session").value  # type: ignore[union-attr]
    ))
    assert stored is not None and b'"items":[1,1]' in stored


def test_regenerate_replaces_the_entry_in_one_store_step(web: Flask, wc: FlaskClient) -> None:
    wc.get("/t/set?v=fay")
    spy = SpyStore(get_store(web))
    web.extensions["gateway.store"] = spy
    wc.get("/t/login")
    # get (load), then one run: delete the old entry and write the new one.
    assert spy.calls == ["get", "run"]


def test_session_ttl_in_redis(web: Flask, wc: FlaskClient) -> None:
    store = get_store(web)
    if not isinstance(store, RedisStore):
        pytest.skip("GATEWAY_TEST_REDIS not set")
    wc.get("/t/set")
    keys = list(store.client.scan_iter(match=store.prefix + "session:*"))
    assert len(keys) == 1
    assert IDLE_TIMEOUT.total_seconds() * 1000 - 60_000 < store.client.pttl(keys[0])
    assert store.client.pttl(keys[0]) <= IDLE_TIMEOUT.total_seconds() * 1000


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "text404", "text405"),
    [("nl", "Pagina niet gevonden", "Actie niet toegestaan"),
     ("en", "Page not found", "Action not allowed")],
)
def test_404_and_405_pages_in_both_languages(
    wc: FlaskClient, lang: str, text404: str, text405: str
) -> None:
    r404 = wc.get(f"/no/such/page?lang={lang}")
    assert r404.status_code == 404
    body = r404.get_data(as_text=True)
    assert text404 in body and f'<html lang="{lang}">' in body
    assert "Traceback" not in body and "werkzeug" not in body.lower()
    r405 = wc.post(f"/healthz?lang={lang}")
    assert r405.status_code == 405
    assert text405 in r405.get_data(as_text=True)
    assert "GET" in r405.headers["Allow"]


@pytest.mark.parametrize(
    ("code", "dutch", "english"),
    [
        (400, "Verzoek niet verwerkt", "Bad request"),
        (403, "Geen toegang", "Access denied"),
        (429, "Te veel pogingen", "Too many attempts"),
        (503, "Dienst tijdelijk niet beschikbaar", "Service temporarily unavailable"),
    ],
)
def test_other_error_pages_in_both_languages(
    wc: FlaskClient, code: int, dutch: str, english: str
) -> None:
    nl = wc.get(f"/t/abort/{code}?lang=nl")
    en = wc.get(f"/t/abort/{code}?lang=en")
    assert nl.status_code == en.status_code == code
    assert dutch in nl.get_data(as_text=True) and english in en.get_data(as_text=True)
    if code == 429:
        assert nl.headers["Retry-After"] == "30"


def test_500_is_logged_with_the_request_id_and_shown_friendly(
    web: Flask, wc: FlaskClient
) -> None:
    web.config["PROPAGATE_EXCEPTIONS"] = False
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        response = wc.get("/t/boom?lang=en", headers={"X-Request-ID": "req-abcdef123456"})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "Something went wrong" in body and "req-abcdef123456" in body
    for leak in ["Traceback", "RuntimeError", "123456782"]:
        assert leak not in body
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None
    line = JsonFormatter().format(errors[0])
    entry = json.loads(line)
    assert entry["request_id"] == "req-abcdef123456"
    assert entry["exception"] == "RuntimeError"
    assert "123456782" not in line  # the message (which may hold personal data) is not logged


def test_problem_details_for_api_paths_and_json_clients(wc: FlaskClient) -> None:
    response = wc.get("/desk/api/nothing-here")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 404 and problem["title"] == "Not Found" and problem["type"]
    assert wc.get("/nope", headers={"Accept": "application/json"}).mimetype == (
        "application/problem+json"
    )
    assert wc.get("/nope", headers={"Accept": "text/html,*/*"}).mimetype == "text/html"


def test_huge_bodies_get_a_friendly_413(wc: FlaskClient) -> None:
    token = csrf_from(wc)
    big = "x" * (MAX_CONTENT_LENGTH + 1)
    response = wc.post("/t/form?lang=en", data={"csrf_token": token, "junk": big})
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True)
    api = wc.post("/t/exempt", data=big, headers={"Accept": "application/json"})
    assert api.status_code == 413 and api.mimetype == "application/problem+json"


def test_store_outage_fails_closed_with_503(make_app: Callable[..., Flask]) -> None:
    app = make_app(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production
    add_test_routes(app)
    client = app.test_client()
    response = client.get("/t/set?lang=en")  # fails when the session is saved
    assert response.status_code == 503
    assert "temporarily unavailable" in response.get_data(as_text=True)
    assert "gw_session" not in response.headers.get("Set-Cookie", "")
    client.set_cookie("gw_session", "B" * 43)
    assert client.get("/t/read").status_code == 503  # fails when the session is read


# --- languages ----------------------------------------------------------------------------


def test_language_from_query_cookie_accept_language_and_default(wc: FlaskClient) -> None:
    assert '<html lang="nl">' in wc.get("/").get_data(as_text=True)
    def lang(accept: str) -> str:
        page = wc.get("/", headers={"Accept-Language": accept}).get_data(as_text=True)
        found = re.search(r'<html lang="(\w+)">', page)
        assert found is not None
        return found.group(1)

    assert lang("en-GB,en;q=0.9") == "en"
    assert lang("de, nl;q=0.5") == "nl"
    assert lang("fr") == "nl"
    first = wc.get("/?lang=en")
    assert "gw_lang=en" in first.headers["Set-Cookie"]
    assert lang("nl") == "en"  # the remembered choice wins over the browser
    assert '<html lang="nl">' in wc.get("/?lang=nl").get_data(as_text=True)
    for hostile in ["xx", "en;", "<script>", "EN" * 100]:
        page = wc.application.test_client().get("/?lang=" + hostile)
        assert page.status_code == 200 and '<html lang="nl">' in page.get_data(as_text=True)
        assert "gw_lang" not in page.headers.get("Set-Cookie", "")


def test_base_layout_is_accessible(wc: FlaskClient) -> None:
    page = wc.get("/?lang=nl&next=a%26b").get_data(as_text=True)
    assert page.index('class="skip-link" href="#main"') < page.index("<header")
    for landmark in ["<header", '<main id="main"', "<footer", "<nav"]:
        assert landmark in page
    assert 'hreflang="en" lang="en"' in page
    # The switch keeps the rest of the query and escapes it.
    assert 'href="/?next=a%26b&amp;lang=en"' in page
    assert "<script>" not in page and "style=" not in page


def test_form_macros_link_hints_and_errors(web: Flask) -> None:
    source = """{% import "_forms.html" as forms %}
    {{ forms.error_summary({"phone": "Enter a phone number"}) }}
    {{ forms.input("phone", "Phone", value="<x>", hint="With country code",
                   error="Enter a phone number", autocomplete="tel", type="tel") }}
    {{ forms.input("password", "Password", value="s3cret", type="password",
                   autocomplete="current-password") }}"""
    with web.test_request_context("/"):
        html = render_template_string(source)
    assert '<a href="#phone">Enter a phone number</a>' in html
    assert 'aria-describedby="phone-hint phone-error"' in html
    assert 'aria-invalid="true"' in html and 'autocomplete="tel"' in html
    assert 'value="&lt;x&gt;"' in html
    assert "s3cret" not in html
    assert 'autocomplete="current-password"' in html
    assert html.count('aria-invalid="true"') == 1


# --- request ids and logs -----------------------------------------------------------------


def test_request_ids_are_accepted_only_when_well_formed(wc: FlaskClient) -> None:
    good = "0f8e2a9c-4f1e-4c7b-9b1d-0c2d3e4f5a6b"
    response = wc.get("/t/rid", headers={"X-Request-ID": good})
    assert response.get_data(as_text=True) == good == response.headers["X-Request-ID"]
    hostile = ["short", "x" * 65, "abc def ghi jkl", "id\twith-tab-1234", "<script>x</script>",
               "-leadingdash123"]
    for bad in hostile:
        rid = wc.get("/t/rid", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)


def test_request_log_is_json_without_query_or_personal_data(wc: FlaskClient) -> None:
    lines: list[str] = []
    handler = logging.Handler()
    formatter = JsonFormatter()
    handler.emit = lambda record: lines.append(formatter.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        wc.get("/t/set?v=secret-name", environ_base={"REMOTE_ADDR": "203.0.113.7"})
        wc.get("/no/such/0612345678?code=999999")
    finally:
        logger.removeHandler(handler)
    entries = [json.loads(line) for line in lines if '"request"' in line]
    assert len(entries) == 2
    first, second = entries
    assert first["endpoint"] == "t_set" and first["route"] == "/t/set" and first["status"] == 200
    assert first["method"] == "GET" and isinstance(first["duration_ms"], float)
    assert first["request_id"] and first["time"].endswith("+00:00")
    assert second["endpoint"] == "unmatched" and second["route"] is None
    text = "\n".join(lines)
    for leak in ["secret-name", "203.0.113.7", "0612345678", "999999", "?"]:
        assert leak not in text


# --- health and metrics -------------------------------------------------------------------


def test_healthz_and_readyz(wc: FlaskClient) -> None:
    assert wc.get("/healthz").get_json() == {"status": "ok"}
    ready = wc.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"


def test_readyz_names_redis_when_it_is_down(make_app: Callable[..., Flask]) -> None:
    port = closed_port()
    app = make_app(redis_url=f"redis://:pw-secret@127.0.0.1:{port}/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "failed": ["redis"]}
    assert "pw-secret" not in response.get_data(as_text=True)
    assert str(port) not in response.get_data(as_text=True)


def test_metrics_text_format_counts_endpoints_not_paths(wc: FlaskClient) -> None:
    wc.get("/healthz")
    wc.get("/no/such/0612345678")
    response = wc.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert "# TYPE http_requests_total counter" in text
    sample = r'http_requests_total\{endpoint="web.healthz",method="GET",status="200"\} [1-9]'
    assert re.search(sample, text)
    assert 'endpoint="unmatched"' in text
    assert "0612345678" not in text


METRICS_TOKEN = "m" * 20 + "-token-for-the-scraper_0123"


def test_metrics_with_a_token_answer_only_that_bearer(make_app: Callable[..., Flask]) -> None:
    for env in ("dev", "production"):
        client = make_app(env=env, metrics_token=METRICS_TOKEN).test_client()
        for headers in (
            {}, {"Authorization": "Bearer " + METRICS_TOKEN[:-1]},
            {"Authorization": "Basic " + METRICS_TOKEN},
            {"Authorization": "Bearer " + METRICS_TOKEN + "x"}, {"Authorization": "Bearer"},
            {"Authorization": "Bearer \u00e9" + METRICS_TOKEN},
        ):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
            assert "http_requests_total" not in refused.get_data(as_text=True)
        allowed = client.get("/metrics", headers={"Authorization": "bearer " + METRICS_TOKEN})
        assert allowed.status_code == 200
        assert "# TYPE http_requests_total counter" in allowed.get_data(as_text=True)


def test_metrics_without_a_token_are_absent_in_production(
    make_app: Callable[..., Flask],
) -> None:
    answer = make_app(env="production").test_client().get("/metrics")
    assert answer.status_code == 404
    assert "http_requests_total" not in answer.get_data(as_text=True)


@pytest.mark.parametrize("token", ["short", "x" * 31, "a" * 40 + " b", "é" * 40])
def test_a_weak_or_malformed_metrics_token_stops_start_up(tmp_path: Path, token: str) -> None:
    from gateway.settings import SettingsError

    with pytest.raises(SettingsError, match="GATEWAY_METRICS_TOKEN"):
        Settings.from_env({"GATEWAY_INSTANCE_DIR": str(tmp_path), "GATEWAY_METRICS_TOKEN": token})
    settings = Settings.from_env({"GATEWAY_INSTANCE_DIR": str(tmp_path),
                                  "GATEWAY_METRICS_TOKEN": METRICS_TOKEN})
    assert settings.metrics_token == METRICS_TOKEN
    assert METRICS_TOKEN not in repr(settings)


def test_metrics_declarations_guard_labels_and_repeat_safely() -> None:
    first = metrics.counter("test_things_total", "Things.", ("outcome",))
    assert metrics.counter("test_things_total", "Things.", ("outcome",)) is first
    with pytest.raises(ValueError):
        metrics.counter("test_things_total", "Things.", ("other",))
    for personal in ["bsn", "phone", "Email", "ip", "path"]:
        with pytest.raises(ValueError):
            metrics.counter(f"test_bad_{personal.lower()}_total", "Bad.", (personal,))
    first.labels(outcome="ok").inc()
    body, _ = metrics.render()
    assert b'test_things_total{outcome="ok"}' in body


def test_store_in_use_matches_the_backend(web: Flask) -> None:
    expected = RedisStore if TEST_REDIS else DatabaseStore
    assert isinstance(get_store(web), expected)


def test_request_values_answer_a_missing_key_without_building_an_exception(
    app: Flask, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from werkzeug import exceptions

    def built(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a BadRequestKeyError was built for a missing key")

    with app.test_request_context(
        "/?a=1&a=2&n=x", method="POST", data={"f": "v"}, headers={"Cookie": "c=1"},
    ):
        monkeypatch.setattr(exceptions.BadRequestKeyError, "__init__", built)
        assert request.args.get("missing") is None
        assert request.args.get("missing", "d") == "d"
        assert request.args.get("a") == "1" and request.args.getlist("a") == ["1", "2"]
        assert request.args.get("a", type=int) == 1
        assert request.args.get("n", 7, type=int) == 7  # werkzeug: a failed conversion
        assert request.form.get("f") == "v" and request.form.get("g", "") == ""
        assert request.cookies.get("c") == "1" and request.cookies.get("other") is None
        monkeypatch.undo()
        with pytest.raises(KeyError):
            request.args["missing"]  # indexing still raises as werkzeug's does
