"""Expiry of unused accounts (issue 5 item 9): `expire_unused` and `gateway accounts expire`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts import service
from gateway.accounts.history import EventKind, list_events
from gateway.accounts.models import Account, AccountStatus
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry
from gateway.cli import main
from gateway.db import get_db
from gateway.settings import Settings
from tests.test_accounts_service import fast_policies_dir, fresh, make_account

DAY = timedelta(days=1)


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


def expire(app: Flask, session: Session) -> int:
    return service.expire_unused(
        session, clock.now(), get_policies(app).accounts, settings=get_settings(app)
    )


def test_expires_only_active_accounts_unused_for_the_policy_period(
    app: Flask, session: Session, frozen_clock: None
) -> None:
    days = get_policies(app).accounts.expire_unused_days
    now = clock.now()
    old_login = make_account(app, session, "old.login", phone="+31612345601",
                             last_login_at=now - (days + 1) * DAY)
    recent_login = make_account(app, session, "recent.login", phone="+31612345602",
                                last_login_at=now - (days - 1) * DAY)
    never_logged_in = make_account(app, session, "never.in", phone="+31612345603")
    never_logged_in.activated_at = now - (days + 1) * DAY
    # An old login but a recent activation does not happen; a recent login after an old
    # activation keeps the account.
    kept_by_login = make_account(app, session, "kept.login", phone="+31612345604",
                                 last_login_at=now - DAY)
    kept_by_login.activated_at = now - 10 * days * DAY
    pending = make_account(app, session, "pending.one", phone="+31612345605",
                           status=AccountStatus.PENDING_ACTIVATION)
    pending.created_at = now - 10 * days * DAY
    deactivated = make_account(app, session, "gone.away", phone="+31612345606",
                               status=AccountStatus.DEACTIVATED,
                               last_login_at=now - 10 * days * DAY)
    session.commit()

    assert expire(app, session) == 2
    status = {a.username: fresh(session, a).status
              for a in (old_login, recent_login, never_logged_in, kept_by_login, pending,
                        deactivated)}
    assert status == {
        "old.login": AccountStatus.EXPIRED,
        "recent.login": AccountStatus.ACTIVE,
        "never.in": AccountStatus.EXPIRED,
        "kept.login": AccountStatus.ACTIVE,
        "pending.one": AccountStatus.PENDING_ACTIVATION,
        "gone.away": AccountStatus.DEACTIVATED,
    }
    assert [e.kind for e in list_events(session, old_login.id)] == [EventKind.EXPIRED]
    audited = session.scalars(
        sa.select(AuditEntry.object_ref).where(AuditEntry.action == "account.expire")
    )
    assert sorted(audited) == sorted([f"account:{old_login.id}", f"account:{never_logged_in.id}"])

    # Idempotent: a second run changes nothing.
    assert expire(app, session) == 0
    # The boundary: exactly the period is not yet "older than".
    clock.advance(2 * DAY)
    assert expire(app, session) == 1
    assert fresh(session, recent_login).status == AccountStatus.EXPIRED


def test_expiry_runs_in_batches(
    app: Flask, session: Session, frozen_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "EXPIRY_BATCH", 2)
    days = get_policies(app).accounts.expire_unused_days
    for i in range(5):
        make_account(app, session, f"old.user{i}", phone=f"+3161234561{i}",
                     last_login_at=clock.now() - (days + 5) * DAY)
    assert expire(app, session) == 5
    count = session.scalar(
        sa.select(sa.func.count()).select_from(Account).where(
            Account.status == AccountStatus.EXPIRED
        )
    )
    assert count == 5


def _env(settings: Settings, fast_policies: Path) -> dict[str, str]:
    env = {
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
        "GATEWAY_POLICIES": str(fast_policies),
        "GATEWAY_REDIS_PREFIX": settings.redis_prefix,
    }
    if settings.redis_url:
        env["GATEWAY_REDIS_URL"] = settings.redis_url
    return env


def test_cli_expire_prints_the_count_and_is_safe_to_repeat(
    app: Flask, session: Session, settings: Settings, fast_policies: Path
) -> None:
    days = get_policies(app).accounts.expire_unused_days
    old = make_account(app, session, "old.login",
                       last_login_at=clock.now() - (days + 30) * DAY)
    runner = CliRunner()
    first = runner.invoke(main, ["accounts", "expire"], env=_env(settings, fast_policies))
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "1 accounts expired"
    assert fresh(session, old).status == AccountStatus.EXPIRED
    again = runner.invoke(main, ["accounts", "expire"], env=_env(settings, fast_policies))
    assert again.exit_code == 0 and again.output.strip() == "0 accounts expired"


def test_cli_expire_fails_with_one_line(
    settings: Settings, fast_policies: Path, tmp_path: Path
) -> None:
    env = _env(settings, fast_policies)
    # A database without the tables: the command must not print a traceback.
    env["GATEWAY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    env.pop("GATEWAY_REDIS_URL", None)
    result = CliRunner().invoke(main, ["accounts", "expire"], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: database error"), result.output
    bad = CliRunner().invoke(main, ["accounts", "expire"],
                             env={**env, "GATEWAY_DATABASE_URL": "nonsense://"})
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
