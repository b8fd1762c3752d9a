"""Citizen account services (gateway/accounts/service.py): activation, the password check with
lockout and per-IP throttling, unblock and recovery end to end through the SMS and mail
outboxes, no enumeration (same exception, same message, same argon2 work), history."""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import argon2
import pytest
import sqlalchemy as sa
import yaml
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts import service
from gateway.accounts.history import AccountEvent, EventKind, list_events, record_event
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.accounts.passwords import Passwords
from gateway.accounts.policy import LockoutPolicy, PasswordPolicy
from gateway.accounts.service import (
    AccountBlocked,
    CodeRefused,
    LoginFailed,
    PasswordRejected,
    TooManyAttempts,
    TryLater,
)
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry
from gateway.db import get_db
from gateway.desks.codes import CodeKind, code_hmac, new_code
from gateway.sms.service import get_sms_service
from gateway.store import StoreUnavailable, get_store

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new staple"
PHONE = "+31612345678"
IP = "198.51.100.7"
OTHER_IP = "203.0.113.9"

# --- fixtures and helpers (imported by tests/test_totp.py and tests/test_account_expiry.py) ---


def fast_policies_dir(tmp_path: Path) -> Path:
    """The repo's policies with the cheapest argon2 the policy allows and the smallest per-IP
    budget, so a test can exhaust it quickly (the rules are the same, only the numbers)."""
    from gateway.settings import DEFAULT_POLICIES_DIR

    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    path = folder / "accounts.yaml"
    data = yaml.safe_load(path.read_text())
    data["password"]["argon2"] = {"time_cost": 1, "memory_cost_kib": 7168, "parallelism": 1}
    data["lockout"]["per_ip_per_hour"] = 10
    path.write_text(yaml.safe_dump(data))
    return folder


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


@functools.cache
def _hash(policy: PasswordPolicy, password: str) -> str:
    return Passwords(policy).hash(password)


def make_account(
    app: Flask,
    session: Session,
    username: str = "Jan.Jansen",
    *,
    status: AccountStatus = AccountStatus.ACTIVE,
    phone: str | None = PHONE,
    phone_verified: bool = True,
    email: str | None = "jan@example.org",
    email_verified: bool = True,
    password: str = PASSWORD,
    bsn: str | None = None,
    **extra: Any,
) -> Account:
    now = clock.now()
    account = Account(
        username=username,
        username_key=username.lower(),
        password_hash=_hash(get_policies(app).accounts.password, password),
        bsn=bsn,
        surname="Jansen",
        given_names="Jan",
        birth_date=date(1980, 1, 1),
        nationality="NLD",
        phone_e164=phone,
        phone_channel="sms" if phone else None,
        phone_verified_at=now if phone and phone_verified else None,
        email=email,
        email_verified_at=now if email and email_verified else None,
        language="en",
        status=status.value,
        created_at=now,
        activated_at=now if status is AccountStatus.ACTIVE else None,
        failed_logins=0,
        **extra,
    )
    session.add(account)
    session.commit()
    return account


def add_code(
    app: Flask,
    session: Session,
    account: Account,
    kind: CodeKind = CodeKind.ACTIVATION,
    *,
    channel: str = "sms",
    valid_for: timedelta = timedelta(days=20),
) -> str:
    code = new_code(kind)
    now = clock.now()
    session.add(
        AccountCode(
            account_id=account.id, kind=kind.value,
            code_hmac=code_hmac(get_settings(app), kind, code), channel=channel,
            created_at=now, expires_at=now + valid_for, attempts=0,
        )
    )
    session.commit()
    return code


def fresh(session: Session, account: Account) -> Account:
    session.expire_all()
    found = session.get(Account, account.id)
    assert found is not None
    session.commit()  # ends the read: on SQLite it would hold the write lock
    return found


def login(app: Flask, session: Session, username: str = "jan.jansen",
          password: str = PASSWORD, ip: str | None = IP) -> Account:
    return service.check_password(
        session, get_settings(app), get_policies(app), username=username, password=password,
        ip=ip, app=app,
    )


