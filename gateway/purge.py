"""Removal of expired ephemeral data: `gateway purge`, from cron (docs/operations.md).

Working state that has ended is deleted a while after it ended (data minimisation: several of
these rows hold personal data, sealed or hashed). Per table, what goes and when:

==================  =======================================================  ==============
table               removed when                                             why keep it so
                                                                             long
==================  =======================================================  ==============
one_time_codes      expired (any state: used, superseded, unused) more       a late try
                    than 1 day ago (codes live 10 minutes at most)           says "expired"
login_flows         expired more than 1 day ago (flows live 15 minutes)      a late redirect
                    and no one-time code that stays refers to it (login      says "expired",
                    codes are bound to the flow id)                          support
account_codes       letter/SMS/e-mail codes (A, D, H, E) expired more than   a late letter
                    30 days ago (activation letters are valid 20 days)       says "expired"
eidas_link_codes    expired more than 30 days ago and named by no four-eyes  the desk shows
                    request (`payload.link_code_id`, any status: the         the comparison
                    request shows the eID's identity the supervisor saw)     it decided on
oidc_tokens         with their grant (below), removed first in batches       -
oidc_grants         the family's absolute end (`expires_at`, 8 hours after   as before
                    the login) more than 1 day ago; its tokens go first      (tokens.purge)
sso_sessions        ended, or unusable (idle or absolute timeout of the      see below
                    accounts session policy), more than 2 days ago, and no
                    OIDC grant that stays refers to it (logout, back-channel
                    logout)
shared_state        expired (the database store only; Redis expires keys    nothing reads
                    itself): counters, replay caches, eIDAS pending          an expired row
                    requests, server-side sessions
sms_messages        queued more than `delivery_records.keep_days` ago        late delivery
                    (policies/sms.yaml, 62 to 366 days, default 180),        reports,
                    whatever the status                                      support,
                                                                             invoices
==================  =======================================================  ==============

Never removed here: the audit log (hash chain), accounts, account usage history
(account_events, shown in My account), desk records (applications, document checks,
four-eyes requests, staff accounts), the population register, and clients and service
providers.

SMS delivery records go by `created_at`, not `updated_at`: no record outlives its period
(whatever a provider reports later), once due a record stays due, and a status
change (each delivery report) stays a HOT update because no index covers a column it writes.
A message still `queued` or `sent` after the period will not change any more (a send gives
up after seconds; reports come within days) and goes too. Nothing refers to sms_messages
(no foreign key; a one-time code knows its message only through the idempotency key), so
its step may come anywhere; a delivery report for a removed record changes nothing and is
answered "ok" like any report that does not apply (`Dispatcher.apply_report`). The index on
`created_at` is measured, not assumed: with 400,000 records (3 % due, PostgreSQL 15) a run
without it ended in a scan of the whole table, about 55 ms and growing with the table, at
every cron run; with it, about 1 ms (migration 0002).

SSO sessions keep 2 days, one more than login flows: a flow refers to an SSO session
(`sso_session_id`) only while that session could be used, so a flow that refers to a session
past its 2 days expired more than 1 day ago itself, and went in an earlier step of the same
run. (That column has no index: a NOT EXISTS over it would scan the flows at every batch.)

How: each table in batches of `BATCH_SIZE`, each batch its own short transaction::

    DELETE FROM t WHERE key IN (SELECT key FROM t WHERE <due> LIMIT n FOR UPDATE SKIP LOCKED)
                  AND <due>

`<due>` is checked again on the row deleted, so a row that a request changed meanwhile (a
store key taken over, a session ended) stays unless it is still due. On PostgreSQL, SKIP
LOCKED leaves rows another purger (a second machine) or a request holds to them: two runs
never wait for or deadlock on each other, and each row goes once. SQLite has one writer
(every transaction there begins IMMEDIATE). Every cutoff is fixed when the run starts, so a
run ends however busy the gateway is; a run cut short leaves nothing half done and the next
one goes on. A referring row "that stays" is one not itself due: referring rows go in an
earlier step of the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import InstrumentedAttribute, Session

from gateway import clock
from gateway.accounts.models import AccountCode
from gateway.accounts.policy import SessionPolicy
from gateway.db import delete_due, in_batches
from gateway.desks.eidas_links import EidasLinkCode
from gateway.desks.models import FourEyesRequest
from gateway.flows.login import LoginFlow
from gateway.flows.sessions import SsoSession
from gateway.idp.oidc.tokens import OidcGrant, OidcToken
from gateway.policy import Policies
from gateway.sms.codes import OneTimeCode
from gateway.sms.models import SmsMessage
from gateway.sms.purposes import Purpose
from gateway.store import DatabaseStore, SharedState

log = logging.getLogger(__name__)

#: Rows per batch (one DELETE, one transaction).
BATCH_SIZE = 500

ONE_TIME_CODE_RETENTION = timedelta(days=1)
LOGIN_FLOW_RETENTION = timedelta(days=1)
ACCOUNT_CODE_RETENTION = timedelta(days=30)
LINK_CODE_RETENTION = timedelta(days=30)
OIDC_GRANT_RETENTION = timedelta(days=1)
SSO_SESSION_RETENTION = timedelta(days=2)

Condition = sa.ColumnElement[bool]


# --- what is due, per table --------------------------------------------------------------


def one_time_codes_due(now: datetime, older_than: timedelta = ONE_TIME_CODE_RETENTION
                       ) -> Condition:
    return OneTimeCode.expires_at < now - older_than


def login_flows_due(now: datetime, older_than: timedelta = LOGIN_FLOW_RETENTION) -> Condition:
    # Through ix_one_time_codes_purpose_flow_id.
    kept_code = sa.exists().where(
        OneTimeCode.purpose == Purpose.LOGIN.value,
        OneTimeCode.flow_id == LoginFlow.id,
        sa.not_(one_time_codes_due(now)),
    )
    return sa.and_(LoginFlow.expires_at < now - older_than, sa.not_(kept_code))


def account_codes_due(now: datetime, older_than: timedelta = ACCOUNT_CODE_RETENTION
                      ) -> Condition:
    return AccountCode.expires_at < now - older_than


def link_codes_due(now: datetime, older_than: timedelta = LINK_CODE_RETENTION) -> Condition:
    # Four-eyes requests are few (desk visits): the scan of their payloads is cheap.
    named = sa.exists().where(
        FourEyesRequest.payload["link_code_id"].as_string() == EidasLinkCode.id
    )
    return sa.and_(EidasLinkCode.expires_at < now - older_than, sa.not_(named))


def oidc_grants_due(now: datetime, older_than: timedelta = OIDC_GRANT_RETENTION) -> Condition:
    return OidcGrant.expires_at < now - older_than


def oidc_tokens_due(now: datetime, older_than: timedelta = OIDC_GRANT_RETENTION) -> Condition:
    return OidcToken.grant_id.in_(sa.select(OidcGrant.id).where(oidc_grants_due(now, older_than)))


def sso_sessions_due(
    now: datetime, policy: SessionPolicy, older_than: timedelta = SSO_SESSION_RETENTION
) -> Condition:
    cutoff = now - older_than
    idle = timedelta(minutes=policy.idle_minutes)
    absolute = timedelta(hours=policy.absolute_hours)
    ended = sa.or_(
        SsoSession.ended_at < cutoff,
        # Never ended explicitly: unusable since idle or absolute timeout (sessions.py
        # expiry_reason), which nothing undoes.
        sa.and_(
            SsoSession.ended_at.is_(None),
            sa.or_(
                SsoSession.last_seen_at < cutoff - idle,
                SsoSession.created_at < cutoff - absolute,
            ),
        ),
    )
    # Through ix_oidc_grants_sso_session_id.
    kept_grant = sa.exists().where(
        OidcGrant.sso_session_id == SsoSession.id, sa.not_(oidc_grants_due(now))
    )
    return sa.and_(ended, sa.not_(kept_grant))


def sms_messages_due(now: datetime, keep_days: int) -> Condition:
    # Through ix_sms_messages_created_at.
    return SmsMessage.created_at < now - timedelta(days=keep_days)


# --- batches ------------------------------------------------------------------------------


def count_due(db: Session | sa.Connection, key: InstrumentedAttribute[Any], due: Condition
              ) -> int:
    return int(db.execute(sa.select(sa.func.count(key)).where(due)).scalar_one())


@dataclass(frozen=True)
class _Table:
    name: str
    key: InstrumentedAttribute[Any]
    due: Condition


def _tables(now: datetime, policies: Policies) -> list[_Table]:
    """In run order: a row that refers to another goes before the row it refers to."""
    policy = policies.accounts.session
    keep_days = policies.sms.delivery_records.keep_days
    return [
        _Table("one_time_codes", OneTimeCode.id, one_time_codes_due(now)),
        _Table("login_flows", LoginFlow.id, login_flows_due(now)),
        _Table("account_codes", AccountCode.id, account_codes_due(now)),
        _Table("eidas_link_codes", EidasLinkCode.id, link_codes_due(now)),
        _Table("oidc_tokens", OidcToken.token_hash, oidc_tokens_due(now)),
        _Table("oidc_grants", OidcGrant.id, oidc_grants_due(now)),
        _Table("sso_sessions", SsoSession.id, sso_sessions_due(now, policy)),
        _Table("sms_messages", SmsMessage.id, sms_messages_due(now, keep_days)),
    ]


def purge_all(
    app: Flask,
    now: datetime | None = None,
    *,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> dict[str, int]:
    """Remove what is due in every table (see the module docstring); returns rows removed per
    table, or with `dry_run` the rows due now, removing nothing. `now` defaults to the clock.

    Idempotent and safe to run from several machines at once. Raises SQLAlchemyError (or
    StoreUnavailable) when the database cannot be used; batches done stay done.
    """
    from gateway.app import get_policies
    from gateway.db import get_db
    from gateway.store import get_store

    now = now or clock.now()
    size = batch_size or BATCH_SIZE
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    database = get_db(app)
    counts: dict[str, int] = {}
    for table in _tables(now, get_policies(app)):
        if dry_run:
            with database.engine.connect() as conn:
                counts[table.name] = count_due(conn, table.key, table.due)
            continue

        def step(limit: int, table: _Table = table) -> int:
            # A Core connection: the ORM session adds nothing to one DELETE but its CPU.
            with database.engine.begin() as conn:
                return delete_due(conn, table.key, table.due, limit)

        counts[table.name] = in_batches(step, size)

    store = get_store(app)
    if not isinstance(store, DatabaseStore):
        counts["shared_state"] = 0  # Redis expires keys itself
    elif dry_run:
        with store.engine.connect() as conn:
            counts["shared_state"] = count_due(
                conn, SharedState.key, SharedState.expires_at <= now
            )
    else:
        counts["shared_state"] = in_batches(
            lambda limit: store.purge_expired(limit, now=now), size
        )
    # Debug only: cron mails whatever reaches stderr; the command prints the counts.
    log.debug("purge%s: %s", " (dry run)" if dry_run else "", counts)
    return counts
