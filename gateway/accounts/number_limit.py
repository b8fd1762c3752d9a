"""How many accounts may share one phone number (issue 5 leftover; policies/sms.yaml
`max_accounts_per_number`: a household may share a phone, a number that gets codes for many
accounts is a sign of abuse or of a code-forwarding service).

Counted: accounts that can still log in or be activated (`pending_activation`, `active`);
closed ones (deactivated, expired) give their place back. Enforced where a number is given to
an account: the online application (so nobody applies in vain), the desk's approval (the
account is made then; the number may have filled up meanwhile), a phone change at the desk
(four-eyes `change_phone`, at request and at approval) and a phone change in My account (at
the start and again when the code is typed). Open applications are not counted: someone could
otherwise block a household's number for the 30 days a desk code lives by applying with it.

The refusal says that the number cannot be used and what to do, never whose number it is
or which accounts use it (the message is the same whoever asks). The count is one indexed
query (`accounts.phone_e164` has an index).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gateway.accounts.models import Account, AccountStatus
from gateway.i18n import lazy_gettext

#: Statuses that hold a place on their number.
COUNTED = (AccountStatus.PENDING_ACTIVATION.value, AccountStatus.ACTIVE.value)

NUMBER_FULL = lazy_gettext(
    "This phone number cannot be used: it is already in use for as many accounts as one"
    " number may have. Use another phone number."
)


class NumberFull(Exception):
    """The number already serves `max_accounts_per_number` accounts."""

    code = "number_full"

    def __init__(self) -> None:
        super().__init__(self.code)
        self.message: Any = NUMBER_FULL


def accounts_on_number(session: Session, e164: str, *, exclude: str | None = None) -> int:
    """Accounts (not closed) with this number, other than `exclude` (an account id)."""
    query = sa.select(sa.func.count()).select_from(Account).where(
        Account.phone_e164 == e164, Account.status.in_(COUNTED)
    )
    if exclude is not None:
        query = query.where(Account.id != exclude)
    return int(session.scalar(query) or 0)


def check_room(session: Session, maximum: int, e164: str, *, exclude: str | None = None) -> None:
    """Raise NumberFull when one more account on `e164` would exceed `maximum`."""
    if accounts_on_number(session, e164, exclude=exclude) >= maximum:
        raise NumberFull()
