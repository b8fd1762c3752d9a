"""The OIDC provider's fast paths (issue 6, "Performance") keep every rule of the slow ones.

- Single sign-on without a flow (`gateway.flows.login.reuse_at_once`): the authorization
  endpoint answers a browser whose SSO session vouches for the request at once, with the same
  ID token the flow would give, the session's use and the usage history recorded; anything
  the flow would have to decide (a stale or ended session, a blocked account, prompt=login,
  max_age, a higher level) still goes through the flow.
- The client registry cache (`gateway.idp.oidc.clients.ClientCache`): a change in this
  process is seen at once, a change made by another process within REGISTRY_CHECK_SECONDS.
- The pool pings a connection that sat idle (PostgreSQL only): a connection the server closed
  meanwhile is replaced instead of failing the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway import clock
from gateway.accounts.history import AccountEvent
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.db import get_db
from gateway.flows.login import LoginFlow
from gateway.flows.sessions import SsoSession
from gateway.idp.oidc import clients as registry
from gateway.idp.oidc import views
from gateway.levels import Level
from tests.conftest import TEST_DB
from tests.oidc_helpers import RP, add_client, authorize, exchange, pkce, query
from tests.test_login_flow import PASSWORD, make_account, post_form


def _to_rp(web: Any, response: Any) -> dict[str, str]:
    while response.status_code in (302, 303) and not response.location.startswith(RP):
        response = web.get(response.location)
    assert response.status_code == 303 and response.location.startswith(RP), response.status_code
    return query(response.location)


def _claims(web: Any, id_token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(web.get("/oidc/jwks").get_json())
    return dict(jwt.decode(id_token, keys, algorithms=["RS256"]).claims)


def _count(app: Flask, model: Any) -> int:
    with app.app_context(), get_db(app).begin() as db:
        return int(db.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


def _logged_in(app: Flask) -> tuple[Any, str, str]:
    """A browser logged in at basis (through the password page); returns it, the client
    secret and the account id."""
    web = app.test_client()
    account_id = make_account(app)
    _client, secret = add_client(app)
    assert secret
    verifier, challenge = pkce()
    page = web.get(authorize(web, challenge=challenge).location)
    response = post_form(web, page, "/password", {"username": "jan.jansen",
                                                  "password": PASSWORD}, follow=False)
    body = exchange(web, _to_rp(web, response)["code"], verifier, secret=secret)
    assert body.status_code == 200
    return web, secret, account_id


def _sso(app: Flask) -> SsoSession:
    with app.app_context(), get_db(app).begin() as db:
        row = db.scalars(sa.select(SsoSession).where(SsoSession.ended_at.is_(None))).one()
        db.expunge(row)
        return row


def test_sso_reuse_answers_at_once_like_the_flow(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    web, secret, account_id = _logged_in(app)
    flows_before = _count(app, LoginFlow)
    events_before = _count(app, AccountEvent)
    seen_before = _sso(app).last_seen_at

    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge)
    # No hop through /login: the answer goes to the relying party at once.
    assert response.status_code == 303 and response.location.startswith(RP)
    args = query(response.location)
    assert args["state"] == "st-1" and args["iss"] == get_settings(app).issuer
    fast = _claims(web, exchange(web, args["code"], verifier, secret=secret)
                   .get_json()["id_token"])
    assert _count(app, LoginFlow) == flows_before
    # The session's use and the owner's history are recorded as the flow records them.
    row = _sso(app)
    assert row.last_seen_at > seen_before and json.loads(row.rps) == ["rp1"]
    with app.app_context(), get_db(app).begin() as db:
        event = db.scalars(sa.select(AccountEvent).order_by(AccountEvent.at.desc())).first()
        assert event is not None
        assert (event.account_id, event.kind, event.service, event.level, event.route) == (
            account_id, "login", "rp1", "basis", "sso")
    assert _count(app, AccountEvent) == events_before + 1

    # The same request through the flow (fast path off) gives the same ID token.
    monkeypatch.setattr(views, "reuse_sso", lambda _request: None)
    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge)
    assert "/login/" in response.location
    args = _to_rp(web, response)
    slow = _claims(web, exchange(web, args["code"], verifier, secret=secret)
                   .get_json()["id_token"])
    for claim in ("iss", "sub", "aud", "acr", "amr", "auth_time", "sid", "nonce"):
        assert fast[claim] == slow[claim], claim
    assert _count(app, LoginFlow) == flows_before + 1


@pytest.mark.parametrize(
    "params",
    [
        {"prompt": "login"},  # force_authn
        {"max_age": "0"},  # the login is older than that
        {"acr_values": Level.MIDDEN.context_class},  # step-up: a code by SMS is needed
    ],
)
def test_requests_the_session_cannot_answer_go_through_the_flow(
    app: Flask, params: dict[str, str]
) -> None:
    web, _secret, _account = _logged_in(app)
    with clock.frozen(clock.now() + timedelta(seconds=2)):
        response = authorize(web, challenge=pkce()[1], **params)
    assert response.status_code == 303 and "/login/" in response.location


def test_idle_session_is_not_reused(app: Flask) -> None:
    web, _secret, _account = _logged_in(app)
    with app.app_context(), get_db(app).begin() as db:
        db.execute(sa.update(SsoSession).values(
            last_seen_at=clock.now() - timedelta(hours=1)))
    response = authorize(web, challenge=pkce()[1])
    assert response.status_code == 303 and "/login/" in response.location
    # ... and the flow ends it, so a passive request is refused.
    page = web.get(response.location)
    assert page.status_code == 200
    assert _sso_count_open(app) == 0
    assert _to_rp(web, authorize(web, challenge=pkce()[1], prompt="none"))["error"] == (
        "login_required")


@pytest.mark.parametrize(
    ("column", "age", "reused"),
    [
        ("last_seen_at", timedelta(minutes=15) - timedelta(seconds=1), True),
        ("last_seen_at", timedelta(minutes=15), False),  # idle: expiry_reason's >=
        ("created_at", timedelta(hours=12) - timedelta(seconds=1), True),
        ("created_at", timedelta(hours=12), False),  # absolute limit
    ],
)
def test_the_session_limits_hold_to_the_second(
    app: Flask, column: str, age: timedelta, reused: bool
) -> None:
    web, _secret, _account = _logged_in(app)
    now = clock.now()
    with app.app_context(), get_db(app).begin() as db:
        db.execute(sa.update(SsoSession).values({column: now - age}))
    with clock.frozen(now):
        response = authorize(web, challenge=pkce()[1])
    assert response.status_code == 303
    assert response.location.startswith(RP) is reused
    if not reused:  # the fast path left it as it was; the flow ends it
        assert _sso(app).last_seen_at <= now - (age if column == "last_seen_at" else
                                                timedelta(0))


def test_blocked_account_is_not_reused(app: Flask) -> None:
    web, _secret, account_id = _logged_in(app)
    with app.app_context(), get_db(app).begin() as db:
        db.execute(sa.update(Account).where(Account.id == account_id).values(
            blocked_until=clock.now() + timedelta(hours=1)))
    response = authorize(web, challenge=pkce()[1], prompt="none")
    assert _to_rp(web, response)["error"] == "login_required"


def test_ended_session_is_not_reused(app: Flask) -> None:
    web, _secret, _account = _logged_in(app)
    with app.app_context(), get_db(app).begin() as db:
        db.execute(sa.update(SsoSession).values(ended_at=clock.now(), end_reason="logout"))
    response = authorize(web, challenge=pkce()[1], prompt="none")
    assert _to_rp(web, response)["error"] == "login_required"


def _sso_count_open(app: Flask) -> int:
    with app.app_context(), get_db(app).begin() as db:
        return int(db.scalar(sa.select(sa.func.count()).select_from(SsoSession)
                             .where(SsoSession.ended_at.is_(None))) or 0)


# --- the client cache -----------------------------------------------------------------------


def _lookup(app: Flask, client_id: str) -> registry.Client | None:
    with app.app_context(), get_db(app).begin() as db:
        return registry.get_client(db, get_settings(app), client_id)


def test_cached_clients_need_no_query(app: Flask) -> None:
    add_client(app)
    assert _lookup(app, "rp1") is not None
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    engine = get_db(app).engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert _lookup(app, "rp1") is not None
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert not [s for s in statements if "oidc_clients" in s]


def test_changes_in_this_process_are_seen_at_once(app: Flask) -> None:
    add_client(app)
    assert _lookup(app, "rp1") is not None
    with app.app_context(), get_db(app).begin() as db:
        assert registry.remove_client(db, "rp1")
    assert _lookup(app, "rp1") is None
    add_client(app, redirect_uris=("https://rp.example.nl/other",))
    found = _lookup(app, "rp1")
    assert found is not None and found.redirect_uris == ("https://rp.example.nl/other",)


def test_changes_in_another_process_are_seen_within_the_check_interval(
    make_app: Callable[..., Flask],
) -> None:
    worker = make_app()
    operator = make_app()  # another process: the same database and shared store
    add_client(worker)
    assert _lookup(worker, "rp1") is not None
    now = [1000.0]
    cache = worker.extensions[registry.CACHE_KEY]
    cache.monotonic = lambda: now[0]
    cache.clear()
    assert _lookup(worker, "rp1") is not None  # cached, version read at t=1000
    with operator.app_context(), get_db(operator).begin() as db:
        assert registry.remove_client(db, "rp1")
    now[0] += registry.REGISTRY_CHECK_SECONDS / 2
    assert _lookup(worker, "rp1") is not None  # within the bound: still the cached copy
    now[0] += registry.REGISTRY_CHECK_SECONDS
    assert _lookup(worker, "rp1") is None


# --- the pool ping --------------------------------------------------------------------------


@pytest.mark.skipif(TEST_DB != "postgresql", reason="SQLite has no server to lose")
def test_idle_connection_closed_by_the_server_is_replaced(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import db as database

    engine = database.make_engine(get_db(app).url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with get_db(app).engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        monkeypatch.setattr(database, "POOL_PING_IDLE_SECONDS", 0.0)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


# --- the token endpoint's plain case ------------------------------------------------------


def _fresh_code(web: Any) -> tuple[str, str]:
    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge)
    assert response.location.startswith(RP)
    return query(response.location)["code"], verifier


def _answers(
    web: Any, secret: str, monkeypatch: pytest.MonkeyPatch, case: Callable[[str, str], Any]
) -> list[tuple[int, Any, str | None]]:
    """The same request answered by the plain path and by authlib (plain path off)."""
    from gateway.idp.oidc import provider

    taken: list[bool] = []
    plain = provider.plain_code_exchange

    def spy(server: Any) -> Any:
        answer = plain(server)
        taken.append(answer is not None)
        return answer

    out = []
    for replacement in (spy, lambda _server: None):
        monkeypatch.setattr(provider, "plain_code_exchange", replacement)
        code, verifier = _fresh_code(web)
        response = case(code, verifier)
        body = response.get_json()
        if response.status_code == 200:
            body = sorted(body)  # fresh tokens: compare the members only
        out.append((response.status_code, body, response.headers.get("Cache-Control")))
        # Whatever the answer, the code is spent now.
        retry = exchange(web, code, verifier, secret=secret)
        assert retry.status_code == 400 and retry.get_json()["error"] == "invalid_grant"
    # The first request went the plain way; the retry of a spent code was left to authlib.
    assert taken == [True, False]
    return out


@pytest.mark.parametrize("case", ["ok", "redirect_uri", "verifier", "short_verifier"])
def test_plain_exchange_answers_as_authlib(
    app: Flask, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    web, secret, _account = _logged_in(app)

    def request(code: str, verifier: str) -> Any:
        if case == "redirect_uri":
            return exchange(web, code, verifier, secret=secret,
                            extra={"redirect_uri": RP + "/"})
        if case == "verifier":
            return exchange(web, code, pkce()[0], secret=secret)
        if case == "short_verifier":
            return exchange(web, code, "x" * 42, secret=secret)
        return exchange(web, code, verifier, secret=secret)

    plain, generic = _answers(web, secret, monkeypatch, request)
    assert plain == generic
    assert plain[0] == (200 if case == "ok" else 400)


def test_plain_exchange_leaves_other_requests_to_authlib(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.idp.oidc import provider

    web, secret, _account = _logged_in(app)
    answered: list[Any] = []
    plain = provider.plain_code_exchange
    monkeypatch.setattr(provider, "plain_code_exchange",
                        lambda server: answered.append(plain(server)) or answered[-1])
    code, verifier = _fresh_code(web)
    wrong = exchange(web, code, verifier, secret=secret + "x")
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"
    # The code was not spent by a request whose client did not authenticate.
    assert exchange(web, code, verifier, secret=secret).status_code == 200
    code, verifier = _fresh_code(web)
    posted = exchange(web, code, verifier, secret=secret, post_secret=True)
    assert posted.status_code == 401  # client_secret_post for a client_secret_basic client
    code, verifier = _fresh_code(web)
    extra = exchange(web, code, verifier, secret=secret, extra={"scope": "openid"})
    assert extra.status_code == 200
    assert answered[0] is None and answered[1] is not None
    assert answered[2] is None and answered[3] is None


_GOOD_AUTHZ = {
    "response_type": "code", "client_id": "rp1", "redirect_uri": RP, "scope": "openid",
    "state": "st", "nonce": "n", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    "code_challenge_method": "S256",
}


@pytest.mark.parametrize("change", [
    {}, {"scope": None}, {"state": None}, {"response_type": "token"},
    {"response_type": "code id_token"}, {"client_id": None}, {"client_id": "nobody"},
    {"client_id": "rp1 "}, {"redirect_uri": None}, {"redirect_uri": RP + "/"},
    {"redirect_uri": "https://attacker.example/cb"}, {"code_challenge": None},
    {"code_challenge_method": None}, {"code_challenge_method": "plain"},
    {"code_challenge": "short"}, {"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c="},
    {"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM" + "x"},
    {"twice": "state"}, {"twice": "client_id"}, {"twice": "code_challenge"},
    {"twice": "code_challenge_method"}, {"twice": "nonce"}, {"method": "POST"},
])
def test_plain_authorization_request_accepts_only_what_authlib_accepts(
    app: Flask, change: dict[str, str | None]
) -> None:
    """`provider.plain_authorization_request` answers the everyday request itself, and only
    with the client and redirect URI authlib's `get_consent_grant` gives for it; anything
    else is left to authlib (None)."""
    from authlib.oauth2.rfc6749 import OAuth2Error
    from werkzeug.datastructures import MultiDict

    from gateway.idp.oidc import provider

    add_client(app)
    params: list[tuple[str, str]] = []
    for key, value in {**_GOOD_AUTHZ, **change}.items():
        if key in ("twice", "method") or value is None:
            continue
        params.append((key, value))
        if change.get("twice") == key:
            params.append((key, value))
    method = change.get("method") or "GET"
    if method == "GET":
        context = app.test_request_context("/oidc/authorize", query_string=params)
    else:
        context = app.test_request_context(
            "/oidc/authorize", method="POST", data=MultiDict(params)
        )
    with context:
        server = views._server()
        plain = provider.plain_authorization_request(server)
        try:
            grant = server.get_consent_grant(end_user=None)
            generic: tuple[str, str] | None = (grant.request.client.client_id,
                                               grant.redirect_uri)
        except OAuth2Error:
            generic = None
    if plain is not None:
        assert generic == (plain[0].client_id, plain[1])
    if change in ({}, {"scope": None}, {"state": None}):
        assert plain is not None and generic is not None
    else:
        assert plain is None  # also a repeated nonce: check_oidc refuses it after authlib
