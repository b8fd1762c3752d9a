"""Identity routes: where a login flow gets its proof of identity (ARCHITECTURE.md, "routes").

An `IdentityRoute` names itself, says which assurance levels it can reach, and owns the
checks of its own credentials. The login flow (`gateway.flows.login`) picks a route, asks it
to check what the person typed, and turns its answer into an `AuthnResult`; a route never
sees the relying party or its protocol. The plug-in registry with entry points is a later
issue; `ROUTES` lists what exists today.

The one route so far, `desk_account`, is the DigiD-style account a desk enrolled:
password for basis; password plus a second factor for midden, where the factor is an SMS code
to a mobile, a spoken code by voice call to a landline (the account's verified phone, its
`phone_channel` says which), or a TOTP authenticator app when one is confirmed (NIST SP
800-63B 5.1.3.3 asks for an alternative to SMS). It cannot reach substantieel or hoog: those
need a document chip or a wallet, which are other routes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy.orm import Session

from gateway.accounts.models import Account
from gateway.i18n import lazy_gettext
from gateway.levels import Level
from gateway.policy import Policies
from gateway.settings import Settings


class SecondFactor(StrEnum):
    SMS = "sms"
    VOICE = "voice"
    TOTP = "totp"

    @property
    def amr(self) -> str:
        """The RFC 8176 method value."""
        return _AMR[self]


_AMR = {SecondFactor.SMS: "sms", SecondFactor.VOICE: "tel", SecondFactor.TOTP: "otp"}


class IdentityRoute(Protocol):
    """One way to prove who you are.

    Example (what `desk_account` declares)::

        class DeskAccountRoute:
            name = "desk_account"
            label = lazy_gettext("Username and password")
            levels = frozenset({Level.BASIS, Level.MIDDEN})
    """

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> Any:
        """A lazy_gettext string for the choose-route page."""
        ...

    @property
    def levels(self) -> frozenset[Level]: ...


class DeskAccountRoute:
    """Username and password, then SMS, voice or an authenticator app for midden."""

    name = "desk_account"
    label = lazy_gettext("Username and password")
    levels = frozenset({Level.BASIS, Level.MIDDEN})
    #: The level a password alone reaches.
    password_level = Level.BASIS

    def subject_key(self, account: Account) -> str:
        return f"account:{account.id}"

    def factors(self, db: Session, settings: Settings, account: Account) -> list[SecondFactor]:
        """The second factors this account can use now, SMS/voice first."""
        found: list[SecondFactor] = []
        if account.phone_e164 and account.phone_verified_at is not None:
            found.append(
                SecondFactor.VOICE if account.phone_channel == "voice" else SecondFactor.SMS
            )
        if has_confirmed_totp(db, settings, account):
            found.append(SecondFactor.TOTP)
        return found


def has_confirmed_totp(db: Session, settings: Settings, account: Account) -> bool:
    from gateway.accounts import totp

    return totp.has_totp(account)


def verify_totp(
    db: Session, settings: Settings, policies: Policies, account: Account, code: str
) -> bool:
    """Check an authenticator code (replay-protected, failures counted by
    gateway.accounts.totp); commits."""
    from gateway.accounts import totp

    return totp.verify_totp(db, settings, account, code, policies)


DESK_ACCOUNT = DeskAccountRoute()

#: Every route, by name. A route's levels decide whether it is offered for a request.
ROUTES: dict[str, DeskAccountRoute] = {DESK_ACCOUNT.name: DESK_ACCOUNT}


def routes_for(level: Level | None) -> list[DeskAccountRoute]:
    """Routes that can reach `level` (every route when None)."""
    return [r for r in ROUTES.values() if level is None or level in r.levels]


def reachable_levels() -> frozenset[Level]:
    levels: set[Level] = set()
    for route in ROUTES.values():
        levels |= route.levels
    return frozenset(levels)