def outbox(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sms_codes(app: Flask, letter: str) -> list[str]:
    texts = [m["text"] for m in outbox(get_settings(app).sms_outbox)]
    return [m.group(1) for t in texts if (m := re.search(rf"#({letter}[A-Z0-9]{{8}})$", t))]


def mail_tokens(app: Flask) -> list[str]:
    texts = [m["text"] for m in outbox(get_settings(app).mail_outbox)]
    return [m.group(1) for t in texts if (m := re.search(r"\?token=([A-Za-z0-9_\-]+)", t))]


def activate(app: Flask, session: Session, code: str, username: str = "jan.jansen",
             password: str = PASSWORD, ip: str | None = IP) -> Account:
    return service.activate(
        session, get_settings(app), get_policies(app), username=username, password=password,
        activation_code=code, ip=ip, app=app,
    )


def audit_outcomes(session: Session, action: str) -> list[str]:
    rows = session.scalars(
        sa.select(AuditEntry.outcome).where(AuditEntry.action == action).order_by(AuditEntry.seq)
    )
    return list(rows)


def block(app: Flask, session: Session, username: str = "jan.jansen") -> None:
    for _ in range(get_policies(app).accounts.lockout.max_failures):
        with pytest.raises(LoginFailed):
            login(app, session, username, "wrong password!", ip=None)


# --- activation ---------------------------------------------------------------------------


def test_activation_by_sms_code_verifies_the_phone_and_sends_a_notice(
    app: Flask, session: Session
) -> None:
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION,
                           phone_verified=False)
    code = add_code(app, session, account)
    # What people type: lower case, spaces and dashes, other case in the username.
    typed = f" {code[:3].lower()}-{code[3:6]} {code[6:]} "
    result = activate(app, session, typed, username="  JAN.jansen ")
    assert result.status == AccountStatus.ACTIVE
    assert result.activated_at is not None
    assert result.phone_verified_at is not None
    kinds = [e.kind for e in list_events(session, account.id)]
    assert kinds == [EventKind.ACTIVATED]
    assert audit_outcomes(session, "account.activate") == ["success"]
    mails = outbox(get_settings(app).mail_outbox)
    assert [m["to"] for m in mails] == ["jan@example.org"]
    assert "Jan.Jansen" in mails[0]["text"] and "active" in mails[0]["subject"]
    # Now the password works for logging in.
    assert login(app, session).id == account.id


def test_activation_by_letter_leaves_the_phone_unverified(app: Flask, session: Session) -> None:
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION,
                           phone_verified=False)
    code = add_code(app, session, account, channel="letter")
    assert activate(app, session, code).phone_verified_at is None


def test_login_before_activation_fails_with_the_generic_message(
    app: Flask, session: Session
) -> None:
    make_account(app, session, status=AccountStatus.PENDING_ACTIVATION)
    with pytest.raises(LoginFailed):
        login(app, session)


def test_activation_refusals(app: Flask, session: Session) -> None:
    settings, policies = get_settings(app), get_policies(app)
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION)
    other = make_account(app, session, "piet.pieters", status=AccountStatus.PENDING_ACTIVATION)
    code = add_code(app, session, account)
    other_code = add_code(app, session, other)

    # Wrong password: the generic login failure, and the code is left alone.
    with pytest.raises(LoginFailed) as wrong_pw:
        activate(app, session, code, password="not the password")
    # Unknown username: the same exception and message.
    with pytest.raises(LoginFailed) as unknown:
        activate(app, session, code, username="nobody.here")
    assert str(wrong_pw.value.message) == str(unknown.value.message)

    # A code of another account, a malformed one, a wrong one: invalid.
    for bad in (other_code, "A123", new_code(CodeKind.ACTIVATION), "x" * 10_000, "Ａ" * 9):
        with pytest.raises(CodeRefused) as refused:
            activate(app, session, bad)
        assert refused.value.code == "invalid"
        assert "activeringscode klopt niet" in str(refused.value.message)
    # An unblock code is never an activation code, even with the same body.
    with pytest.raises(CodeRefused):
        activate(app, session, "D" + code[1:])
    session.expire_all()
    row = session.scalars(sa.select(AccountCode).where(AccountCode.account_id == account.id)).one()
    assert row.attempts == 6 and row.used_at is None

    assert fresh(session, account).status == AccountStatus.PENDING_ACTIVATION
    activate(app, session, code)
    with pytest.raises(CodeRefused) as used:
        activate(app, session, code)
    assert used.value.code == "used"
    assert "al gebruikt" in str(used.value.message)

    # The other account's code still works for it, and only for it.
    assert service.activate(
        session, settings, policies, username="piet.pieters", password=PASSWORD,
        activation_code=other_code, ip=IP, app=app,
    ).status == AccountStatus.ACTIVE


