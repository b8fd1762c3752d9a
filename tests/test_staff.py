"""Desk staff accounts: creation (service and CLI), password + TOTP login, lockout, replay,
password change (gateway.desks.staff, gateway.desks.cli_staff)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry
from gateway.cli import main
from gateway.db import get_db
from gateway.desks import staff as staff_service
from gateway.desks.models import StaffAccount
from gateway.desks.staff import (
    InvalidRole,
    InvalidUsername,
    NewStaff,
    PasswordChangeRefused,
    StaffLoginFailed,
    UnknownDesk,
    UsernameTaken,
    authenticate,
    change_password,
    create_staff,
)

GOOD_NEW_PASSWORD = "lantern quietly orbit 42 pebbles"


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    s = get_db(app).sessionmaker()
    yield s
    s.close()


def _create(app: Flask, session: Session, username: str = "j.devries", role: str = "officer",
            desk: str = "DE-BER") -> NewStaff:
    return create_staff(session, get_settings(app), get_policies(app), desk=desk,
                        username=username, role=role)


def _secret(new: NewStaff) -> str:
    return parse_qs(urlsplit(new.provisioning_uri).query)["secret"][0]


def _code(new: NewStaff, offset_steps: int = 0) -> str:
    at = clock.now() + timedelta(seconds=30 * offset_steps)
    return pyotp.TOTP(_secret(new)).at(at)


def _login(app: Flask, session: Session, username: str, password: str, totp: str) -> StaffAccount:
    return authenticate(session, get_settings(app), get_policies(app), username=username,
                        password=password, totp=totp)


def _row_text(app: Flask, username: str) -> str:
    """Every column of the staff row, as text, read straight from the database."""
    with get_db(app).engine.connect() as conn:
        row = conn.execute(
            sa.select(StaffAccount.__table__).where(StaffAccount.__table__.c.username == username)
        ).mappings().one()
    return " ".join(str(v) for v in row.values())


def _fresh(app: Flask, username: str) -> StaffAccount:
    with get_db(app).sessionmaker() as s:
        staff = s.scalars(sa.select(StaffAccount).where(StaffAccount.username == username)).one()
        s.expunge(staff)
        return staff


# --- creation -----------------------------------------------------------------------------


def test_create_returns_secrets_once_and_stores_none_in_clear(app: Flask, session: Session) -> None:
    new = _create(app, session, username="J.DeVries")
    assert new.staff.username == "j.devries"
    assert new.staff.role == "officer" and new.staff.desk == "DE-BER"
    assert new.staff.must_change_password is True
    assert len(new.one_time_password.replace("-", "")) >= 16

    uri = urlsplit(new.provisioning_uri)
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert unquote(uri.path) == "/abroad-gateway desk:j.devries"
    params = parse_qs(uri.query)
    assert params["issuer"] == ["abroad-gateway desk"]
    assert len(params["secret"][0]) == 32  # base32: 160 bits

    text = _row_text(app, "j.devries")
    assert new.one_time_password not in text
    assert _secret(new) not in text
    assert _secret(new).lower() not in text.lower()
    assert "$argon2id$" in text


def test_one_time_passwords_differ(app: Flask, session: Session) -> None:
    a = _create(app, session, username="alpha1")
    b = _create(app, session, username="bravo2")
    assert a.one_time_password != b.one_time_password
    assert _secret(a) != _secret(b)


def test_create_is_audited(app: Flask, session: Session) -> None:
    new = _create(app, session)
    query = sa.select(AuditEntry).where(AuditEntry.action == "staff.create")
    entries = session.scalars(query).all()
    assert [(e.desk, e.outcome, e.object_ref) for e in entries] == [
        ("DE-BER", "success", f"staff:{new.staff.id}")
    ]


BAD_CREATIONS: list[tuple[dict[str, str], type[Exception]]] = [
    ({"desk": "XX-NOPE"}, UnknownDesk),
    ({"desk": "de-ber"}, UnknownDesk),
    ({"desk": "' OR 1=1 --"}, UnknownDesk),
    ({"role": "admin"}, InvalidRole),
    ({"role": ""}, InvalidRole),
    ({"username": ""}, InvalidUsername),
    ({"username": "ab"}, InvalidUsername),
    ({"username": "x" * 65}, InvalidUsername),
    ({"username": "jan de vries"}, InvalidUsername),
    ({"username": "jаn.devries"}, InvalidUsername),  # Cyrillic a: a look-alike
    ({"username": "robert'); DROP TABLE staff_accounts;--"}, InvalidUsername),
    ({"username": "a\x00dmin"}, InvalidUsername),
]


def test_create_refuses_bad_input(app: Flask, session: Session) -> None:
    for kwargs, error in BAD_CREATIONS:
        args = {"desk": "DE-BER", "username": "valid.name", "role": "officer", **kwargs}
        with pytest.raises(error) as info:
            _create(app, session, **args)
        assert "\n" not in str(info.value)
    assert session.scalar(sa.select(sa.func.count()).select_from(StaffAccount)) == 0


def test_username_is_unique_case_insensitively(app: Flask, session: Session) -> None:
    _create(app, session, username="j.devries")
    with pytest.raises(UsernameTaken):
        _create(app, session, username="J.DEVRIES", desk="FR-PAR")
    assert session.scalar(sa.select(sa.func.count()).select_from(StaffAccount)) == 1


# --- login --------------------------------------------------------------------------------


def test_login_with_password_and_totp(app: Flask, session: Session, frozen_clock: None) -> None:
    new = _create(app, session)
    staff = _login(app, session, "J.DeVries", new.one_time_password, _code(new))
    assert staff.id == new.staff.id
    assert staff.last_login_at == clock.now()
    assert staff.failed_logins == 0
    outcomes = session.scalars(
        sa.select(AuditEntry.outcome).where(AuditEntry.action == "staff.login")
    ).all()
    assert outcomes == ["success"]


def test_totp_accepts_one_step_of_drift_not_two(app: Flask, session: Session,
                                                frozen_clock: None) -> None:
    new = _create(app, session)
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, _code(new, -2))
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, _code(new, +2))
    assert _login(app, session, "j.devries", new.one_time_password, _code(new, -1))
    clock.advance(timedelta(seconds=30))
    assert _login(app, session, "j.devries", new.one_time_password, _code(new, +1))


def test_every_failure_looks_the_same(app: Flask, session: Session, frozen_clock: None) -> None:
    new = _create(app, session)
    pw = new.one_time_password
    attempts = [
        ("nobody.here", pw, _code(new)),  # unknown user
        ("j.devries", pw + "x", _code(new)),  # wrong password
        ("j.devries", pw, "000000" if _code(new) != "000000" else "111111"),  # wrong code
        ("j.devries", pw, ""),
        ("j.devries", pw, "١٢٣٤٥٦"),  # Arabic-Indic digits
        ("j.devries", pw, "12345678901234567890"),
        ("x" * 10_000, pw, _code(new)),
        ("j.devries", "p" * 100_000, _code(new)),
        ("\x00", "\x00", "\x00"),
    ]
    messages = set()
    for username, password, code in attempts:
        with pytest.raises(StaffLoginFailed) as info:
            _login(app, session, username, password, code)
        messages.add(info.value.message)
    assert len(messages) == 1
    # Blocked by now (max_failures is 5): the right credentials get the very same answer.
    with pytest.raises(StaffLoginFailed) as info:
        _login(app, session, "j.devries", pw, _code(new))
    assert info.value.message in messages


def test_lockout_after_max_failures_until_block_ends(app: Flask, session: Session,
                                                     frozen_clock: None) -> None:
    rules = get_policies(app).accounts.staff
    new = _create(app, session)
    for _ in range(rules.max_failures - 1):
        with pytest.raises(StaffLoginFailed):
            _login(app, session, "j.devries", "wrong password", _code(new))
    assert _fresh(app, "j.devries").failed_logins == rules.max_failures - 1
    assert _fresh(app, "j.devries").blocked_until is None
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", "wrong password", _code(new))
    blocked_until = _fresh(app, "j.devries").blocked_until
    assert blocked_until == clock.now() + timedelta(minutes=rules.block_minutes)

    # Right password and code, still refused while blocked; the block is not extended.
    clock.advance(timedelta(minutes=rules.block_minutes) - timedelta(seconds=31))
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, _code(new))
    assert _fresh(app, "j.devries").blocked_until == blocked_until
    assert _fresh(app, "j.devries").last_totp_step < staff_service.totp_step(clock.now())

    clock.advance(timedelta(seconds=61))
    staff = _login(app, session, "j.devries", new.one_time_password, _code(new))
    assert staff.failed_logins == 0 and staff.blocked_until is None


def test_failures_are_counted_in_the_database_not_the_session(app: Flask,
                                                              frozen_clock: None) -> None:
    database = get_db(app)
    with database.sessionmaker() as s:
        new = _create(app, s)
    with database.sessionmaker() as a, database.sessionmaker() as b:
        # Session a keeps the row loaded (stale: no expiry on commit) while b counts two.
        a.scalars(sa.select(StaffAccount)).one()
        a.commit()
        for _ in range(2):
            with pytest.raises(StaffLoginFailed):
                _login(app, b, "j.devries", "wrong password", _code(new))
        with pytest.raises(StaffLoginFailed):
            _login(app, a, "j.devries", "wrong password", _code(new))
    assert _fresh(app, "j.devries").failed_logins == 3


def test_a_code_is_never_accepted_twice(app: Flask, session: Session, frozen_clock: None) -> None:
    new = _create(app, session)
    code = _code(new)
    _login(app, session, "j.devries", new.one_time_password, code)
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, code)
    # Nor an older code that is still inside the drift window.
    clock.advance(timedelta(seconds=30))
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, _code(new, -1))
    assert _login(app, session, "j.devries", new.one_time_password, _code(new))
    outcomes = session.scalars(
        sa.select(AuditEntry.outcome)
        .where(AuditEntry.action == "staff.login")
        .order_by(AuditEntry.seq)
    ).all()
    assert outcomes == ["success", "failure:totp_replay", "failure:totp_replay", "success"]


def test_deactivated_account_cannot_log_in(app: Flask, session: Session,
                                           frozen_clock: None) -> None:
    new = _create(app, session)
    new.staff.active = False
    session.commit()
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, _code(new))


def test_other_secret_key_cannot_open_the_totp_seed(app: Flask, make_app: object,
                                                    session: Session, frozen_clock: None) -> None:
    new = _create(app, session)
    other = get_settings(app).with_overrides(secret_key=b"another-secret-" + b"y" * 40)
    with pytest.raises(StaffLoginFailed):
        authenticate(session, other, get_policies(app), username="j.devries",
                     password=new.one_time_password, totp=_code(new))


# --- password change ----------------------------------------------------------------------


def test_change_password(app: Flask, session: Session, frozen_clock: None) -> None:
    new = _create(app, session)
    staff = _login(app, session, "j.devries", new.one_time_password, _code(new))
    settings, policies = get_settings(app), get_policies(app)

    refusals = [
        ("not the password", GOOD_NEW_PASSWORD),
        (new.one_time_password, "short"),
        (new.one_time_password, "password123"),
        (new.one_time_password, "j.devries"),
        (new.one_time_password, new.one_time_password),
    ]
    for current, wanted in refusals:
        with pytest.raises(PasswordChangeRefused) as info:
            change_password(session, settings, policies, staff=staff, current_password=current,
                            new_password=wanted)
        assert info.value.messages
    assert _fresh(app, "j.devries").must_change_password is True

    change_password(session, settings, policies, staff=staff,
                    current_password=new.one_time_password, new_password=GOOD_NEW_PASSWORD)
    assert _fresh(app, "j.devries").must_change_password is False
    clock.advance(timedelta(seconds=30))
    with pytest.raises(StaffLoginFailed):
        _login(app, session, "j.devries", new.one_time_password, _code(new))
    assert _login(app, session, "j.devries", GOOD_NEW_PASSWORD, _code(new))


# --- command line -------------------------------------------------------------------------


def _cli(app: Flask, *args: str) -> object:
    env = dict(get_settings(app).environ)
    return CliRunner().invoke(main, ["desk", "officer", "add", *args], env=env)


def test_cli_creates_an_officer(app: Flask) -> None:
    result = _cli(app, "--desk", "FR-PAR", "--username", "M.Dupont", "--role", "supervisor")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out: str = result.output  # type: ignore[attr-defined]
    uri = next(line.split(": ", 1)[1] for line in out.splitlines() if "otpauth://" in line)
    password = next(
        line.rsplit(": ", 1)[1] for line in out.splitlines() if line.startswith("One-time password")
    )
    assert uri.startswith("otpauth://totp/abroad-gateway%20desk:m.dupont?")
    assert "█" in out  # the QR code, drawn in text

    staff = _fresh(app, "m.dupont")
    assert (staff.desk, staff.role, staff.must_change_password) == ("FR-PAR", "supervisor", True)
    text = _row_text(app, "m.dupont")
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert password not in text and secret not in text

    with clock.frozen():
        code = pyotp.TOTP(secret).at(clock.now())
        with get_db(app).sessionmaker() as s:
            assert _login(app, s, "m.dupont", password, code).id == staff.id


BAD_CLI_ARGS = [
    ["--desk", "XX-NOPE", "--username", "someone"],
    ["--desk", "FR-PAR", "--username", "someone", "--role", "admin"],
    ["--desk", "FR-PAR", "--username", "bad name!"],
    ["--desk", "FR-PAR"],
    ["--username", "someone"],
    ["--desk", "FR-PAR", "--username", "taken.name"],
]


def test_cli_refuses_with_one_line(app: Flask) -> None:
    with get_db(app).sessionmaker() as s:
        _create(app, s, username="taken.name")
    for args in BAD_CLI_ARGS:
        result = _cli(app, *args)
        assert result.exit_code != 0, args  # type: ignore[attr-defined]
        lines = result.output.strip().splitlines()  # type: ignore[attr-defined]
        assert len(lines) == 1 and lines[0].startswith("gateway: "), (args, lines)
    with get_db(app).sessionmaker() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(StaffAccount)) == 1
