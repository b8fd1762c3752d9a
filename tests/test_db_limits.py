"""When the database cannot serve a request: PostgreSQL's serving limits (statement, lock and
idle-in-transaction timeouts) are set unless the URL gives its own, and a database that is
unreachable, locked or too slow answers 503 with Retry-After, never a 500 or a hang.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from flask import Blueprint, Flask

from gateway.db import SERVING_LIMITS, get_db, make_engine
from gateway.db import session as db_session
from tests.conftest import TEST_DB

postgres_only = pytest.mark.skipif(TEST_DB != "postgresql", reason="PostgreSQL's settings")


def _show(engine: sa.Engine, name: str) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql(f"SHOW {name}").scalar())


@postgres_only
def test_serving_connections_get_the_limits(app: Flask, database_url: str) -> None:
    engine = get_db(app).engine
    assert _show(engine, "statement_timeout") == "30s"
    assert _show(engine, "lock_timeout") == "10s"
    assert _show(engine, "idle_in_transaction_session_timeout") == "1min"
    assert set(SERVING_LIMITS) == {
        "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
    }
    # Migrations and other batch work keep the server's defaults.
    plain = make_engine(database_url)
    try:
        assert _show(plain, "statement_timeout") == "0"
    finally:
        plain.dispose()


@postgres_only
def test_the_urls_options_replace_the_limits(make_app: Any, database_url: str) -> None:
    options = quote("-c statement_timeout=1234")
    app = make_app(database_url=f"{database_url}?options={options}")
    engine = get_db(app).engine
    assert _show(engine, "statement_timeout") == "1234ms"
    assert _show(engine, "lock_timeout") == "0"


def _slow_route(app: Flask, work: Any) -> None:
    bp = Blueprint("slow_db", __name__)

    @bp.get("/slow-db")
    def slow() -> str:
        work(db_session())
        return "not reached"

    app.register_blueprint(bp)


@postgres_only
def test_a_statement_past_its_time_answers_503(
    make_app: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = quote("-c statement_timeout=50")
    app = make_app(database_url=f"{database_url}?options={options}")
    _slow_route(app, lambda s: s.execute(sa.text("SELECT pg_sleep(2)")))
    with caplog.at_level(logging.ERROR, logger="gateway.web"):
        answer = app.test_client().get("/slow-db", headers={"Accept-Language": "en"})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    body = answer.get_data(as_text=True)
    assert "temporarily unavailable" in body and "pg_sleep" not in body
    assert [r.message for r in caplog.records] == ["database unavailable"]
    assert caplog.records[0].cause == "QueryCanceled"  # type: ignore[attr-defined]


@pytest.mark.skipif(TEST_DB != "sqlite", reason="SQLite's write lock")
def test_sqlite_busy_past_its_timeout_answers_503(app: Flask) -> None:
    path = get_db(app).engine.url.database
    assert path is not None

    def write_while_locked(_s: Any) -> None:
        conn = get_db().engine.connect()
        # Wait 20 ms for the lock instead of the configured 30 s, then the BEGIN fails.
        try:
            conn.connection.driver_connection.execute("PRAGMA busy_timeout=20")  # type: ignore[union-attr]
            conn.execute(sa.text("UPDATE login_flows SET state = state"))
        finally:
            conn.close()

    _slow_route(app, write_while_locked)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        # Another worker holds the write lock; so does every request transaction here
        # (BEGIN IMMEDIATE): the request's own BEGIN finds it taken.
        other.execute("BEGIN IMMEDIATE")
        answer = app.test_client().get("/slow-db", headers={"Accept": "application/json"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.mimetype == "application/problem+json"
    assert answer.get_json()["status"] == 503


@postgres_only
def test_an_unreachable_database_answers_503(make_app: Any) -> None:
    app = make_app(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing")  # no server
    _slow_route(app, lambda s: s.execute(sa.text("SELECT 1")))
    answer = app.test_client().get("/slow-db")
    assert answer.status_code == 503
    assert "Traceback" not in answer.get_data(as_text=True)