def test_expired_activation_code_says_how_to_get_a_new_one(
    app: Flask, session: Session, frozen_clock: None
) -> None:
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION)
    code = add_code(app, session, account, valid_for=timedelta(days=20))
    clock.advance(timedelta(days=20, seconds=1))
    with pytest.raises(CodeRefused) as refused:
        activate(app, session, code)
    assert refused.value.code == "expired"
    assert "Vraag een balie" in str(refused.value.message)
    assert fresh(session, account).status == AccountStatus.PENDING_ACTIVATION


def test_superseded_and_exhausted_activation_codes_are_expired(
    app: Flask, session: Session
) -> None:
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION)
    old = add_code(app, session, account)
    session.execute(sa.update(AccountCode).values(superseded_at=clock.now()))
    session.commit()
    code = add_code(app, session, account)
    with pytest.raises(CodeRefused) as superseded:
        activate(app, session, old)
    assert superseded.value.code == "expired"
    for _ in range(service.ACTIVATION_MAX_ATTEMPTS):
        with pytest.raises(CodeRefused):
            activate(app, session, new_code(CodeKind.ACTIVATION), ip=None)
    with pytest.raises(CodeRefused) as exhausted:
        activate(app, session, code, ip=None)
    assert exhausted.value.code == "expired"


def test_activation_is_throttled_per_ip(app: Flask, session: Session) -> None:
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION)
    code = add_code(app, session, account)
    # Unknown usernames and wrong codes both count (wrong passwords would block the account).
    for i in range(5):
        with pytest.raises(LoginFailed):
            activate(app, session, code, username=f"guess{i}")
        with pytest.raises(CodeRefused):
            activate(app, session, new_code(CodeKind.ACTIVATION))
    with pytest.raises(TooManyAttempts):
        activate(app, session, code)
    assert activate(app, session, code, ip=OTHER_IP).status == AccountStatus.ACTIVE


# --- password check, lockout, backoff -----------------------------------------------------


def test_lockout_after_max_failures_and_block_message_only_after_right_password(
    app: Flask, session: Session, frozen_clock: None
) -> None:
    account = make_account(app, session)
    lockout = get_policies(app).accounts.lockout
    for _ in range(lockout.max_failures - 1):
        with pytest.raises(LoginFailed):
            login(app, session, password="wrong password!")
    assert fresh(session, account).failed_logins == lockout.max_failures - 1
    assert fresh(session, account).blocked_until is None
    with pytest.raises(LoginFailed):
        login(app, session, password="wrong password!")
    blocked = fresh(session, account)
    assert blocked.blocked_until == clock.now() + timedelta(minutes=lockout.block_minutes)
    assert blocked.failed_logins == 0 and blocked.block_count == 1
    assert EventKind.BLOCKED in [e.kind for e in list_events(session, account.id)]

    # A wrong password during the block: the generic failure, not the block.
    with pytest.raises(LoginFailed):
        login(app, session, password="still wrong")
    # The right password: the block, with how to lift it.
    with pytest.raises(AccountBlocked) as exc:
        login(app, session)
    assert exc.value.until == blocked.blocked_until
    assert "deblokkeercode" in str(exc.value.message)

    clock.advance(timedelta(minutes=lockout.block_minutes, seconds=1))
    assert login(app, session).id == account.id
    after = fresh(session, account)
    assert after.failed_logins == 0 and after.block_count == 0 and after.blocked_until is None
    assert after.last_login_at == clock.now()


