"""Suspending a citizen's account at a desk on suspected misuse, and lifting the suspension.

Why: someone says "another person is using my account" (password and phone stolen, a SIM
swap). Like DigiD's helpdesk ("blokkeren"), a desk must be able to stop it at once, so an
officer or a supervisor suspends without a second person: suspending only protects. Lifting
gives the account back to whoever holds its password, so it takes four eyes: an officer who
has checked the holder's identity document requests `lift_suspension`
(gateway.desks.four_eyes), and a supervisor of the same desk approves it; `lift_suspension`
here is what the approval executes.

What `suspend_account` does, in one transaction (a DeskError means nothing was written):

- sets `Account.suspended_at`; the reason, checked like a four-eyes reason, is kept beside the
  audit entry (`DeskActionReason`: the hash chain holds no free text);
- ends every open SSO session of the account (`end_all_sessions`, EndReason.ACCOUNT, so the
  OIDC back-channel listener revokes their grants and tells the relying parties) and revokes
  every other live OIDC grant of the account (a session that idled out earlier left its
  refresh tokens alive until their family ends);
- supersedes every live letter code of the account (unblock D, recovery H and its e-mail
  token, e-mail E) and every live one-time code bound to it (a desk phone change's code, the
  login codes of its login flows);
- writes the audit entry `account.suspended` (the staff member, their desk) and the history
  event `suspended`;

and then mails a notice to the account's address (a notice not sent never undoes it).

Everywhere else a suspended account is refused: the password step (gateway.accounts.service:
told only after the right password), unblock and recovery requests (answered as for anyone,
nothing sent), SSO reuse and the login flow's later steps (gateway.flows), the authenticator
app check, and an eID link (gateway.desks.eidas_links).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts.history import EventKind, record_event
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.accounts.service import reload
from gateway.desks.models import StaffAccount
from gateway.desks.service import (
    MAX_REASON_CHARS,
    PROCESSING_ROLES,
    DeskError,
    _clean_text,
    audit_record,
    require_role,
)
from gateway.i18n import lazy_gettext
from gateway.settings import Settings

log = logging.getLogger(__name__)

#: How history events of a desk's action are marked (gateway.accounts.history routes).
HISTORY_ROUTE = "desk"

SUSPENSION_MESSAGES: dict[str, Any] = {
    "bad_reason": lazy_gettext("Give a reason of at most 500 characters."),
    "already_suspended": lazy_gettext("This account is already suspended."),
    "not_active": lazy_gettext(
        "Only an active account can be suspended. This account is not active (not yet"
        " activated, deactivated or expired): nobody can log in with it."
    ),
    "not_suspended": lazy_gettext("This account is not suspended."),
}


def _error(code: str, field: str | None = None) -> DeskError:
    return DeskError(code, SUSPENSION_MESSAGES[code], field)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _revoke_grants(session: Session, account_id: str, now: datetime) -> None:
    """Every live OIDC grant of the account (and so its access and refresh tokens)."""
    from gateway.idp.oidc.tokens import OidcGrant

    session.execute(
        sa.update(OidcGrant)
        .where(OidcGrant.account_id == account_id, OidcGrant.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def _supersede_codes(session: Session, account_id: str, now: datetime) -> None:
    """End the account's live letter codes and the one-time codes bound to it."""
    from gateway.flows.login import LoginFlow
    from gateway.sms.codes import OneTimeCode

    session.execute(
        sa.update(AccountCode)
        .where(
            AccountCode.account_id == account_id,
            AccountCode.used_at.is_(None),
            AccountCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )
    flows_of_account = sa.select(LoginFlow.id).where(LoginFlow.account_id == account_id)
    session.execute(
        sa.update(OneTimeCode)
        .where(
            sa.or_(
                OneTimeCode.flow_id == f"account:{account_id}",
                OneTimeCode.flow_id.in_(flows_of_account.scalar_subquery()),
            ),
            OneTimeCode.used_at.is_(None),
            OneTimeCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )


def _notify(app: Flask, account: Account, template: str, when: str) -> None:
    from gateway.accounts.selfservice import notify

    notify(app, account.email, template, account.language, username=account.username,
           when=when)


def suspend_account(
    session: Session,
    settings: Settings,
    app: Flask,
    staff: StaffAccount,
    account: Account,
    reason: str,
) -> None:
    """Suspend an active account at once (officers and supervisors). Commits.

    Refusals (nothing written): `forbidden`, `bad_reason`, `already_suspended`,
    `not_active`.
    """
    from gateway.flows.sessions import EndReason, end_all_sessions

    require_role(staff, PROCESSING_ROLES)
    text = _clean_text(reason, limit=MAX_REASON_CHARS)
    if text is None:
        raise _error("bad_reason", "reason")
    now = clock.now()
    # One conditional UPDATE: two desks suspending at once cannot both succeed.
    changed = session.execute(
        sa.update(Account)
        .where(
            Account.id == account.id,
            Account.status == AccountStatus.ACTIVE.value,
            Account.suspended_at.is_(None),
        )
        .values(suspended_at=now)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(changed, "rowcount", 0) or 0) != 1:
        session.rollback()
        reload(session, account)
        if account.suspended_at is not None:
            raise _error("already_suspended", "username")
        raise _error("not_active", "username")
    end_all_sessions(session, account.id, EndReason.ACCOUNT)
    _revoke_grants(session, account.id, now)
    _supersede_codes(session, account.id, now)
    account_ref = f"account:{account.id}"
    record_event(session, account.id, EventKind.SUSPENDED, at=now, route=HISTORY_ROUTE)
    audit_record(session, settings, staff=staff, action="account.suspended",
                 object_ref=account_ref, outcome="success", reason=text)
    session.commit()
    reload(session, account)
    _notify(app, account, "notice_suspended", _when(now))


def check_suspended(account: Account) -> None:
    """`not_suspended` unless the account is suspended (a lift request needs one)."""
    if account.suspended_at is None:
        raise _error("not_suspended", "username")


def lift_suspension(
    session: Session, settings: Settings, supervisor: StaffAccount, account: Account
) -> None:
    """Clear the suspension: what an approved `lift_suspension` request executes, in the
    caller's transaction (the decision's). `not_suspended` when it was lifted meanwhile.
    The caller commits and then calls `notify_lifted`."""
    now = clock.now()
    changed = session.execute(
        sa.update(Account)
        .where(Account.id == account.id, Account.suspended_at.is_not(None))
        .values(suspended_at=None)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(changed, "rowcount", 0) or 0) != 1:
        raise _error("not_suspended", "username")
    record_event(session, account.id, EventKind.SUSPENSION_LIFTED, at=now, route=HISTORY_ROUTE)
    audit_record(session, settings, staff=supervisor, action="account.suspension_lifted",
                 object_ref=f"account:{account.id}", outcome="success")


def notify_lifted(session: Session, app: Flask, account: Account) -> None:
    """Mail the notice that the suspension was lifted (after the commit)."""
    reload(session, account)
    _notify(app, account, "notice_suspension_lifted", _when(clock.now()))
