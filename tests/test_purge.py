"""`gateway purge` (gateway.purge): what goes, what stays, batches, dry run and the CLI."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway import purge as purging
from gateway.accounts.history import AccountEvent, EventKind, record_event
from gateway.accounts.models import Account, AccountCode
from gateway.app import get_policies
from gateway.cli import main
from gateway.db import Base, get_db
from gateway.desks.eidas_links import EidasLinkCode, purge_link_codes
from gateway.desks.models import FourEyesRequest, StaffAccount
from gateway.flows.login import LoginFlow, purge_flows
from gateway.flows.sessions import SsoSession
from gateway.idp.oidc import tokens
from gateway.idp.oidc.clients import OidcClient
from gateway.idp.oidc.tokens import OidcGrant, OidcToken
from gateway.settings import DEFAULT_POLICIES_DIR, Settings
from gateway.sms.codes import OneTimeCode
from gateway.sms.dispatch import get_dispatcher
from gateway.sms.models import SmsMessage
from gateway.sms.providers.base import dlr_token
from gateway.store import DatabaseStore, SharedState, get_store

DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
PURGED = (
    "one_time_codes", "login_flows", "account_codes", "eidas_link_codes", "oidc_tokens",
    "oidc_grants", "sso_sessions", "sms_messages", "shared_state",
)


@pytest.fixture
def session(app: Flask, frozen_clock: None) -> Iterator[Session]:
    with app.app_context(), get_db(app).sessionmaker() as s:
        yield s


def _id() -> str:
    return secrets.token_hex(8)


# --- rows ---------------------------------------------------------------------------------


def account(s: Session) -> Account:
    name = "user" + _id()
    row = Account(
        username=name, username_key=name, password_hash="x", surname="Jansen",
        given_names="Jan", birth_date=date(1980, 1, 1), nationality="NLD", language="en",
        status="active", created_at=clock.now(), failed_logins=0,
    )
    s.add(row)
    s.flush()
    return row


def staff(s: Session) -> StaffAccount:
    row = StaffAccount(
        desk="den-haag", username="staff" + _id(), password_hash="x", totp_secret_sealed="x",
        role="supervisor", created_at=clock.now(),
    )
    s.add(row)
    s.flush()
    return row


def client(s: Session) -> OidcClient:
    row = OidcClient(
        client_id="rp-" + _id(), public=False, token_endpoint_auth_method="client_secret_basic",
        redirect_uris="[]", min_level=10, sector_identifier="rp.example.nl",
        created_at=clock.now(),
    )
    s.add(row)
    s.flush()
    return row


def flow(s: Session, *, expired_ago: timedelta) -> LoginFlow:
    now = clock.now()
    row = LoginFlow(
        id=secrets.token_urlsafe(32), state="done", created_at=now - expired_ago - 15 * MINUTE,
        updated_at=now, expires_at=now - expired_ago, rp_id="rp", rp_request="{}",
        requested_level=10,
    )
    s.add(row)
    s.flush()
    return row


def otp(s: Session, *, expired_ago: timedelta, flow_id: str | None = None,
        purpose: str = "login") -> OneTimeCode:
    now = clock.now()
    row = OneTimeCode(
        id=_id(), purpose=purpose, flow_id=flow_id or _id(), code_hmac="0" * 64,
        created_at=now - expired_ago - 10 * MINUTE, expires_at=now - expired_ago, attempts=0,
        # Only one live code per purpose and flow: these are all used.
        used_at=now - expired_ago - 5 * MINUTE,
    )
    s.add(row)
    s.flush()
    return row


def letter_code(s: Session, owner: Account, *, expired_ago: timedelta) -> AccountCode:
    now = clock.now()
    row = AccountCode(
        account_id=owner.id, kind="D", code_hmac="0" * 64, channel="sms",
        created_at=now - expired_ago - 15 * MINUTE, expires_at=now - expired_ago, attempts=0,
    )
    s.add(row)
    s.flush()
    return row


def link_code(s: Session, *, expired_ago: timedelta) -> EidasLinkCode:
    now = clock.now()
    row = EidasLinkCode(
        code_hmac=secrets.token_hex(32), subject_key="eidas:" + _id(), identity_sealed="x",
        created_at=now - expired_ago - 14 * DAY, expires_at=now - expired_ago,
    )
    s.add(row)
    s.flush()
    return row


def four_eyes(s: Session, code: EidasLinkCode, status: str = "pending") -> FourEyesRequest:
    row = FourEyesRequest(
        kind="link_eidas", desk="den-haag", status=status, requested_by=staff(s).id,
        object_ref="account:x", payload={"link_code_id": code.id}, reason="test",
        created_at=clock.now() - 40 * DAY,
    )
    s.add(row)
    s.flush()
    return row


def grant(s: Session, rp: OidcClient, *, ended_ago: timedelta, sso: str | None = None,
          token_count: int = 2) -> OidcGrant:
    now = clock.now()
    created = now - ended_ago - 8 * timedelta(hours=1)
    row = OidcGrant(
        id=str(uuid.uuid4()), code_hash=secrets.token_hex(32), client_id=rp.client_id,
        redirect_uri="https://rp.example.nl/cb", code_challenge="x", nonce=None,
        scope="openid", sub="sub", account_id=None, level=10, amr="[]", auth_time=created,
        sso_session_id=sso, created_at=created, code_expires_at=created + MINUTE,
        code_used_at=created, revoked_at=None, expires_at=now - ended_ago,
    )
    s.add(row)
    s.flush()
    for i in range(token_count):
        s.add(OidcToken(
            token_hash=secrets.token_hex(32), grant_id=row.id,
            kind="refresh" if i % 2 else "access", created_at=created,
            expires_at=min(created + 5 * MINUTE, row.expires_at), used_at=None,
        ))
    s.flush()
    return row


def sso_session(s: Session, *, ended_ago: timedelta | None = None,
                seen_ago: timedelta = MINUTE, created_ago: timedelta = MINUTE) -> SsoSession:
    now = clock.now()
    row = SsoSession(
        id=secrets.token_hex(32), account_id=None, subject_key="eidas:" + _id(), route="eidas",
        level=10, amr="[]", auth_time=now - created_ago, created_at=now - created_ago,
        last_seen_at=now - seen_ago, rps="[]",
        ended_at=None if ended_ago is None else now - ended_ago,
        end_reason=None if ended_ago is None else "logout",
    )
    s.add(row)
    s.flush()
    return row


def sms(s: Session, *, age: timedelta, status: str = "delivered",
        updated_ago: timedelta | None = None) -> SmsMessage:
    """A delivery record queued `age` ago (last changed 5 seconds later, or `updated_ago`)."""
    now = clock.now()
    row = SmsMessage(
        id=str(uuid.uuid4()), to_hmac=secrets.token_hex(32), to_last2="42", country="NL",
        channel="sms", purpose="login", segments=1, idempotency_hash=secrets.token_hex(32),
        text_hmac=secrets.token_hex(32), status=status, provider="kannel", attempts=1,
        created_at=now - age,
        updated_at=now - (age - timedelta(seconds=5) if updated_ago is None else updated_ago),
    )
    s.add(row)
    s.flush()
    return row


def keep(app: Flask) -> timedelta:
    return timedelta(days=get_policies(app).sms.delivery_records.keep_days)


# Reads end their transaction at once: on SQLite an open one holds the write lock, which
# the purge (another connection) would wait for.


def ids(s: Session, key: Any) -> set[str]:
    found = set(s.scalars(sa.select(key)))
    s.commit()
    return found


def counts(s: Session) -> dict[str, int]:
    found = {
        table.name: s.scalar(sa.select(sa.func.count()).select_from(table)) or 0
        for table in Base.metadata.sorted_tables
    }
    s.commit()
    return found


def store_keys(app: Flask) -> set[str] | None:
    store = get_store(app)
    if not isinstance(store, DatabaseStore):
        return None
    with store.engine.connect() as conn:
        return set(conn.scalars(sa.select(SharedState.key)))


def idle(app: Flask) -> timedelta:
    return timedelta(minutes=get_policies(app).accounts.session.idle_minutes)


def absolute(app: Flask) -> timedelta:
    return timedelta(hours=get_policies(app).accounts.session.absolute_hours)


def zeros() -> dict[str, int]:
    return dict.fromkeys(PURGED, 0)


# --- a world with something of everything ---------------------------------------------------


class World:
    """Per table: rows past their retention (`old`) and rows that must stay (`kept`)."""

    def __init__(self, app: Flask, s: Session) -> None:
        self.old: dict[str, set[str]] = {}
        self.kept: dict[str, set[str]] = {}
        owner = account(s)
        rp = client(s)

        self.old["one_time_codes"] = {
            otp(s, expired_ago=DAY + MINUTE).id,
            otp(s, expired_ago=3 * DAY, purpose="phone_change").id,
        }
        self.kept["one_time_codes"] = {otp(s, expired_ago=DAY - MINUTE).id,
                                       otp(s, expired_ago=-5 * MINUTE).id}

        self.old["login_flows"] = {flow(s, expired_ago=DAY + MINUTE).id,
                                   flow(s, expired_ago=30 * DAY).id}
        self.kept["login_flows"] = {flow(s, expired_ago=DAY - MINUTE).id,
                                    flow(s, expired_ago=-10 * MINUTE).id}

        self.old["account_codes"] = {letter_code(s, owner, expired_ago=30 * DAY + MINUTE).id}
        self.kept["account_codes"] = {letter_code(s, owner, expired_ago=29 * DAY).id,
                                      letter_code(s, owner, expired_ago=-MINUTE).id}

        self.old["eidas_link_codes"] = {link_code(s, expired_ago=30 * DAY + MINUTE).id}
        self.kept["eidas_link_codes"] = {link_code(s, expired_ago=29 * DAY).id,
                                         link_code(s, expired_ago=-DAY).id}

        old_grants = [grant(s, rp, ended_ago=DAY + MINUTE), grant(s, rp, ended_ago=9 * DAY)]
        kept_grants = [grant(s, rp, ended_ago=DAY - MINUTE), grant(s, rp, ended_ago=-DAY)]
        self.old["oidc_grants"] = {g.id for g in old_grants}
        self.kept["oidc_grants"] = {g.id for g in kept_grants}
        self.old["oidc_tokens"] = self.tokens_of(s, self.old["oidc_grants"])
        self.kept["oidc_tokens"] = self.tokens_of(s, self.kept["oidc_grants"])

        retention, i, a = purging.SSO_SESSION_RETENTION, idle(app), absolute(app)
        self.old["sso_sessions"] = {
            sso_session(s, ended_ago=retention + MINUTE).id,
            # Never ended, idle (or past its absolute limit) for longer than that.
            sso_session(s, seen_ago=retention + i + MINUTE, created_ago=retention + i + MINUTE).id,
            sso_session(s, seen_ago=MINUTE, created_ago=retention + a + MINUTE).id,
        }
        self.kept["sso_sessions"] = {
            sso_session(s, ended_ago=retention - MINUTE).id,
            sso_session(s, seen_ago=retention + i - MINUTE, created_ago=retention + i).id,
            sso_session(s).id,
        }

        period = keep(app)
        self.old["sms_messages"] = {
            sms(s, age=period + MINUTE).id,
            # Still queued or sent long after: goes all the same.
            sms(s, age=400 * DAY, status="queued").id,
            sms(s, age=period + DAY, status="sent").id,
            # A late report changed it lately: the period counts from when it was queued.
            sms(s, age=period + MINUTE, updated_ago=MINUTE).id,
        }
        self.kept["sms_messages"] = {sms(s, age=period - MINUTE).id,
                                     sms(s, age=MINUTE, status="queued").id}

        # Never touched, however old.
        record_event(s, owner.id, EventKind.LOGIN, at=clock.now() - 400 * DAY)
        s.commit()

        store = get_store(app)
        if isinstance(store, DatabaseStore):
            for n in range(3):
                store.set(f"old:{n}", b"x", timedelta(seconds=1))
            store.set("live", b"x", timedelta(hours=1))
            self.old["shared_state"] = {f"old:{n}" for n in range(3)}
            self.kept["shared_state"] = {"live"}
        clock.advance(timedelta(seconds=2))

    @staticmethod
    def tokens_of(s: Session, grant_ids: set[str]) -> set[str]:
        return set(s.scalars(sa.select(OidcToken.token_hash)
                             .where(OidcToken.grant_id.in_(grant_ids))))

    def expected(self) -> dict[str, int]:
        return {name: len(self.old.get(name, ())) for name in PURGED}


KEYS: dict[str, Any] = {
    "one_time_codes": OneTimeCode.id, "login_flows": LoginFlow.id,
    "account_codes": AccountCode.id, "eidas_link_codes": EidasLinkCode.id,
    "oidc_tokens": OidcToken.token_hash, "oidc_grants": OidcGrant.id,
    "sso_sessions": SsoSession.id, "sms_messages": SmsMessage.id,
}


def left(app: Flask, s: Session, name: str) -> set[str]:
    if name == "shared_state":
        return store_keys(app) or set()
    return ids(s, KEYS[name])


# --- tests ----------------------------------------------------------------------------------


def test_removes_what_is_past_its_retention_and_nothing_else(app: Flask, session: Session) -> None:
    world = World(app, session)
    before = counts(session)

    removed = purging.purge_all(app)

    assert removed == world.expected()
    for name in PURGED:
        remaining = left(app, session, name)
        assert not remaining & world.old.get(name, set()), name
        assert world.kept.get(name, set()) <= remaining, name
    after = counts(session)
    for table, count in before.items():
        if table not in PURGED:
            assert after[table] == count, f"{table} must never be purged"
    assert after["account_events"] == 1 and AccountEvent.__tablename__ == "account_events"


def test_a_second_run_removes_nothing(app: Flask, session: Session) -> None:
    World(app, session)
    assert purging.purge_all(app) != zeros()
    assert purging.purge_all(app) == zeros()


def test_dry_run_counts_and_removes_nothing(app: Flask, session: Session) -> None:
    world = World(app, session)
    before = counts(session)
    keys_before = store_keys(app)

    assert purging.purge_all(app, dry_run=True) == world.expected()

    session.expire_all()
    assert counts(session) == before
    assert store_keys(app) == keys_before
    assert purging.purge_all(app) == world.expected()


def test_tiny_batches_still_remove_everything(app: Flask, session: Session) -> None:
    rp = client(session)
    owner = account(session)
    for _ in range(7):
        flow(session, expired_ago=2 * DAY)
        otp(session, expired_ago=2 * DAY)
        letter_code(session, owner, expired_ago=31 * DAY)
        link_code(session, expired_ago=31 * DAY)
        grant(session, rp, ended_ago=2 * DAY, token_count=3)
        sso_session(session, ended_ago=3 * DAY)
        sms(session, age=keep(app) + DAY)
    session.commit()
    store = get_store(app)
    if isinstance(store, DatabaseStore):
        for n in range(7):
            store.set(f"k{n}", b"x", timedelta(seconds=1))
    clock.advance(timedelta(seconds=2))

    removed = purging.purge_all(app, batch_size=2)

    expected = dict.fromkeys(PURGED, 7)
    expected["oidc_tokens"] = 21
    if not isinstance(store, DatabaseStore):
        expected["shared_state"] = 0
    assert removed == expected
    for name in PURGED:
        assert left(app, session, name) == set(), name


def test_two_purgers_at_once_remove_each_row_once(app: Flask, session: Session) -> None:
    """Two machines on one database: neither fails or waits for the other, every due row
    goes exactly once, nothing else goes."""
    rp = client(session)
    for _ in range(40):
        flow(session, expired_ago=2 * DAY)
        otp(session, expired_ago=2 * DAY)
        grant(session, rp, ended_ago=2 * DAY, token_count=1)
        sso_session(session, ended_ago=3 * DAY)
        sms(session, age=keep(app) + DAY)
    live = flow(session, expired_ago=-MINUTE).id
    session.commit()
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(purging.purge_all(app, batch_size=3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for name in ("login_flows", "one_time_codes", "oidc_grants", "oidc_tokens", "sso_sessions",
                 "sms_messages"):
        assert sum(r[name] for r in results) == 40, name
    assert left(app, session, "login_flows") == {live}
    assert left(app, session, "sso_sessions") == set()


def test_referenced_rows_stay_until_what_refers_to_them_goes(
    app: Flask, session: Session
) -> None:
    rp = client(session)
    # A flow past its retention that a login code still in its own retention refers to.
    referred_flow = flow(session, expired_ago=DAY + MINUTE)
    code = otp(session, expired_ago=DAY - MINUTE, flow_id=referred_flow.id)
    # An SSO session long ended whose grant is not due yet.
    ended = sso_session(session, ended_ago=3 * DAY)
    holder = grant(session, rp, ended_ago=DAY - MINUTE, sso=ended.id)
    # Link codes long expired that four-eyes requests name (pending or decided).
    named = [link_code(session, expired_ago=60 * DAY) for _ in range(2)]
    four_eyes(session, named[0], "pending")
    four_eyes(session, named[1], "approved")
    session.commit()

    removed = purging.purge_all(app)
    assert removed["login_flows"] == removed["sso_sessions"] == 0
    assert removed["eidas_link_codes"] == 0
    assert referred_flow.id in left(app, session, "login_flows")
    assert ended.id in left(app, session, "sso_sessions")

    # Once the referring rows are due, both go in one run, the referring row first.
    clock.advance(2 * MINUTE)
    removed = purging.purge_all(app)
    assert removed["one_time_codes"] == removed["login_flows"] == 1
    assert removed["oidc_grants"] == removed["sso_sessions"] == 1
    assert code.id not in left(app, session, "one_time_codes")
    assert holder.id not in left(app, session, "oidc_grants")
    assert {c.id for c in named} <= left(app, session, "eidas_link_codes")


def test_the_existing_purge_functions_keep_their_signatures(
    app: Flask, session: Session
) -> None:
    rp = client(session)
    flow(session, expired_ago=2 * DAY)
    kept = flow(session, expired_ago=DAY - MINUTE)
    grant(session, rp, ended_ago=2 * DAY)
    link_code(session, expired_ago=31 * DAY)
    named = link_code(session, expired_ago=31 * DAY)
    four_eyes(session, named)
    session.commit()

    assert purge_flows(session) == 1
    assert tokens.purge(session) == 1
    assert purge_link_codes(session) == 1
    session.commit()
    assert left(app, session, "login_flows") == {kept.id}
    assert left(app, session, "oidc_tokens") == set()  # by cascade
    assert left(app, session, "eidas_link_codes") == {named.id}
    assert purge_flows(session, older_than=timedelta(0), limit=5) == 1


def policies_with(tmp_path: Path, **delivery_records: Any) -> Path:
    """A copy of the shipped policies with `delivery_records` in sms.yaml replaced."""
    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    path = folder / "sms.yaml"
    data = yaml.safe_load(path.read_text())
    data["delivery_records"] = delivery_records
    path.write_text(yaml.safe_dump(data))
    return folder


def test_sms_retention_follows_the_policy(
    app: Flask, make_app: Callable[..., Flask], tmp_path: Path, session: Session
) -> None:
    assert keep(app) == 180 * DAY  # the shipped policy
    older = sms(session, age=70 * DAY + MINUTE)
    younger = sms(session, age=70 * DAY - MINUTE)
    session.commit()
    # The shipped 180 days keep both.
    assert purging.purge_all(app, dry_run=True)["sms_messages"] == 0

    short = make_app(policies_dir=policies_with(tmp_path, keep_days=70))
    assert keep(short) == 70 * DAY
    assert purging.purge_all(short, dry_run=True)["sms_messages"] == 1
    assert purging.purge_all(short)["sms_messages"] == 1
    assert left(app, session, "sms_messages") == {younger.id}
    assert older.id not in left(app, session, "sms_messages")


def test_a_report_for_a_removed_message_is_answered_and_changes_nothing(
    app: Flask, session: Session
) -> None:
    with get_db(app).begin() as s:
        message = get_dispatcher(app).send(s, to="+31612345678", channel="sms", text="Code 123456",
                                           purpose="login", idempotency_key="otp:purged")
    token = dlr_token(get_dispatcher(app).settings.derive_key("sms-dlr"), message.id)
    clock.advance(keep(app) + MINUTE)
    assert purging.purge_all(app)["sms_messages"] == 1

    client = app.test_client()
    for status in ("1", "2", "8", "16"):
        answer = client.get(f"/sms/dlr/kannel?id={message.id}&token={token}&status={status}")
        assert answer.status_code == 200, answer.data
        assert answer.data == b"ok\n"
    assert left(app, session, "sms_messages") == set()  # no row comes back


def test_rejects_a_batch_size_below_one(app: Flask) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        purging.purge_all(app, batch_size=-1)


# --- the command ----------------------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    env = {
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
        "GATEWAY_POLICIES": str(settings.policies_dir),
        "GATEWAY_REDIS_PREFIX": settings.redis_prefix,
    }
    if settings.redis_url:
        env["GATEWAY_REDIS_URL"] = settings.redis_url
    return env


def test_cli_prints_json_counts_and_is_safe_to_repeat(
    app: Flask, session: Session, settings: Settings
) -> None:
    world = World(app, session)
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--dry-run"], env=_env(settings))
    assert dry.exit_code == 0, dry.output
    expected = world.expected()
    assert json.loads(dry.output) == expected
    assert left(app, session, "login_flows") >= world.old["login_flows"]

    first = runner.invoke(main, ["purge", "--batch-size", "1"], env=_env(settings))
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == expected
    again = runner.invoke(main, ["purge"], env=_env(settings))
    assert again.exit_code == 0, again.output
    assert json.loads(again.output) == zeros()


def test_cli_fails_with_one_line(settings: Settings, tmp_path: Any) -> None:
    env = _env(settings)
    # A database without the tables: no traceback, exit 1.
    env["GATEWAY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    env.pop("GATEWAY_REDIS_URL", None)
    result = CliRunner().invoke(main, ["purge"], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: database error"), result.output
    bad = CliRunner().invoke(main, ["purge", "--batch-size", "0"], env=_env(settings))
    assert bad.exit_code == 2


def test_cli_stops_on_a_bad_retention_with_one_line(
    app: Flask, session: Session, settings: Settings, tmp_path: Path
) -> None:
    old = sms(session, age=400 * DAY).id
    session.commit()
    env = _env(settings)
    for bad in (30, 367, "180", True):
        env["GATEWAY_POLICIES"] = str(policies_with(tmp_path / str(bad), keep_days=bad))
        result = CliRunner().invoke(main, ["purge"], env=env)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith(f"gateway: {env['GATEWAY_POLICIES']}/sms.yaml: field "
                                   "delivery_records.keep_days: "), lines[0]
    assert left(app, session, "sms_messages") == {old}  # nothing removed
