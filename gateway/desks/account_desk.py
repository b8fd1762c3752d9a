"""The desk's account overview: /desk/account ("I cannot log in": what state is this account in?).

An officer or a supervisor types the account's username and the holder's date of birth; they
must match (`suspension_desk.holder_account`, the same check as /desk/suspend), so a misheard
username never shows a stranger's account. The page then shows what explains a refused login
and which desk action fits: the status (pending activation with or without a valid activation
code, active, deactivated, expired), a suspension, a block and its end, failed logins; the
phone (its last two digits only, as the SMS records keep it), the e-mail address (masked), the
authenticator app, the number of linked European eIDs; the dates of creation, activation, last
login and last password change; the last usage-history events; the four-eyes requests waiting
for this account (at any desk: `request_four_eyes` refuses a second one of the same kind); and
links to the pages of the actions that fit the state. Never the BSN (only whether one is
registered), the password hash, a TOTP secret or a code.

Rule (OWASP ASVS 7.1, the AVG/GDPR duty to log access to personal data): a lookup of a
citizen's account by staff is traceable. Each overview shown is an audit entry
`account.viewed` with the staff member and the account; a lookup that finds nothing (unknown
username, a date of birth badly typed or not matching) is an entry `account.lookup_failed`
without an object, so auditors can spot fishing. Lookups are limited only by the staff
session itself (login, idle and absolute timeouts). Auditors may not use the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import render_template, request
from sqlalchemy.orm import Session

from gateway import clock, db
from gateway.accounts.history import AccountEvent, list_events
from gateway.accounts.models import Account, AccountCode, AccountCodeKind, AccountStatus
from gateway.accounts.service import ACTIVATION_MAX_ATTEMPTS, _blocked
from gateway.accounts.totp import has_totp
from gateway.app import get_settings
from gateway.desks import eidas_links
from gateway.desks.auth import current_staff, staff_required
from gateway.desks.blueprint import desk, form_field, nav_item
from gateway.desks.models import FourEyesKind, FourEyesRequest, FourEyesStatus, StaffRole
from gateway.desks.service import audit_record
from gateway.desks.suspension_desk import holder_account
from gateway.desks.views import FOUR_EYES_LABELS
from gateway.i18n import lazy_gettext
from gateway.sms.phone import last_digits

PROCESSORS = (StaffRole.OFFICER.value, StaffRole.SUPERVISOR.value)
FIELDS = ("username", "birth_date")
#: How many usage-history events the overview lists, newest first.
HISTORY_SHOWN = 10
AUDIT_VIEWED = "account.viewed"

STATUSES = {
    AccountStatus.PENDING_ACTIVATION.value: lazy_gettext("Not yet activated"),
    AccountStatus.ACTIVE.value: lazy_gettext("Active"),
    AccountStatus.DEACTIVATED.value: lazy_gettext("Deactivated by its holder"),
    AccountStatus.EXPIRED.value: lazy_gettext("Expired"),
}
CHANNELS = {
    "sms": lazy_gettext("SMS"),
    "voice": lazy_gettext("Spoken message (voice call)"),
}


def masked_email(address: str | None) -> str:
    """The first character and the domain: "j…@example.org" (never the whole address)."""
    if not address or "@" not in address:
        return ""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}…@{domain}" if local and domain else ""


@dataclass(frozen=True)
class PendingRequest:
    kind: str
    desk: str
    created_at: datetime


@dataclass(frozen=True)
class Overview:
    """What the page shows of one account: no BSN, hash, secret or code in here."""

    account: Account
    status: str
    blocked: bool
    #: Expiry of the live activation code (pending accounts only); None when none is valid.
    activation_valid_until: datetime | None
    phone_digits: str
    email: str
    has_bsn: bool
    has_totp: bool
    eid_links: int
    events: list[AccountEvent]
    pending: list[PendingRequest]

    @property
    def pending_kinds(self) -> set[str]:
        return {item.kind for item in self.pending}

    @property
    def four_eyes_actions(self) -> list[str]:
        """The four-eyes requests that fit the account's state (what the decision would not
        refuse as `not_active`, `not_pending_activation` or `not_suspended`)."""
        actions = []
        if self.blocked:
            actions.append(FourEyesKind.UNBLOCK_ACCOUNT.value)
        if self.account.suspended_at is not None:
            actions.append(FourEyesKind.LIFT_SUSPENSION.value)
        if self.status == AccountStatus.ACTIVE.value:
            actions.append(FourEyesKind.CHANGE_PHONE.value)
        if self.status == AccountStatus.PENDING_ACTIVATION.value:
            actions.append(FourEyesKind.REISSUE_ACTIVATION.value)
        return actions

    @property
    def can_suspend(self) -> bool:
        """What `suspension.suspend_account` accepts: an active account not yet suspended."""
        return self.status == AccountStatus.ACTIVE.value and self.account.suspended_at is None


def _activation_valid_until(session: Session, account_id: str, now: datetime) -> datetime | None:
    """When the account's activation code that can still be typed expires (used, superseded,
    expired and tried-too-often codes do not count), or None."""
    return session.scalar(
        sa.select(sa.func.max(AccountCode.expires_at)).where(
            AccountCode.account_id == account_id,
            AccountCode.kind == AccountCodeKind.ACTIVATION.value,
            AccountCode.used_at.is_(None),
            AccountCode.superseded_at.is_(None),
            AccountCode.expires_at > now,
            AccountCode.attempts < ACTIVATION_MAX_ATTEMPTS,
        )
    )


def _pending_requests(session: Session, account_id: str) -> list[PendingRequest]:
    """The four-eyes requests waiting for a decision on this account, at any desk, oldest
    first (a second request of the same kind would be refused as `already_pending`)."""
    rows = session.execute(
        sa.select(FourEyesRequest.kind, FourEyesRequest.desk, FourEyesRequest.created_at)
        .where(
            FourEyesRequest.object_ref == f"account:{account_id}",
            FourEyesRequest.status == FourEyesStatus.PENDING.value,
        )
        .order_by(FourEyesRequest.created_at, FourEyesRequest.id)
    )
    return [PendingRequest(row.kind, row.desk, row.created_at) for row in rows]


def overview(session: Session, account: Account) -> Overview:
    """Everything the page shows of `account`, read now."""
    now = clock.now()
    pending_activation = account.status == AccountStatus.PENDING_ACTIVATION.value
    return Overview(
        account=account,
        status=account.status,
        blocked=_blocked(account, now),
        activation_valid_until=(
            _activation_valid_until(session, account.id, now) if pending_activation else None
        ),
        phone_digits=last_digits(account.phone_e164),
        email=masked_email(account.email),
        has_bsn=bool(account.bsn),
        has_totp=has_totp(account),
        eid_links=len(eidas_links.links_of(session, account.id)),
        events=list_events(session, account.id, limit=HISTORY_SHOWN),
        pending=_pending_requests(session, account.id),
    )


def _render(status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("errors", {})
    context.setdefault("values", {})
    context.setdefault("view", None)
    return render_template(
        "desk/account.html", statuses=STATUSES, channels=CHANNELS, kinds=FOUR_EYES_LABELS,
        AccountStatus=AccountStatus, **context,
    ), status


@desk.route("/account", methods=["GET", "POST"])
@staff_required(*PROCESSORS)
def account_overview() -> Any:
    if request.method == "GET":
        return _render()
    values = {name: form_field(name) for name in FIELDS}
    s = db.session()
    account, errors = holder_account(values["username"], values["birth_date"])
    if account is None:  # recorded as `account.lookup_failed` by holder_account
        return _render(422, values=values, errors=errors)
    view = overview(s, account)
    audit_record(s, get_settings(), staff=current_staff(), action=AUDIT_VIEWED,
                 object_ref=f"account:{account.id}", outcome="success")
    s.commit()
    # The overview is not a form to fill in again: only the username goes back to the page.
    return _render(view=view, values={"username": account.username})


nav_item("desk.account_overview", lazy_gettext("Look up an account"), *PROCESSORS)
