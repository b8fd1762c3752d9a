"""Desk staff login in the browser and through the API (gateway.desks.auth): password + TOTP,
session regeneration, idle timeout, forced password change, role decorators, bearer tokens."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.desks.auth import (
    _safe_next,
    api_staff_required,
    current_staff,
    staff_required,
)
from gateway.desks.models import StaffAccount
from gateway.desks.staff import LOGIN_FAILED_MESSAGE, change_password, create_staff

IDLE_MINUTES = 5
PER_IP_PER_HOUR = 10
NEW_PASSWORD = "lantern quietly orbit 42 pebbles"
COOKIE = "gw_session"


@dataclasses.dataclass
class Officer:
    username: str
    password: str
    secret: str

    def code(self) -> str:
        return str(pyotp.TOTP(self.secret).at(clock.now()))


@pytest.fixture
def desk_app(make_app: Callable[..., Flask], frozen_clock: None) -> Flask:
    app = make_app()
    policies = get_policies(app)
    staff_policy = policies.accounts.staff.model_copy(update={"idle_minutes": IDLE_MINUTES})
    lockout = policies.accounts.lockout.model_copy(update={"per_ip_per_hour": PER_IP_PER_HOUR})
    accounts = policies.accounts.model_copy(update={"staff": staff_policy, "lockout": lockout})
    # Shorter than the web session's own 15 minutes, so the desk's check is the one that acts.
    app.config["GATEWAY_POLICIES"] = dataclasses.replace(policies, accounts=accounts)

    # Routes for the role tests; added before the first request, as Flask requires.
    def whoami() -> str:
        return f"hello {current_staff().username}"

    app.add_url_rule("/desk/test/officer", "test_officer",
                     staff_required("officer", "supervisor")(whoami))
    app.add_url_rule("/desk/api/test/officer", "test_api_officer",
                     api_staff_required("officer", "supervisor")(whoami))
    return app


def _make(app: Flask, username: str, role: str = "officer", *, activated: bool = True) -> Officer:
    with app.app_context():
        session = get_db(app).sessionmaker()
        try:
            new = create_staff(session, get_settings(app), get_policies(app), desk="GB-LON",
                               username=username, role=role)
            secret = parse_qs(urlsplit(new.provisioning_uri).query)["secret"][0]
            password = new.one_time_password
            if activated:
                change_password(session, get_settings(app), get_policies(app), staff=new.staff,
                                current_password=password, new_password=NEW_PASSWORD)
                password = NEW_PASSWORD
        finally:
            session.close()
    return Officer(username, password, secret)


def _csrf(client: FlaskClient, path: str = "/desk/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _login(client: FlaskClient, officer: Officer, *, code: str | None = None,
           password: str | None = None, path: str = "/desk/login") -> TestResponse:
    token = _csrf(client, path)
    return client.post(path, data={
        "csrf_token": token, "username": officer.username,
        "password": officer.password if password is None else password,
        "code": officer.code() if code is None else code,
    })


def _next_step() -> None:
    # A TOTP code is accepted once: the next login needs the next time step.
    clock.advance(timedelta(seconds=30))


def _sid(client: FlaskClient) -> str | None:
    cookie = client.get_cookie(COOKIE)
    return cookie.value if cookie is not None else None


# --- the login page -----------------------------------------------------------------------


def test_login_form_uses_standard_autocomplete_tokens(desk_app: Flask) -> None:
    client = desk_app.test_client()
    page = client.get("/desk/login?lang=en").get_data(as_text=True)
    assert re.search(r'name="username"[^>]*autocomplete="username"', page)
    assert re.search(r'name="password"[^>]*type="password"[^>]*autocomplete="current-password"',
                     page)
    assert re.search(r'name="code"[^>]*autocomplete="one-time-code"[^>]*inputmode="numeric"', page)
    assert "Desk staff login" in page
    dutch = client.get("/desk/login?lang=nl").get_data(as_text=True)
    assert "Inloggen voor baliemedewerkers" in dutch
    response = client.get("/desk/login")
    assert response.headers["Cache-Control"] == "no-store"


def test_login_regenerates_the_session_and_remembers_the_staff(desk_app: Flask) -> None:
    officer = _make(desk_app, "a.officer")
    client = desk_app.test_client()
    token = _csrf(client)
    before = _sid(client)
    assert before is not None
    response = client.post("/desk/login", data={
        "csrf_token": token, "username": officer.username, "password": officer.password,
        "code": officer.code(),
    })
    assert response.status_code == 302
    assert response.headers["Location"] == "/desk/"
    after = _sid(client)
    assert after is not None and after != before

    home = client.get("/desk/?lang=en")
    assert home.status_code == 200
    assert "a.officer" in home.get_data(as_text=True)
    with client.session_transaction() as s:
        assert s["desk_role"] == "officer" and s["desk_desk"] == "GB-LON"
        assert s["desk_login_at"] == int(clock.now().timestamp())

    # The pre-login session id is worth nothing now.
    stale = desk_app.test_client()
    stale.set_cookie(COOKIE, before)
    assert stale.get("/desk/").status_code == 302


def test_every_login_failure_answers_the_same(desk_app: Flask) -> None:
    officer = _make(desk_app, "b.officer")
    client = desk_app.test_client()
    message = str(LOGIN_FAILED_MESSAGE)
    wrong_code = "000000" if officer.code() != "000000" else "111111"
    attempts = [
        ("nobody.at.all", officer.password, officer.code()),
        (officer.username, "not the password", officer.code()),
        (officer.username, officer.password, wrong_code),
        (officer.username, officer.password, "<script>x</script>"),
        ("' OR '1'='1", "' OR '1'='1", "' OR '1'='1"),
        (officer.username.upper(), "", ""),
        (officer.username, officer.password + " ", officer.code()),
    ]
    answers = set()
    for username, password, code in attempts:
        token = _csrf(client)
        response = client.post("/desk/login?lang=en", data={
            "csrf_token": token, "username": username, "password": password, "code": code,
        })
        page = response.get_data(as_text=True)
        assert message in page
        assert "<script>x" not in page
        answers.add(response.status_code)
        assert _sid(client) is not None
        with client.session_transaction() as s:
            assert "desk_staff_id" not in s
    assert answers == {200}
    # Blocked now (5 failures on the account): the right password and code get the same answer.
    token = _csrf(client)
    response = client.post("/desk/login?lang=en", data={
        "csrf_token": token, "username": officer.username, "password": officer.password,
        "code": officer.code(),
    })
    assert response.status_code == 200 and message in response.get_data(as_text=True)


def test_login_attempts_per_address_are_limited(desk_app: Flask) -> None:
    officer = _make(desk_app, "m.officer")
    client = desk_app.test_client()
    token = _csrf(client)
    for i in range(PER_IP_PER_HOUR):
        response = client.post("/desk/login", data={
            "csrf_token": token, "username": f"sprayed.{i}", "password": "Winter2024!",
            "code": "123456",
        })
        assert response.status_code == 200
    response = _login(client, officer)
    assert response.status_code == 429
    assert _api_login(client, officer).status_code == 429
    # (When the window ends is the shared store's fixed window: tests/test_store.py.)


def test_login_form_refuses_without_csrf(desk_app: Flask) -> None:
    officer = _make(desk_app, "c.officer")
    client = desk_app.test_client()
    response = client.post("/desk/login", data={
        "username": officer.username, "password": officer.password, "code": officer.code(),
    })
    assert response.status_code == 400


def test_first_login_forces_the_password_change(desk_app: Flask) -> None:
    officer = _make(desk_app, "d.officer", activated=False)
    client = desk_app.test_client()
    response = _login(client, officer)
    assert response.headers["Location"] == "/desk/password"
    assert client.get("/desk/").headers["Location"] == "/desk/password"
    assert client.get("/desk/test/officer").headers["Location"] == "/desk/password"

    page = client.get("/desk/password?lang=en").get_data(as_text=True)
    assert 'autocomplete="new-password"' in page
    token = _csrf(client, "/desk/password")
    refused = client.post("/desk/password?lang=en", data={
        "csrf_token": token, "current_password": officer.password,
        "new_password": officer.password, "confirm_password": officer.password,
    })
    assert refused.status_code == 200
    assert "differs from your current one" in refused.get_data(as_text=True)
    mismatch = client.post("/desk/password?lang=en", data={
        "csrf_token": token, "current_password": officer.password,
        "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD + "x",
    })
    assert "not the same" in mismatch.get_data(as_text=True)

    sid = _sid(client)
    done = client.post("/desk/password", data={
        "csrf_token": token, "current_password": officer.password,
        "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD,
    })
    assert done.status_code == 302 and done.headers["Location"].startswith("/desk/?")
    assert _sid(client) != sid
    assert client.get("/desk/").status_code == 200


def test_idle_timeout_ends_the_desk_session(desk_app: Flask) -> None:
    officer = _make(desk_app, "e.officer")
    client = desk_app.test_client()
    _login(client, officer)
    # Activity renews the idle time.
    for _ in range(3):
        clock.advance(timedelta(minutes=IDLE_MINUTES) - timedelta(seconds=5))
        assert client.get("/desk/").status_code == 200
    clock.advance(timedelta(minutes=IDLE_MINUTES, seconds=1))
    response = client.get("/desk/test/officer")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/desk/login"
    assert parse_qs(location.query) == {"notice": ["expired"], "next": ["/desk/test/officer"]}
    page = client.get(response.headers["Location"] + "&lang=en").get_data(as_text=True)
    assert "inactive for too long" in page
    assert client.get("/desk/").status_code == 302


def test_logout(desk_app: Flask) -> None:
    officer = _make(desk_app, "f.officer")
    client = desk_app.test_client()
    _login(client, officer)
    token = _csrf(client, "/desk/")
    assert client.post("/desk/logout").status_code == 400  # no CSRF token
    response = client.post("/desk/logout", data={"csrf_token": token})
    assert response.status_code == 302
    assert response.headers["Location"] == "/desk/login?notice=logged_out"
    assert client.get("/desk/").status_code == 302


def test_deactivation_ends_an_open_session(desk_app: Flask) -> None:
    officer = _make(desk_app, "g.officer")
    client = desk_app.test_client()
    _login(client, officer)
    assert client.get("/desk/").status_code == 200
    with get_db(desk_app).begin() as s:
        s.query(StaffAccount).filter_by(username="g.officer").update({"active": False})
    assert client.get("/desk/").status_code == 302


def test_roles_on_pages(desk_app: Flask) -> None:
    auditor = _make(desk_app, "h.auditor", role="auditor")
    officer = _make(desk_app, "h.officer", role="officer")
    anonymous = desk_app.test_client()
    response = anonymous.get("/desk/test/officer")
    assert response.status_code == 302
    assert response.headers["Location"] == "/desk/login?next=/desk/test/officer"

    client = desk_app.test_client()
    _login(client, auditor)
    assert client.get("/desk/test/officer").status_code == 403
    assert client.get("/desk/").status_code == 200  # any role

    client = desk_app.test_client()
    _next_step()
    response = _login(client, officer, path="/desk/login?next=/desk/test/officer")
    assert response.headers["Location"] == "/desk/test/officer"
    assert client.get("/desk/test/officer").get_data(as_text=True) == "hello h.officer"


@pytest.mark.parametrize("target", [
    "https://evil.example/desk/", "//evil.example/desk/", "/\\evil.example", "/desk/api/x",
    "/desk//evil", "javascript:alert(1)", "/desk/login", "/desk/\r\nLocation: x", "/other",
])
def test_next_never_leaves_the_desk(target: str) -> None:
    assert _safe_next(target) is None


# --- API ----------------------------------------------------------------------------------


def _api_login(client: FlaskClient, officer: Officer, **overrides: Any) -> TestResponse:
    body = {"username": officer.username, "password": officer.password, "totp": officer.code()}
    body.update(overrides)
    return client.post("/desk/api/session", json=body)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(response: TestResponse) -> None:
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert response.get_json()["status"] == 401


def test_api_token_issue_use_expiry_logout(desk_app: Flask) -> None:
    officer = _make(desk_app, "i.officer")
    client = desk_app.test_client()
    response = _api_login(client, officer)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["expires_in"] == IDLE_MINUTES * 60 and body["token_type"] == "Bearer"
    token = body["token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert client.get_cookie(COOKIE) is None  # no browser session for the API

    me = client.get("/desk/api/session", headers=_bearer(token))
    assert me.get_json() == {"username": "i.officer", "desk": "GB-LON", "role": "officer",
                             "expires_in": IDLE_MINUTES * 60}
    # Renewed on use.
    for _ in range(3):
        clock.advance(timedelta(minutes=IDLE_MINUTES) - timedelta(seconds=5))
        assert client.get("/desk/api/test/officer", headers=_bearer(token)).status_code == 200
    clock.advance(timedelta(minutes=IDLE_MINUTES, seconds=1))
    expired = client.get("/desk/api/session", headers=_bearer(token))
    _assert_401(expired)
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]

    _next_step()
    token = _api_login(client, officer).get_json()["token"]
    assert client.delete("/desk/api/session", headers=_bearer(token)).status_code == 204
    _assert_401(client.get("/desk/api/session", headers=_bearer(token)))


def test_api_refuses_missing_and_wrong_tokens(desk_app: Flask) -> None:
    officer = _make(desk_app, "j.officer")
    client = desk_app.test_client()
    token = _api_login(client, officer).get_json()["token"]
    missing = client.get("/desk/api/session")
    _assert_401(missing)
    assert "error=" not in missing.headers["WWW-Authenticate"]
    for header in [
        "Bearer " + "A" * 43,
        "Bearer " + token[:-1] + ("A" if token[-1] != "A" else "B"),
        "Bearer " + token + "x",
        "Bearer",
        "Basic " + token,
        token,
        "Bearer " + token + " extra",
        "Bearer ../../../etc/passwd",
        "Bearer " + "é" * 43,
        "Bearer " + "A" * 5000,
    ]:
        response = client.get("/desk/api/test/officer", headers={"Authorization": header})
        _assert_401(response)
    # The real token still works: bad attempts do not end it.
    assert client.get("/desk/api/session", headers=_bearer(token)).status_code == 200
    # A browser session is not an API credential, and no CSRF token is asked for.
    _next_step()
    _login(client, officer)
    _assert_401(client.get("/desk/api/session"))
    assert client.delete("/desk/api/session").status_code == 401


def test_api_roles(desk_app: Flask) -> None:
    auditor = _make(desk_app, "k.auditor", role="auditor")
    client = desk_app.test_client()
    token = _api_login(client, auditor).get_json()["token"]
    response = client.get("/desk/api/test/officer", headers=_bearer(token))
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 403


def test_api_login_failures(desk_app: Flask) -> None:
    officer = _make(desk_app, "l.officer")
    fresh = _make(desk_app, "l.fresh", activated=False)
    client = desk_app.test_client()
    wrong = _api_login(client, officer, password="not it")
    unknown = _api_login(client, officer, username="no.such.user")
    for response in (wrong, unknown):
        _assert_401(response)
    assert wrong.get_json()["detail"] == unknown.get_json()["detail"]

    for body in [None, [], {"username": officer.username}, {"username": 1, "password": 2,
                                                            "totp": 3}, "x" * 1000]:
        response = client.post("/desk/api/session", json=body)
        assert response.status_code == 400
        assert response.mimetype == "application/problem+json"
    not_json = client.post("/desk/api/session", data="username=x",
                           content_type="application/x-www-form-urlencoded")
    assert not_json.status_code == 400

    response = _api_login(client, fresh)
    assert response.status_code == 403  # the one-time password must be changed first
    assert "token" not in response.get_json()


def test_openapi_fragment_describes_the_session_endpoints() -> None:
    from gateway.desks.auth import openapi_fragment

    fragment = openapi_fragment()
    assert set(fragment["paths"]["/session"]) == {"post", "get", "delete"}
    assert fragment["paths"]["/session"]["post"]["security"] == []
    assert fragment["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
