"""The token endpoint consumes a code in the same transaction as the tokens it issues
(bench/oidc_compare.py, issue 6 "Performance"): these pin that a code refused after it was
consumed (wrong PKCE verifier, wrong redirect URI) still counts as used, and that a failure
while issuing leaves neither tokens nor a used code behind."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from gateway.db import get_db
from gateway.idp.oidc import tokens, views
from tests.oidc_helpers import RP, FakeLogin, add_client, exchange, get_code, pkce


@pytest.fixture
def web(app: Flask, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    login = FakeLogin()
    monkeypatch.setattr(views, "start_login", login.start)
    monkeypatch.setattr(views, "finish_login", login.finish)
    return app.test_client()


@pytest.fixture
def secret(app: Flask) -> str:
    _client, client_secret = add_client(app)
    assert client_secret
    return client_secret


def _counts(app: Flask) -> tuple[int, int]:
    with get_db(app).begin() as db:
        used = db.scalar(
            sa.select(sa.func.count()).where(tokens.OidcGrant.code_used_at.is_not(None))
        )
        issued = db.scalar(sa.select(sa.func.count()).select_from(tokens.OidcToken))
    return int(used or 0), int(issued or 0)


def test_wrong_verifier_burns_the_code(web: FlaskClient, app: Flask, secret: str) -> None:
    code, verifier = get_code(web)
    wrong = exchange(web, code, pkce()[0], secret=secret)
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_grant"
    assert _counts(app) == (1, 0)
    again = exchange(web, code, verifier, secret=secret)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_wrong_redirect_uri_burns_the_code(web: FlaskClient, app: Flask, secret: str) -> None:
    code, verifier = get_code(web)
    moved = exchange(web, code, verifier, secret=secret, extra={"redirect_uri": RP + "?x=1"})
    assert moved.get_json()["error"] == "invalid_grant"
    assert exchange(web, code, verifier, secret=secret).get_json()["error"] == "invalid_grant"


def test_success_commits_code_and_tokens_together(
    web: FlaskClient, app: Flask, secret: str
) -> None:
    code, verifier = get_code(web)
    assert exchange(web, code, verifier, secret=secret).status_code == 200
    assert _counts(app) == (1, 2)  # the code used, an access and a refresh token


def test_failure_while_issuing_leaves_nothing(
    web: FlaskClient, app: Flask, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, verifier = get_code(web)

    def broken(*_args: object, **_kwargs: object) -> str:
        raise ValueError("signing failed")

    monkeypatch.setattr(tokens, "make_id_token", broken)
    failed = exchange(web, code, verifier, secret=secret)
    assert failed.status_code == 400 and failed.get_json()["error"] == "invalid_request"
    assert _counts(app) == (0, 0)
    monkeypatch.undo()
    assert exchange(web, code, verifier, secret=secret).status_code == 200
