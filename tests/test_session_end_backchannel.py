"""Sessions ended together (`gateway.flows.sessions.end_all_sessions`: password change,
recovery, block) reach the OIDC back-channel logout listener like any single logout: every
relying party that registered a `backchannel_logout_uri` gets a logout token and the ended
sessions' tokens are revoked; the browser that changed its password keeps its own session.

Receivers are real HTTP servers on loopback (tests/test_oidc_backchannel.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.accounts import selfservice, service
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.db import get_db
from gateway.flows.sessions import SESSION_KEY, token_id
from gateway.idp.oidc import backchannel
from tests.oidc_helpers import add_client
from tests.test_accounts_service import mail_tokens, sms_codes
from tests.test_login_flow import PASSWORD, make_account
from tests.test_oidc_backchannel import Receiver, login, verify_logout_token

NEW_PASSWORD = "a brand new staple"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    backchannel.dispatcher.drain()
    r.close()


def _sso_id(app: Flask, web: FlaskClient) -> str:
    with web.session_transaction() as browser:
        token = browser[SESSION_KEY]
    return token_id(get_settings(app), token)


def _userinfo(web: FlaskClient, access_token: str) -> int:
    return web.get("/oidc/userinfo",
                   headers={"Authorization": "Bearer " + access_token}).status_code


def test_recovery_sends_logout_tokens_and_revokes_the_tokens(
    app: Flask, receiver: Receiver
) -> None:
    web = app.test_client()
    make_account(app)
    _c, secret = add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"))
    done = login(app, web, "rp1", secret)
    assert _userinfo(web, done["access_token"]) == 200
    assert receiver.nothing_more()

    settings = get_settings(app)
    with app.app_context(), get_db(app).sessionmaker() as session:
        service.start_recovery(session, settings, app, username="jan.jansen", ip="127.0.0.1")
        service.wait_for_deliveries(app)
        [code] = sms_codes(app, "H")
        [email_token] = mail_tokens(app)
        service.finish_recovery(session, settings, app, username="jan.jansen", h_code=code,
                                email_token=email_token, new_password=NEW_PASSWORD,
                                ip="127.0.0.1")

    received = receiver.get()
    claims = verify_logout_token(received.body["logout_token"][0],
                                 web.get("/oidc/jwks").get_json(), settings.issuer, "rp1")
    assert claims["sub"] == done["claims"]["sub"] and claims["sid"] == done["claims"]["sid"]
    assert receiver.nothing_more()
    assert _userinfo(web, done["access_token"]) == 401


def test_password_change_tells_the_other_browsers_only(
    app: Flask, receiver: Receiver
) -> None:
    account_id = make_account(app)
    _c, secret = add_client(app, "rp1", backchannel_logout_uri=receiver.url("/ok"))
    laptop, phone = app.test_client(), app.test_client()
    on_laptop = login(app, laptop, "rp1", secret)
    on_phone = login(app, phone, "rp1", secret)
    assert on_laptop["claims"]["sid"] != on_phone["claims"]["sid"]
    keep = _sso_id(app, phone)

    settings = get_settings(app)
    with app.app_context(), get_db(app).sessionmaker() as session:
        account = session.get(Account, account_id)
        assert account is not None
        selfservice.change_password(session, settings, app, account,
                                    current_password=PASSWORD, new_password=NEW_PASSWORD,
                                    keep_session=keep)

    received = receiver.get()
    claims = verify_logout_token(received.body["logout_token"][0],
                                 laptop.get("/oidc/jwks").get_json(), settings.issuer, "rp1")
    assert claims["sid"] == on_laptop["claims"]["sid"]
    assert receiver.nothing_more()  # the phone, which made the change, is not logged out
    assert _userinfo(laptop, on_laptop["access_token"]) == 401
    assert _userinfo(phone, on_phone["access_token"]) == 200
