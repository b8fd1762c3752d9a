"""Single sign-on sessions (issue 5 item 4): idle timeout (15 minutes, policy), the absolute
limit, activity renews, a new session id at every login, step-up keeps the sign-on, max_age
asks again, another person replaces the session, `end_all_sessions`, a blocked account's
session ends.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from flask import Flask, session

from gateway import clock
from gateway.accounts.models import Account
from gateway.accounts.policy import SessionPolicy
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.flows import sessions as sso
from gateway.flows.sessions import EndReason, SsoSession, end_all_sessions, expiry_reason
from gateway.levels import Level
from tests.test_login_flow import (
    PASSWORD,
    login_password,
    make_account,
    post_form,
    rp_app,
    session_cookie,
    sso_rows,
)


def _login_basis(client: Any, username: str = "jan.jansen") -> None:
    page = client.get("/account?lang=en", follow_redirects=True)
    page = login_password(client, page, username)
    assert "at level basis." in page.get_data(as_text=True)


def _needs_password(client: Any) -> bool:
    page = client.get("/account", follow_redirects=True)
    return 'autocomplete="current-password"' in page.get_data(as_text=True)


def test_idle_timeout_ends_single_sign_on(make_app: Any, frozen_clock: None) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    _login_basis(client)
    clock.advance(timedelta(minutes=14))
    assert not _needs_password(client)  # used: the 15 minutes start again
    clock.advance(timedelta(minutes=14))
    assert not _needs_password(client)
    clock.advance(timedelta(minutes=15))
    assert _needs_password(client)
    answer = client.get("/test-rp/start?passive=1", follow_redirects=True)
    assert answer.get_json()["error"] == "login_required"


def test_current_sso_ends_an_idle_or_too_old_session(app: Flask, frozen_clock: None) -> None:
    account_id = make_account(app)
    settings, policy = get_settings(app), get_policies(app).accounts.session
    db = get_db(app)
    with app.test_request_context("/"):
        with db.sessionmaker() as s:
            row = sso.establish(
                s, settings, existing=None, account_id=account_id,
                subject_key=f"account:{account_id}", route="desk_account", level=Level.BASIS,
                amr=("pwd",), auth_time=clock.now(),
            )
            s.commit()
            assert sso.current_sso(s, settings, policy) is row
            clock.advance(timedelta(minutes=policy.idle_minutes))
            assert sso.current_sso(s, settings, policy) is None
            s.commit()
            assert sso.SESSION_KEY not in session
        with db.begin() as s:
            stored = s.get(SsoSession, row.id)
            assert stored is not None
            assert stored.ended_at is not None and stored.end_reason == EndReason.IDLE.value


def test_expiry_reasons() -> None:
    policy = SessionPolicy(idle_minutes=15, absolute_hours=12)
    start = clock.now()
    row = SsoSession(created_at=start, last_seen_at=start)
    assert expiry_reason(row, policy, start + timedelta(minutes=14, seconds=59)) is None
    assert expiry_reason(row, policy, start + timedelta(minutes=15)) is EndReason.IDLE
    # Busy all day: the absolute limit still ends it, 12 hours after the first login.
    row.last_seen_at = start + timedelta(hours=11, minutes=59)
    assert expiry_reason(row, policy, start + timedelta(hours=11, minutes=59, seconds=59)) is None
    assert expiry_reason(row, policy, start + timedelta(hours=12)) is EndReason.ABSOLUTE


def test_the_session_id_changes_at_every_login(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/account", follow_redirects=True)
    first = session_cookie(client)
    assert first is not None
    login_password(client, page)
    second = session_cookie(client)
    assert second not in (None, first)
    # The old id is worth nothing now: a browser that kept it is not logged in.
    thief = app.test_client()
    thief.set_cookie("gw_session", first)
    assert _needs_password(thief)


def test_step_up_keeps_the_sign_on_and_max_age_asks_again(
    make_app: Any, frozen_clock: None
) -> None:
    from tests.test_login_flow import last_code

    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    _login_basis(client)
    (row,) = sso_rows(app)
    first_auth = row.auth_time
    clock.advance(timedelta(minutes=2))
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    assert 'name="password"' not in page.get_data(as_text=True)
    page = post_form(client, page, "/code", {"action": "send"})
    answer = post_form(client, page, "/code", {"code": last_code(app)})
    assert answer.get_json()["level"] == "midden"
    (stepped,) = sso_rows(app)
    assert stepped.id == row.id and stepped.level == Level.MIDDEN
    assert stepped.amr_values == ("pwd", "sms") and stepped.auth_time > first_auth

    # max_age: a login older than the relying party accepts means the password again.
    clock.advance(timedelta(minutes=5))
    page = client.get("/test-rp/start?max_age=600", follow_redirects=True)
    assert page.get_json()["ok"] is True  # 5 minutes old: fine
    page = client.get("/test-rp/start?max_age=60", follow_redirects=True)
    assert 'autocomplete="current-password"' in page.get_data(as_text=True)


def test_another_person_replaces_the_session(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    make_account(app, "piet.pietersen", phone="+31687654321")
    _login_basis(client)
    page = client.get("/test-rp/start?force=1", follow_redirects=True)
    answer = login_password(client, page, "piet.pietersen")
    assert answer.get_json()["ok"] is True
    first, second = sso_rows(app)
    assert first.end_reason == EndReason.REPLACED.value and second.ended_at is None
    assert first.subject_key != second.subject_key


def test_end_all_sessions_after_a_password_change(make_app: Any) -> None:
    app = rp_app(make_app)
    account_id = make_account(app)
    phone, laptop = app.test_client(), app.test_client()
    _login_basis(phone)
    _login_basis(laptop)
    with get_db(app).begin() as s:
        assert end_all_sessions(s, account_id) == 2
        assert end_all_sessions(s, account_id) == 0
    assert _needs_password(phone) and _needs_password(laptop)
    assert {row.end_reason for row in sso_rows(app)} == {EndReason.ACCOUNT.value}


def test_a_blocked_account_loses_its_session(make_app: Any, frozen_clock: None) -> None:
    app = rp_app(make_app)
    account_id = make_account(app)
    client = app.test_client()
    _login_basis(client)
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None
        account.blocked_until = clock.now() + timedelta(minutes=30)
    answer = client.get("/test-rp/start?passive=1", follow_redirects=True)
    assert answer.get_json()["error"] == "login_required"
    (row,) = sso_rows(app)
    assert row.end_reason == EndReason.ACCOUNT.value


def test_logout_needs_a_post_with_csrf(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    _login_basis(client)
    assert client.post("/logout").status_code == 400  # no CSRF token
    assert not _needs_password(client)
    page = client.get("/logout")
    post_form(client, page, "/logout", {})
    assert _needs_password(client)
    assert json.loads(sso_rows(app)[0].rps) == ["self"]
    assert PASSWORD not in page.get_data(as_text=True)


def test_session_entries_are_what_the_tagged_serializer_writes(app: Flask) -> None:
    """The plain-JSON fast path writes the tagged serializer's bytes and reads them back;
    values that need a tag (datetime, tuple, bytes, Markup, a dict that looks like a tag)
    still get one."""
    from datetime import UTC, datetime

    from flask.json.tag import TaggedJSONSerializer
    from markupsafe import Markup

    from gateway.web.sessions import _dumps, _loads

    tagged = TaggedJSONSerializer()
    values: list[dict[str, Any]] = [
        {},
        {"b": 1, "a": "x", "c": [1, 2.5, None, True, {"z": "ë \" {\" t\""}]},
        {"csrf": "abc", "flows": ["f1", "f2"], "n": -3, "nested": {"k": {"j": []}}},
        {"at": datetime(2026, 11, 29, 5, 0, tzinfo=UTC)},
        {"pair": (1, 2)},
        {"raw": b"\x00\xff"},
        {"html": Markup("<b>x</b>")},
        {"tricky": {" t": [1, 2]}},
        {"tricky": {" di": {"a": 1}}},
    ]
    with app.test_request_context():
        for value in values:
            expected = tagged.dumps(value).encode()
            assert _dumps(value) == expected
            assert _loads(expected) == tagged.loads(expected.decode()) == value
