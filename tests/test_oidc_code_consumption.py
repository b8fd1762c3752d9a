"""The token endpoint consumes a code in the same transaction as the tokens it issues
(bench/oidc_compare.py, issue 6 "Performance"): these pin that a code refused after it was
consumed (wrong PKCE verifier, wrong redirect URI) still counts as used, and that a failure
while issuing leaves neither tokens nor a used code behind."""

from __future__ import annotations

import re
import secrets
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from gateway import clock
from gateway.db import get_db
from gateway.idp.oidc import tokens, views
from tests.conftest import TEST_DB
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


def test_code_of_another_client_is_refused_and_left_unused(
    web: FlaskClient, app: Flask, secret: str
) -> None:
    _other, other_secret = add_client(app, "rp2")
    assert other_secret
    code, verifier = get_code(web)
    stolen = exchange(web, code, verifier, client_id="rp2", secret=other_secret)
    assert stolen.status_code == 400 and stolen.get_json()["error"] == "invalid_grant"
    assert _counts(app) == (0, 0)  # not consumed: the client it was issued to still can
    assert exchange(web, code, verifier, secret=secret).status_code == 200
    assert _counts(app) == (1, 2)


def _consume_plans(app: Flask, code_hash: str, client_id: str) -> list[str]:
    """PostgreSQL's plans of the code-consuming UPDATE: planned afresh, and the generic plan
    a prepared statement keeps (psycopg prepares a statement after a few executions)."""
    import psycopg.sql

    params = {"b_code_hash": code_hash, "b_client_id": client_id, "b_now": clock.now()}
    with get_db(app).engine.connect() as conn:
        sql = tokens._CONSUME.compile(dialect=conn.dialect).string
        fresh = "\n".join(conn.exec_driver_sql("EXPLAIN " + sql, params).scalars())
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", sql)
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("PREPARE gw_consume_plan AS " + numbered)
        try:
            # EXECUTE takes no bound parameters: the values as literals, quoted by psycopg.
            raw = conn.connection.dbapi_connection
            args = ", ".join(psycopg.sql.Literal(params[name]).as_string(raw) for name in names)
            generic = "\n".join(
                conn.exec_driver_sql(f"EXPLAIN EXECUTE gw_consume_plan({args})").scalars()
            )
        finally:
            conn.exec_driver_sql("DEALLOCATE gw_consume_plan")
            conn.rollback()
    return [fresh, generic]


@pytest.mark.skipif(TEST_DB != "postgresql", reason="a PostgreSQL planner question")
def test_consuming_a_code_reads_one_row_whatever_the_table_holds(app: Flask) -> None:
    """Issue 6: the token endpoint slowed down round after round because, on a table
    PostgreSQL had no statistics for (never ANALYZEd), the consuming UPDATE went through
    ix_oidc_grants_client_id and read every grant of the client. The code's row must be
    found through the unique index on its hash, with or without statistics."""
    client, _secret = add_client(app)
    now = clock.now()
    rows = [
        {
            "id": str(uuid.uuid4()), "code_hash": secrets.token_hex(32),
            "client_id": client.client_id, "redirect_uri": RP, "code_challenge": "c" * 43,
            "nonce": None, "scope": "openid", "sub": "s", "account_id": None, "level": 20,
            "amr": "[]", "auth_time": now, "sso_session_id": f"sso-{i % 16}",
            "created_at": now, "code_expires_at": now + tokens.CODE_LIFETIME,
            "code_used_at": now if i % 2 else None, "revoked_at": None,
            "expires_at": now + tokens.FAMILY_LIFETIME, "claims_sealed": None,
        }
        for i in range(3000)
    ]
    with get_db(app).begin() as db:
        db.execute(tokens._INSERT_GRANT, rows)
    for plan in _consume_plans(app, rows[0]["code_hash"], client.client_id):
        assert "uq_oidc_grants_code_hash" in plan, plan
        assert "ix_oidc_grants_client_id" not in plan, plan