def test_backoff_doubles_each_block_and_failures_during_a_block_extend_it(
    app: Flask, session: Session, frozen_clock: None
) -> None:
    account = make_account(app, session)
    minutes = get_policies(app).accounts.lockout.block_minutes
    block(app, session)
    assert fresh(session, account).blocked_until == clock.now() + timedelta(minutes=minutes)
    # Guessing on during the block: a second run blocks for twice as long, from now.
    clock.advance(timedelta(minutes=1))
    block(app, session)
    assert fresh(session, account).blocked_until == clock.now() + timedelta(minutes=2 * minutes)
    clock.advance(timedelta(minutes=2 * minutes + 1))
    block(app, session)
    assert fresh(session, account).blocked_until == clock.now() + timedelta(minutes=4 * minutes)
    assert fresh(session, account).block_count == 3


def test_block_durations_double_up_to_the_cap() -> None:
    durations = service.block_durations(LockoutPolicy(block_minutes=30))
    assert [int(d.total_seconds() // 60) for d in durations] == [30, 60, 120, 240, 480, 960, 1440]
    assert service.block_durations(LockoutPolicy(block_minutes=24 * 60)) == [service.MAX_BLOCK]


def test_failures_are_counted_in_the_row_by_every_session(app: Flask, session: Session) -> None:
    account = make_account(app, session)
    # Two sessions (two workers) that each loaded the account before the other wrote.
    other = get_db(app).sessionmaker()
    try:
        with pytest.raises(LoginFailed):
            login(app, session, password="wrong one")
        with pytest.raises(LoginFailed):
            login(app, other, password="wrong two")
    finally:
        other.close()
    assert fresh(session, account).failed_logins == 2


def test_rehash_when_the_argon2_parameters_change(app: Flask, session: Session) -> None:
    old_policy = PasswordPolicy.model_validate(
        {"argon2": {"time_cost": 2, "memory_cost_kib": 7168, "parallelism": 1}}
    )
    account = make_account(app, session)
    account.password_hash = Passwords(old_policy).hash(PASSWORD)
    session.commit()
    passwords = service.passwords_for(get_policies(app).accounts.password)
    assert passwords.needs_rehash(account.password_hash)
    login(app, session)
    stored = fresh(session, account).password_hash
    assert not passwords.needs_rehash(stored) and passwords.verify(stored, PASSWORD)


def test_inactive_accounts_fail_like_unknown_ones(app: Flask, session: Session) -> None:
    for i, status in enumerate((AccountStatus.DEACTIVATED, AccountStatus.EXPIRED)):
        make_account(app, session, f"user.{status.value}", status=status, phone=f"+3161234560{i}")
        with pytest.raises(LoginFailed):
            login(app, session, f"user.{status.value}")


# --- no enumeration -----------------------------------------------------------------------


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts every argon2 verification, whichever Passwords instance makes it."""
    calls: list[str] = []
    original = argon2.PasswordHasher.verify

    def counting(self: argon2.PasswordHasher, hash: str, password: str | bytes) -> bool:
        calls.append("verify")
        return original(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    return calls


def test_unknown_and_known_usernames_look_the_same_at_login(
    app: Flask, session: Session, argon2_calls: list[str]
) -> None:
    make_account(app, session)
    outcomes = []
    for username in ("jan.jansen", "no.such.user", "x" * 5000, ""):
        argon2_calls.clear()
        with pytest.raises(service.AccountError) as exc:
            login(app, session, username, "wrong password!")
        outcomes.append((type(exc.value), exc.value.code, str(exc.value.message)))
        assert argon2_calls == ["verify"], username
    assert len(set(outcomes)) == 1 and outcomes[0][0] is LoginFailed


def test_unknown_and_known_usernames_look_the_same_at_unblock_and_recovery(
    app: Flask, session: Session, argon2_calls: list[str]
) -> None:
    make_account(app, session)
    settings = get_settings(app)
    for username in ("jan.jansen", "no.such.user"):
        argon2_calls.clear()
        assert service.start_unblock(session, settings, app, username=username,
                                     password="wrong password!", ip=IP) is None
        assert argon2_calls == ["verify"]
        argon2_calls.clear()
        assert service.start_recovery(session, settings, app, username=username, ip=IP) is None
        assert argon2_calls == []
    # The finishing steps: the same refusal for an unknown username as for a wrong code.
    refusals = set()
    for username in ("jan.jansen", "no.such.user"):
        with pytest.raises(CodeRefused) as unblock:
            service.finish_unblock(session, settings, app, username=username,
                                   code=new_code(CodeKind.UNBLOCK), ip=IP)
        with pytest.raises(CodeRefused) as recovery:
            service.finish_recovery(session, settings, app, username=username,
                                    h_code=new_code(CodeKind.RECOVERY), email_token="x" * 43,
                                    new_password=NEW_PASSWORD, ip=IP)
        refusals.add((unblock.value.code, str(unblock.value.message),
                      recovery.value.code, str(recovery.value.message)))
    assert len(refusals) == 1


# --- per-IP throttling and the store ------------------------------------------------------


def test_per_ip_throttle_counts_failures_per_network(app: Flask, session: Session) -> None:
    make_account(app, session)
    limit = get_policies(app).accounts.lockout.per_ip_per_hour
    # Successes do not use the budget of everyone behind one address.
    for _ in range(limit + 2):
        login(app, session, ip=IP)
    for i in range(limit):
        with pytest.raises(LoginFailed):
            login(app, session, f"nobody{i}", "wrong password!", ip=IP)
    with pytest.raises(TooManyAttempts) as exc:
        login(app, session, ip=IP)  # even with the right password
    assert 0 < exc.value.retry_after <= 3600
    assert "te veel pogingen" in str(exc.value.message)
    assert login(app, session, ip=OTHER_IP).username == "Jan.Jansen"


def test_per_ip_throttle_counts_an_ipv6_subscriber_prefix_as_one(
    app: Flask, session: Session
) -> None:
    make_account(app, session)
    limit = get_policies(app).accounts.lockout.per_ip_per_hour
    for i in range(limit):
        with pytest.raises(LoginFailed):
            login(app, session, "nobody", "wrong password!", ip=f"2001:db8:1:2::{i + 1:x}")
    with pytest.raises(TooManyAttempts):
        login(app, session, ip="2001:db8:1:2:ffff::1")
    login(app, session, ip="2001:db8:1:3::1")
    # Hostile address strings are counted, never crash.
    with pytest.raises(LoginFailed):
        login(app, session, "nobody", "x", ip="not-an-ip\x00" * 50)


def test_the_throttle_window_rolls_over(
    app: Flask, session: Session, frozen_clock: None
) -> None:
    limit = get_policies(app).accounts.lockout.per_ip_per_hour
    for _ in range(limit):
        with pytest.raises(LoginFailed):
            login(app, session, "nobody", "wrong password!")
    with pytest.raises(TooManyAttempts):
        login(app, session, "nobody", "wrong password!")
    clock.advance(timedelta(hours=2))
    with pytest.raises(LoginFailed):
        login(app, session, "nobody", "wrong password!")


def test_store_down_refuses_without_touching_the_account(
    app: Flask, session: Session, monkeypatch: pytest.MonkeyPatch, argon2_calls: list[str]
) -> None:
    account = make_account(app, session, status=AccountStatus.PENDING_ACTIVATION)
    code = add_code(app, session, account)

    def down(*_args: Any, **_kwargs: Any) -> int:
        raise StoreUnavailable("test")

    monkeypatch.setattr(get_store(app), "incr", down)
    monkeypatch.setattr(get_store(app), "run", down)
    settings = get_settings(app)
    calls: list[Callable[[], object]] = [
        lambda: login(app, session),
        lambda: activate(app, session, code),
        lambda: service.start_unblock(session, settings, app, username="jan.jansen",
                                      password=PASSWORD, ip=IP),
        lambda: service.start_recovery(session, settings, app, username="jan.jansen", ip=IP),
        lambda: service.finish_unblock(session, settings, app, username="jan.jansen",
                                       code=code, ip=IP),
    ]
    for call in calls:
        with pytest.raises(TryLater) as exc:
            call()
        assert "over een paar minuten opnieuw" in str(exc.value.message)
    assert argon2_calls == []
    assert fresh(session, account).status == AccountStatus.PENDING_ACTIVATION


# --- unblock end to end -------------------------------------------------------------------


def test_unblock_end_to_end_through_the_sms_outbox(app: Flask, session: Session) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    block(app, session)

    # Wrong password, unknown username, right password: the same (no) answer; only the last
    # sends a code.
    service.start_unblock(session, settings, app, username="jan.jansen",
                          password="wrong password!", ip=IP)
    service.start_unblock(session, settings, app, username="nobody", password=PASSWORD, ip=IP)
    service.wait_for_deliveries(app)
    assert sms_codes(app, "D") == []
    service.start_unblock(session, settings, app, username="jan.jansen", password=PASSWORD,
                          ip=IP)
    service.wait_for_deliveries(app)
    [code] = sms_codes(app, "D")
    [message] = outbox(settings.sms_outbox)
    assert message["to"] == PHONE and message["channel"] == "sms"
    assert message["text"].endswith(f"@127.0.0.1 #{code}") or message["text"].endswith(
        f"#{code}"
    )
    assert "unblock code" in message["text"]

    with pytest.raises(CodeRefused) as wrong:
        service.finish_unblock(session, settings, app, username="jan.jansen",
                               code=new_code(CodeKind.UNBLOCK), ip=IP)
    assert wrong.value.code == "invalid"
    unblocked = service.finish_unblock(session, settings, app, username="JAN.JANSEN",
                                       code=code.lower(), ip=IP)
    assert unblocked.blocked_until is None and unblocked.block_count == 0
    assert login(app, session).id == account.id
    with pytest.raises(CodeRefused) as replay:
        service.finish_unblock(session, settings, app, username="jan.jansen", code=code, ip=IP)
    assert replay.value.code == "used"
    kinds = [e.kind for e in list_events(session, account.id)]
    assert EventKind.UNBLOCKED in kinds and EventKind.BLOCKED in kinds


def test_unblock_code_only_for_a_blocked_account_with_a_verified_phone(
    app: Flask, session: Session
) -> None:
    settings = get_settings(app)
    make_account(app, session)  # not blocked
    make_account(app, session, "unverified", phone="+31612345699", phone_verified=False)
    block(app, session, "unverified")
    for username in ("jan.jansen", "unverified"):
        service.start_unblock(session, settings, app, username=username, password=PASSWORD,
                              ip=IP)
    service.wait_for_deliveries(app)
    assert outbox(settings.sms_outbox) == []


def test_expired_unblock_code(app: Flask, session: Session, frozen_clock: None) -> None:
    settings = get_settings(app)
    make_account(app, session)
    block(app, session)
    service.start_unblock(session, settings, app, username="jan.jansen", password=PASSWORD,
                          ip=IP)
    service.wait_for_deliveries(app)
    [code] = sms_codes(app, "D")
    clock.advance(service.UNBLOCK_CODE_VALIDITY + timedelta(seconds=1))
    with pytest.raises(CodeRefused) as exc:
        service.finish_unblock(session, settings, app, username="jan.jansen", code=code, ip=IP)
    assert exc.value.code == "expired" and "Mijn account deblokkeren" in str(exc.value.message)


# --- recovery end to end ------------------------------------------------------------------


def test_recovery_end_to_end_through_the_sms_and_mail_outboxes(
    app: Flask, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings(app)
    account = make_account(app, session)
    block(app, session)
    ended: list[str] = []
    hook = types.ModuleType("gateway.flows.sessions")
    hook.end_all_sessions = lambda _session, account_id: ended.append(account_id)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.flows.sessions", hook)

    assert service.start_recovery(session, settings, app, username="Jan.Jansen", ip=IP) is None
    service.wait_for_deliveries(app)
    [code] = sms_codes(app, "H")
    [token] = mail_tokens(app)
    [mail] = [m for m in outbox(settings.mail_outbox) if "token=" in m["text"]]
    assert mail["to"] == "jan@example.org" and token in mail["text"]
    assert code not in mail["text"]  # the two halves travel apart

    # Either half alone, or a half of someone else's, is refused.
    for h, t in ((code, "nope"), (new_code(CodeKind.RECOVERY), token), (code, "")):
        with pytest.raises(CodeRefused) as half:
            service.finish_recovery(session, settings, app, username="jan.jansen", h_code=h,
                                    email_token=t, new_password=NEW_PASSWORD, ip=IP)
        assert half.value.code == "invalid"
    # A weak password is refused and the codes stay usable.
    with pytest.raises(PasswordRejected) as weak:
        service.finish_recovery(session, settings, app, username="jan.jansen", h_code=code,
                                email_token=token, new_password="short", ip=IP)
    assert weak.value.messages
    recovered = service.finish_recovery(
        session, settings, app, username="jan.jansen", h_code=code, email_token=token,
        new_password=NEW_PASSWORD, ip=IP,
    )
    assert recovered.blocked_until is None and recovered.password_changed_at is not None
    assert ended == [account.id]
    assert login(app, session, password=NEW_PASSWORD).id == account.id
    with pytest.raises(LoginFailed):
        login(app, session, password=PASSWORD)
    with pytest.raises(CodeRefused) as replay:
        service.finish_recovery(session, settings, app, username="jan.jansen", h_code=code,
                                email_token=token, new_password="yet another phrase", ip=IP)
    assert replay.value.code == "used"
    subjects = [m["subject"] for m in outbox(settings.mail_outbox)]
    assert any("password has been changed" in s for s in subjects)
    assert EventKind.PASSWORD_CHANGED in [e.kind for e in list_events(session, account.id)]


def test_a_new_recovery_request_ends_the_previous_codes(
    app: Flask, session: Session, frozen_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings(app)
    make_account(app, session)
    # The SMS service's resend interval applies to recovery too, and Redis expires its key
    # in real time, which the frozen clock cannot move: leave that limit out here.
    monkeypatch.setattr(get_sms_service(app).limiter, "_resend", lambda *_a: lambda _r: None)
    service.start_recovery(session, settings, app, username="jan.jansen", ip=IP)
    service.wait_for_deliveries(app)
    clock.advance(timedelta(minutes=1))
    service.start_recovery(session, settings, app, username="jan.jansen", ip=IP)
    service.wait_for_deliveries(app)
    (old_code, new_code_), (old_token, new_token) = sms_codes(app, "H"), mail_tokens(app)
    with pytest.raises(CodeRefused) as mixed:
        service.finish_recovery(session, settings, app, username="jan.jansen", h_code=old_code,
                                email_token=new_token, new_password=NEW_PASSWORD, ip=IP)
    assert mixed.value.code == "expired"
    clock.advance(service.RECOVERY_CODE_VALIDITY)
    with pytest.raises(CodeRefused) as late:
        service.finish_recovery(session, settings, app, username="jan.jansen", h_code=new_code_,
                                email_token=new_token, new_password=NEW_PASSWORD, ip=IP)
    assert late.value.code == "expired" and "Wachtwoord vergeten" in str(late.value.message)
    del old_token


def test_recovery_needs_a_verified_email_and_phone(app: Flask, session: Session) -> None:
    settings = get_settings(app)
    make_account(app, session, "no.email", email=None)
    make_account(app, session, "unverified.email", phone="+31612345601", email_verified=False)
    make_account(app, session, "unverified.phone", phone="+31612345602", phone_verified=False)
    for username in ("no.email", "unverified.email", "unverified.phone", "unknown.user"):
        service.start_recovery(session, settings, app, username=username, ip=IP)
    service.wait_for_deliveries(app)
    assert outbox(settings.sms_outbox) == [] and outbox(settings.mail_outbox) == []
    assert "naar een balie" in str(service.RECOVERY_REQUESTED)


def test_recovery_requests_are_throttled_per_ip(app: Flask, session: Session) -> None:
    settings = get_settings(app)
    for _ in range(get_policies(app).accounts.lockout.per_ip_per_hour):
        service.start_recovery(session, settings, app, username="unknown.user", ip=IP)
    with pytest.raises(TooManyAttempts):
        service.start_recovery(session, settings, app, username="unknown.user", ip=IP)


# --- history ------------------------------------------------------------------------------


def test_history_lists_newest_first_and_cleans_what_it_stores(
    app: Flask, session: Session, frozen_clock: None
) -> None:
    account = make_account(app, session)
    other = make_account(app, session, "piet.pieters", phone="+31612345611")
    record_event(session, account.id, EventKind.LOGIN, service="Belasting\x00dienst\n" * 40,
                 level="midden", route="sms")
    clock.advance(timedelta(seconds=1))
    record_event(session, account.id, EventKind.PASSWORD_CHANGED)
    record_event(session, other.id, EventKind.LOGIN)
    session.commit()
    events = list_events(session, account.id)
    assert [e.kind for e in events] == [EventKind.PASSWORD_CHANGED, EventKind.LOGIN]
    assert events[1].service is not None and len(events[1].service) == 200
    assert "\x00" not in events[1].service and "\n" not in events[1].service
    assert len(list_events(session, account.id, limit=1)) == 1
    assert len(list_events(session, account.id, limit=-5)) == 1
    with pytest.raises(ValueError):
        record_event(session, account.id, "made_up_kind")
    assert session.scalar(sa.select(sa.func.count()).select_from(AccountEvent)) == 3


def test_username_key_matches_how_applications_store_it() -> None:
    from gateway.desks.apply import username_key

    for raw in ("Jan.Jansen", "  mixed.CASE ", "ÉLODIE.x"):
        assert service.username_key(raw) == username_key(raw)
    assert service.username_key("x" * 10_000) is None
    assert service.username_key("   ") is None


def test_a_delivery_asked_for_in_a_request_starts_when_the_request_is_over(
    app: Flask,
) -> None:
    """A known username's code delivery must not compete with its own answer (timing)."""
    from gateway.accounts.service import _in_background, wait_for_deliveries

    ran: list[str] = []

    def job(_app: Flask, label: str) -> None:
        ran.append(label)

    with app.test_request_context("/account/recover", method="POST"):
        _in_background(app, job, "in a request")
        wait_for_deliveries(app)
        assert ran == []  # not even handed to the worker yet
    wait_for_deliveries(app)  # the request's teardown started it
    assert ran == ["in a request"]
    with app.app_context():
        _in_background(app, job, "outside a request")
    wait_for_deliveries(app)
    assert ran == ["in a request", "outside a request"]


def test_a_delivery_that_cannot_start_does_not_break_the_answer(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def refused(*_args: Any) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    monkeypatch.setattr(service, "_submit", refused)
    with (
        caplog.at_level(logging.ERROR, logger="gateway.accounts.service"),
        app.test_request_context("/account/recover", method="POST"),
    ):
        service._in_background(app, lambda _app: None)
    assert "account code delivery not started (RuntimeError)" in caplog.messages
