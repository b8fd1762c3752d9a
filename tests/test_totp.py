"""Authenticator apps for citizens (gateway/accounts/totp.py): enrolment in two steps,
verification with replay protection, attempt limiting through the lockout, removal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts import totp
from gateway.accounts.history import EventKind, list_events
from gateway.accounts.models import Account
from gateway.accounts.service import AccountBlocked, LoginFailed
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from tests.test_accounts_service import fast_policies_dir, fresh, login, make_account

START = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def fast_policies(tmp_path: Path) -> Path:
    return fast_policies_dir(tmp_path)


@pytest.fixture
def app(make_app: Callable[..., Flask], fast_policies: Path) -> Flask:
    return make_app(policies_dir=fast_policies)


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    with app.app_context(), get_db(app).sessionmaker() as s:
        yield s


@pytest.fixture
def at_start() -> Iterator[None]:
    with clock.frozen(START):
        yield None


def code_at(secret: str, moment: datetime) -> str:
    return pyotp.TOTP(secret).at(moment)


def enrolled(app: Flask, session: Session, account: Account) -> str:
    settings = get_settings(app)
    secret, _uri = totp.begin_enrolment(session, settings, account)
    assert totp.confirm_enrolment(session, settings, account, code_at(secret, clock.now()))
    return secret


def test_enrolment_is_pending_until_confirmed(
    app: Flask, session: Session, at_start: None
) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    secret, uri = totp.begin_enrolment(session, settings, account)
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert unquote(parts.path).endswith("Jan.Jansen")
    query = parse_qs(parts.query)
    assert query["secret"] == [secret] and query["issuer"] == [totp.TOTP_ISSUER]
    assert len(secret) == totp.TOTP_SECRET_CHARS

    stored = fresh(session, account)
    # Sealed at rest: the seed is not in the row.
    assert stored.totp_pending_sealed is not None and secret not in stored.totp_pending_sealed
    assert not totp.has_totp(stored)
    assert not totp.verify_totp(session, settings, stored, code_at(secret, clock.now()))

    assert not totp.confirm_enrolment(session, settings, stored, "000000" if code_at(
        secret, clock.now()) != "000000" else "111111")
    assert totp.confirm_enrolment(session, settings, stored, code_at(secret, clock.now()))
    stored = fresh(session, account)
    assert totp.has_totp(stored) and stored.totp_pending_sealed is None
    assert stored.totp_secret_sealed is not None and secret not in stored.totp_secret_sealed
    assert EventKind.TOTP_ADDED in [e.kind for e in list_events(session, account.id)]


def test_enrolment_must_be_confirmed_in_time(app: Flask, session: Session, at_start: None) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    secret, _ = totp.begin_enrolment(session, settings, account)
    clock.advance(totp.ENROLMENT_VALIDITY)
    assert not totp.confirm_enrolment(session, settings, account, code_at(secret, clock.now()))
    assert not totp.has_totp(fresh(session, account))


def test_a_new_enrolment_keeps_the_old_app_until_confirmed(
    app: Flask, session: Session, at_start: None
) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    old = enrolled(app, session, account)
    new, _ = totp.begin_enrolment(session, settings, account)
    clock.advance(timedelta(seconds=30))
    assert totp.verify_totp(session, settings, account, code_at(old, clock.now()))
    clock.advance(timedelta(seconds=30))
    assert totp.confirm_enrolment(session, settings, account, code_at(new, clock.now()))
    clock.advance(timedelta(seconds=30))
    assert not totp.verify_totp(session, settings, account, code_at(old, clock.now()))
    assert totp.verify_totp(session, settings, account, code_at(new, clock.now()))


def test_verify_accepts_one_step_of_drift_and_refuses_replays(
    app: Flask, session: Session, at_start: None
) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    secret = enrolled(app, session, account)
    # The code that confirmed the enrolment cannot log in.
    assert not totp.verify_totp(session, settings, account, code_at(secret, clock.now()))

    clock.advance(timedelta(minutes=5))
    now = clock.now()
    late_phone = code_at(secret, now - timedelta(seconds=30))
    assert totp.verify_totp(session, settings, account, f" {late_phone[:3]} {late_phone[3:]}")
    # The same code again, and a code of an earlier step: replays.
    assert not totp.verify_totp(session, settings, account, late_phone)
    assert not totp.verify_totp(session, settings, account, code_at(secret, now - timedelta(
        seconds=60)))
    # The current step is later: accepted once.
    assert totp.verify_totp(session, settings, account, code_at(secret, now))
    assert not totp.verify_totp(session, settings, account, code_at(secret, now))
    # Two steps ahead is outside the window.
    assert not totp.verify_totp(session, settings, account, code_at(
        secret, now + timedelta(seconds=90)))
    assert fresh(session, account).totp_last_step == totp.totp_step(now)


def test_a_replay_from_a_second_session_loses(
    app: Flask, session: Session, at_start: None
) -> None:


    settings = get_settings(app)
    account = make_account(app, session)
    secret = enrolled(app, session, account)
    clock.advance(timedelta(minutes=1))
    code = code_at(secret, clock.now())
    other = get_db(app).sessionmaker()
    try:
        twin = other.get(Account, account.id)
        assert twin is not None
        other.commit()  # ends the read (SQLite: its write lock); the loaded row stays stale
        assert totp.verify_totp(session, settings, account, code)
        assert not totp.verify_totp(other, settings, twin, code)
    finally:
        other.close()


@pytest.mark.parametrize(
    "hostile", ["", "12345", "1234567", "abcdef", "１２３４５６", "1" * 10_000, "12 34 5\x006"]
)
def test_hostile_codes_are_refused(
    app: Flask, session: Session, at_start: None, hostile: str
) -> None:
    account = make_account(app, session)
    enrolled(app, session, account)
    clock.advance(timedelta(minutes=1))
    assert not totp.verify_totp(session, get_settings(app), account, hostile)


def test_wrong_codes_block_the_account_and_a_right_password_does_not_reset_them(
    app: Flask, session: Session, at_start: None
) -> None:
    settings = get_settings(app)
    lockout = get_policies(app).accounts.lockout
    account = make_account(app, session)
    secret = enrolled(app, session, account)
    right = code_at(secret, clock.now() + timedelta(minutes=1))
    wrong = "000000" if right != "000000" else "111111"
    clock.advance(timedelta(minutes=1))
    for _ in range(lockout.max_failures - 1):
        assert not totp.verify_totp(session, settings, account, wrong)
        # Logging in with the password again must not give the guesser a fresh count.
        login(app, session)
    assert fresh(session, account).totp_failures == lockout.max_failures - 1
    assert not totp.verify_totp(session, settings, account, wrong)
    blocked = fresh(session, account)
    assert blocked.blocked_until == clock.now() + timedelta(minutes=lockout.block_minutes)
    # Blocked: even the right code is refused, and the password step says so to the owner.
    assert not totp.verify_totp(session, settings, account, right)
    with pytest.raises(AccountBlocked):
        login(app, session)
    with pytest.raises(LoginFailed):
        login(app, session, password="not it at all")


def test_remove_totp(app: Flask, session: Session, at_start: None) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    secret = enrolled(app, session, account)
    clock.advance(timedelta(seconds=1))
    totp.remove_totp(session, settings, account)
    stored = fresh(session, account)
    assert not totp.has_totp(stored)
    assert stored.totp_secret_sealed is None and stored.totp_last_step is None
    clock.advance(timedelta(minutes=1))
    assert not totp.verify_totp(session, settings, stored, code_at(secret, clock.now()))
    kinds = [e.kind for e in list_events(session, account.id)]
    assert kinds[0] == EventKind.TOTP_REMOVED and EventKind.TOTP_ADDED in kinds


def test_a_secret_sealed_under_another_key_is_refused(
    app: Flask, session: Session, at_start: None
) -> None:
    account = make_account(app, session)
    secret = enrolled(app, session, account)
    other_key = get_settings(app).with_overrides(secret_key=b"another-secret-" + b"y" * 40)
    clock.advance(timedelta(minutes=1))
    assert not totp.verify_totp(session, other_key, account, code_at(secret, clock.now()))
    assert session.scalar(sa.select(Account.totp_failures).where(Account.id == account.id)) == 0
