"""One-time codes (gateway.sms.codes): single use, bound, expiring, three attempts, HMAC only."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway import clock
from gateway.app import get_settings
from gateway.db import Database, get_db
from gateway.settings import Settings
from gateway.sms import codes
from gateway.sms.codes import MAX_ATTEMPTS, OneTimeCode, VerifyOutcome

TTL = timedelta(minutes=5)


@pytest.fixture
def db(app: Flask) -> Database:
    return get_db(app)


@pytest.fixture
def cfg(app: Flask) -> Settings:
    return get_settings(app)


def issue(db: Database, cfg: Settings, purpose: str = "login", flow_id: str = "flow-1") -> str:
    with db.begin() as s:
        return codes.issue(s, cfg, purpose=purpose, flow_id=flow_id, ttl=TTL)


def verify(
    db: Database, cfg: Settings, code: object, purpose: str = "login", flow_id: str = "flow-1"
) -> VerifyOutcome:
    with db.begin() as s:
        return codes.verify(s, cfg, purpose=purpose, flow_id=flow_id, code=code)


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def attempts(db: Database) -> list[int]:
    with db.begin() as s:
        return [
            r.attempts for r in s.scalars(sa.select(OneTimeCode).order_by(OneTimeCode.created_at))
        ]


def test_code_is_six_ascii_digits_and_varies(db: Database, cfg: Settings) -> None:
    seen = {issue(db, cfg, flow_id=f"f{i}") for i in range(20)}
    assert all(len(c) == 6 and c.isascii() and c.isdigit() for c in seen)
    assert len(seen) > 15  # 20 draws from 10**6 values practically never collide this much


def test_right_code_once_then_replay_refused(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    assert verify(db, cfg, code) is VerifyOutcome.OK
    assert verify(db, cfg, code) is VerifyOutcome.USED
    assert verify(db, cfg, other_code(code)) is VerifyOutcome.USED


def test_expiry(db: Database, cfg: Settings, frozen_clock: None) -> None:
    code = issue(db, cfg)
    clock.advance(TTL - timedelta(seconds=1))
    assert verify(db, cfg, other_code(code)) is VerifyOutcome.WRONG
    clock.advance(timedelta(seconds=1))
    assert verify(db, cfg, code) is VerifyOutcome.EXPIRED
    clock.advance(timedelta(days=1))
    assert verify(db, cfg, code) is VerifyOutcome.EXPIRED


def test_wrong_purpose_refused(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg, purpose="login")
    assert verify(db, cfg, code, purpose="registration") is VerifyOutcome.NO_CODE
    # Even when the other purpose has a live code of its own, the login code is not it.
    issue(db, cfg, purpose="registration")
    reg_verdict = verify(db, cfg, code, purpose="registration")
    assert reg_verdict in (VerifyOutcome.WRONG, VerifyOutcome.OK)
    if reg_verdict is VerifyOutcome.OK:  # the two random codes happened to be equal (1e-6)
        pytest.skip("random collision")
    assert verify(db, cfg, code, purpose="login") is VerifyOutcome.OK


def test_other_flow_refused(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg, flow_id="flow-A")
    assert verify(db, cfg, code, flow_id="flow-B") is VerifyOutcome.NO_CODE
    assert verify(db, cfg, code, flow_id="flow-a") is VerifyOutcome.NO_CODE
    assert verify(db, cfg, code, flow_id="flow-A") is VerifyOutcome.OK


def test_hmac_binds_purpose_and_flow(db: Database, cfg: Settings) -> None:
    """A stored HMAC copied onto another flow's row does not make the code valid there."""
    code = issue(db, cfg, flow_id="victim")
    issue(db, cfg, flow_id="attacker")
    with db.begin() as s:
        victim = s.scalars(sa.select(OneTimeCode).filter_by(flow_id="victim")).one()
        s.execute(
            sa.update(OneTimeCode)
            .where(OneTimeCode.flow_id == "attacker")
            .values(code_hmac=victim.code_hmac)
        )
    assert verify(db, cfg, code, flow_id="attacker") is VerifyOutcome.WRONG


