"""Logins side by side: the argon2 verify runs outside any database transaction (on SQLite a
transaction holds the write lock, so a hash inside one would serialise every login of the
deployment), and a second submit of the same password form while the first is being checked
answers with the flow's page, never an error page.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, g

from gateway.accounts import passwords as passwords_module
from gateway.accounts.models import Account
from gateway.audit import AuditEntry
from gateway.db import get_db
from gateway.flows.login import LoginFlow
from tests.test_login_flow import (
    MOBILE,
    login_password,
    make_account,
    outbox,
    rp_app,
)


def _during_verify(monkeypatch: pytest.MonkeyPatch, hook: Callable[[], None]) -> None:
    """Run `hook` inside every argon2 verify, then verify as before."""
    verify = passwords_module.Passwords.verify

    def hooked(self: Any, stored_hash: str, password: str) -> bool:
        hook()
        return verify(self, stored_hash, password)

    monkeypatch.setattr(passwords_module.Passwords, "verify", hooked)


def _sqlite_path(app: Flask) -> str | None:
    url = get_db(app).engine.url
    return url.database if url.get_backend_name() == "sqlite" else None


@pytest.mark.parametrize("username", ["jan.jansen", "nobody.known"])
def test_the_password_is_checked_outside_any_transaction(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, username: str
) -> None:
    app = rp_app(make_app)
    make_account(app)
    path = _sqlite_path(app)
    seen: list[tuple[bool, str | None]] = []

    def hook() -> None:
        in_transaction = g.db_session.in_transaction()
        locked: str | None = None
        if path is not None:
            # Another worker's write must not wait for this hash.
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                locked = str(exc)
            finally:
                other.close()
        seen.append((in_transaction, locked))

    _during_verify(monkeypatch, hook)
    client = app.test_client()
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    answer = login_password(client, page, username=username)
    assert answer.status_code == 200
    assert seen == [(False, None)]


def test_a_second_submit_while_the_first_is_checked_goes_to_the_flow(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other request wins the flow's move; this one writes nothing and shows the flow."""
    app = rp_app(make_app)
    account_id = make_account(app)
    client = app.test_client()
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    flow_path = page.request.path
    flow_id = flow_path.split("/")[2]

    def other_request_moves_the_flow() -> None:
        # What the first submit's move does, committed by "another worker" meanwhile.
        with get_db(app).engine.begin() as conn:
            conn.execute(
                sa.update(LoginFlow.__table__)  # type: ignore[arg-type]
                .where(LoginFlow.__table__.c.id == flow_id)  # type: ignore[attr-defined]
                .values(state="second_factor", account_id=account_id)
            )

    _during_verify(monkeypatch, other_request_moves_the_flow)
    with get_db(app).begin() as s:
        audits_before = s.scalar(sa.select(sa.func.count()).select_from(AuditEntry))
    answer = login_password(client, page)
    assert answer.status_code == 200
    assert answer.request.path == flow_path
    assert outbox(app) == []  # no code from the losing request
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None and account.last_login_at is None
        # Nothing of the losing request's success was written.
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == audits_before
    assert MOBILE  # the account has a phone: a code would have gone out on a win