def test_fourth_attempt_refused_even_when_right(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    for _ in range(MAX_ATTEMPTS):
        assert verify(db, cfg, other_code(code)) is VerifyOutcome.WRONG
    assert verify(db, cfg, code) is VerifyOutcome.TOO_MANY_ATTEMPTS
    assert attempts(db) == [MAX_ATTEMPTS]


def test_third_attempt_may_be_right(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    for _ in range(MAX_ATTEMPTS - 1):
        assert verify(db, cfg, other_code(code)) is VerifyOutcome.WRONG
    assert verify(db, cfg, code) is VerifyOutcome.OK


def test_old_code_after_resend_refused(db: Database, cfg: Settings) -> None:
    old = issue(db, cfg)
    new = issue(db, cfg)
    if old == new:
        pytest.skip("random collision")
    assert verify(db, cfg, old) is VerifyOutcome.WRONG
    assert verify(db, cfg, new) is VerifyOutcome.OK
    with db.begin() as s:
        rows = s.scalars(sa.select(OneTimeCode).order_by(OneTimeCode.created_at)).all()
    assert len(rows) == 2
    assert rows[0].superseded_at is not None and rows[0].used_at is None
    assert rows[1].used_at is not None


def test_resend_restores_attempts(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    for _ in range(MAX_ATTEMPTS):
        verify(db, cfg, other_code(code))
    new = issue(db, cfg)
    assert verify(db, cfg, new) is VerifyOutcome.OK


def test_parallel_wrong_guesses_never_exceed_the_limit(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    wrong = other_code(code)
    outcomes = run_parallel(12, lambda: verify(db, cfg, wrong))
    assert outcomes.count(VerifyOutcome.WRONG) == MAX_ATTEMPTS
    assert outcomes.count(VerifyOutcome.TOO_MANY_ATTEMPTS) == 12 - MAX_ATTEMPTS
    assert attempts(db) == [MAX_ATTEMPTS]
    assert verify(db, cfg, code) is VerifyOutcome.TOO_MANY_ATTEMPTS


def test_parallel_right_guesses_log_in_once(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    outcomes = run_parallel(8, lambda: verify(db, cfg, code))
    assert outcomes.count(VerifyOutcome.OK) == 1
    assert set(outcomes) <= {VerifyOutcome.OK, VerifyOutcome.USED}


def test_parallel_resends_leave_one_live_code(db: Database, cfg: Settings) -> None:
    def issue_one() -> codes.IssuedCode:
        with db.begin() as s:
            return codes.issue_code(s, cfg, purpose="login", flow_id="flow-1", ttl=TTL)

    issued = run_parallel(6, issue_one)
    with db.begin() as s:
        live = s.scalars(
            sa.select(OneTimeCode).where(
                OneTimeCode.superseded_at.is_(None), OneTimeCode.used_at.is_(None)
            )
        ).all()
        assert s.scalar(sa.select(sa.func.count()).select_from(OneTimeCode)) == 6
    assert len(live) == 1
    (winner,) = [i for i in issued if i.id == live[0].id]
    assert verify(db, cfg, winner.code) is VerifyOutcome.OK


def test_nothing_stored_in_clear(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg, flow_id="flow-x")
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM one_time_codes")).all()
    assert len(rows) == 1
    assert not any(code in str(value) for value in rows[0])
    stored = rows[0]._mapping["code_hmac"]
    assert stored == codes.code_hmac(cfg, purpose="login", flow_id="flow-x", code=code)
    # Keyed: a plain hash of the same input, or another key, gives something else.
    other = cfg.with_overrides(secret_key=b"another-secret-" + b"y" * 40)
    assert stored != codes.code_hmac(other, purpose="login", flow_id="flow-x", code=code)


def test_issued_code_repr_hides_the_code(db: Database, cfg: Settings) -> None:
    with db.begin() as s:
        issued = codes.issue_code(s, cfg, purpose="login", flow_id="f", ttl=TTL)
    assert issued.code not in repr(issued)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        123456,
        b"123456",
        "",
        "12345",
        "1234567",
        "abcdef",
        "12345a",
        "١٢٣٤٥٦",  # Arabic-Indic digits: isdigit() but not a code
        "123456\x00",
        "1" * 10_000,
        "' OR 1=1 --",
        "+12345",
        "12.3456",
    ],
)
def test_malformed_input_uses_no_attempt(db: Database, cfg: Settings, raw: object) -> None:
    code = issue(db, cfg)
    assert verify(db, cfg, raw) is VerifyOutcome.MALFORMED
    assert attempts(db) == [0]
    assert verify(db, cfg, code) is VerifyOutcome.OK


@pytest.mark.parametrize("typed", ["{} {}", "{}-{}", " {}{} ", "{}\u00a0{}"])
def test_typed_separators_accepted(db: Database, cfg: Settings, typed: str) -> None:
    code = issue(db, cfg)
    assert verify(db, cfg, typed.format(code[:3], code[3:])) is VerifyOutcome.OK


def test_full_width_digits_accepted(db: Database, cfg: Settings) -> None:
    code = issue(db, cfg)
    assert verify(db, cfg, "".join(chr(0xFF10 + int(d)) for d in code)) is VerifyOutcome.OK


def test_malformed_input_on_unknown_flow_says_nothing(db: Database, cfg: Settings) -> None:
    assert verify(db, cfg, "12", flow_id="nobody") is VerifyOutcome.MALFORMED
    assert verify(db, cfg, "123456", flow_id="nobody") is VerifyOutcome.NO_CODE


@pytest.mark.parametrize(
    ("purpose", "flow_id"),
    [("log|in", "f"), ("", "f"), ("Login", "f"), ("login", ""), ("login", "x" * 129)],
)
def test_bad_binding_is_a_programming_error(
    db: Database, cfg: Settings, purpose: str, flow_id: str
) -> None:
    with db.begin() as s, pytest.raises(ValueError):
        codes.issue(s, cfg, purpose=purpose, flow_id=flow_id, ttl=TTL)
    with db.begin() as s, pytest.raises(ValueError):
        codes.verify(s, cfg, purpose=purpose, flow_id=flow_id, code="123456")


@pytest.mark.parametrize(
    "ttl", [timedelta(0), timedelta(seconds=-1), timedelta(minutes=10, seconds=1)]
)
def test_lifetime_capped_at_ten_minutes(db: Database, cfg: Settings, ttl: timedelta) -> None:
    with db.begin() as s, pytest.raises(ValueError):
        codes.issue(s, cfg, purpose="login", flow_id="f", ttl=ttl)


def run_parallel(n: int, func: object) -> list:  # type: ignore[type-arg]
    assert callable(func)
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = func()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results
