""""My account" services for citizens: changes the owner makes, e-mail prompts and notices
(issue 5, items 7 and 8). No web pages: `gateway.accounts.views` calls these functions.

Rules, and where they come from:

- Re-authentication before a change (NIST SP 800-63B 7.1 "reauthentication", OWASP ASVS
  3.7.1): a change needs a login no older than `REAUTH_WINDOW`; changing the phone number or
  the authenticator app needs that login at midden (the factor being replaced must be proven,
  or a thief with only the password could add a factor of their own). Changing the password
  and deactivating also ask for the current password, so a browser left open is not enough.
- A wrong current password counts as a failed login (`gateway.accounts.service` lockout):
  someone who found an open session cannot guess on unthrottled.
- A password change ends every other SSO session of the account (OWASP Session Management
  Cheat Sheet, "Renew the session ... after password change"); deactivation ends all of them.
- A new phone number is proven by a 6-digit code sent to it (`gateway.sms.service`, purpose
  `phone_change`, bound to this account and this one change); the OLD number gets a plain
  notice (and the e-mail address a mail), so a hijacked change is noticed by the owner.
- A new e-mail address is proven by an E code (`gateway.desks.codes`) mailed to it: stored as
  an HMAC, single use, `EMAIL_CODE_VALIDITY`, at most `EMAIL_CODE_MAX_ATTEMPTS` wrong tries,
  and at most `EMAIL_CODES_PER_DAY` sent per account (nobody can use us to flood a mailbox).
  The old address keeps working until the code is typed, and then gets a notice.
- E-mail prompts (the promise to the Dutch parliament the issue quotes): an account without a
  verified address is asked at login to add one; every account is asked every
  `EMAIL_CONFIRM_INTERVAL` (six months) whether its address is still right.
- Notices by mail, in the account's language, for every change and, when the owner chose so,
  for every login (`notify_logins`). A notice that cannot be sent never undoes the change.

Functions commit their session unless they say otherwise; call them with a plain session
(the request's `gateway.db.session()`), not inside `Database.begin()`.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from io import BytesIO
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Flask
from markupsafe import Markup
from sqlalchemy.orm import Session

from gateway import audit, clock
from gateway.accounts import totp
from gateway.accounts.history import EventKind, record_event
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.accounts.number_limit import NumberFull, check_room
from gateway.accounts.passwords import check_new_password
from gateway.accounts.service import (
    AccountError,
    PasswordRejected,
    TryLater,
    count_failed_login,
    passwords_for,
    reload,
)
from gateway.app import get_policies
from gateway.desks.codes import (
    CodeKind,
    code_hmac,
    codes_equal,
    is_well_formed,
    new_code,
    normalise_code,
)
from gateway.flows import sessions as sso
from gateway.i18n import lazy_gettext
from gateway.levels import Level
from gateway.mail import MailError, get_mail, render_template
from gateway.mail.addresses import InvalidAddress, validate_email
from gateway.settings import Settings
from gateway.sms.codes import VerifyOutcome
from gateway.sms.dispatch import DeliveryFailed, get_dispatcher
from gateway.sms.limits import LimitExceeded, SendingUnavailable
from gateway.sms.messages import SERVICE_NAME, message_language
from gateway.sms.phone import Phone, PhoneRejected, last_digits, parse_phone
from gateway.sms.purposes import Purpose
from gateway.sms.service import get_sms_service
from gateway.store import StoreUnavailable, get_store

if TYPE_CHECKING:
    from gateway.desks.eidas_links import EidasLink
    from gateway.desks.models import StaffAccount

log = logging.getLogger(__name__)

# --- constants ----------------------------------------------------------------------------

#: A change needs a login this recent (NIST SP 800-63B 7.1 lets the verifier ask again; five
#: minutes is long enough to fill in one form, short enough that an unattended browser that
#: is still logged in cannot be used for it).
REAUTH_WINDOW = timedelta(minutes=5)
#: Mail abroad can be slow; a day to type the E code (the old address keeps working).
EMAIL_CODE_VALIDITY = timedelta(hours=24)
#: Wrong E codes per code row (28**8 codes: 5 tries is a chance of 1.3e-12).
EMAIL_CODE_MAX_ATTEMPTS = 5
#: E codes sent per account per day: each is a mail to an address nobody has proven yet.
EMAIL_CODES_PER_DAY = 5
#: How often everyone is asked whether the e-mail address is still right (the issue: "every
#: six months").
EMAIL_CONFIRM_INTERVAL = timedelta(days=182)
#: A phone change waits this long for its code (the SMS code's own TTL is shorter).
PHONE_CHANGE_VALIDITY = timedelta(minutes=15)
#: Login notices: one per login flow, remembered this long (longer than a flow lives).
LOGIN_NOTICE_TTL = timedelta(hours=1)
#: Route name in the usage history for changes made on these pages.
ROUTE = "my_account"
AUDIT_ROLE = "citizen"
EMAIL_CHANNEL = "email"
#: The SMS code of a phone change is bound to this (with a random part per change), so a
#: code of another change, or of the desk's four-eyes change ("account:<id>"), never fits.
PHONE_BINDING = "my-phone:{account_id}:{nonce}"

# --- errors -------------------------------------------------------------------------------

WRONG_PASSWORD_MESSAGE = lazy_gettext(
    "Your current password is not correct. After several wrong passwords your account is "
    "blocked for a while."
)
SAME_PHONE_MESSAGE = lazy_gettext("This is already your phone number. Enter the new number.")
SAME_EMAIL_MESSAGE = lazy_gettext(
    "This is already your confirmed e-mail address. Enter the new address."
)
TOO_MANY_EMAIL_CODES = lazy_gettext(
    "We have sent too many codes to e-mail addresses for your account today. Try again "
    "tomorrow."
)
NOT_CONFIRMED_MESSAGE = lazy_gettext("Tick the box to confirm that you want this.")
EMAIL_CODE_MESSAGES = {
    "invalid": lazy_gettext(
        "This code is not correct. Check the code (it starts with an E) in the e-mail we sent "
        "to your new address and try again."
    ),
    "expired": lazy_gettext(
        "This code is no longer valid. Enter your new e-mail address again to get a new code."
    ),
    "used": lazy_gettext(
        "This code has already been used. Enter your new e-mail address again if it has not "
        "been changed."
    ),
}
PHONE_CODE_MESSAGES = {
    VerifyOutcome.WRONG: lazy_gettext("This code is not correct. Check the code and try again."),
    VerifyOutcome.MALFORMED: lazy_gettext("Enter the 6 digits of the code."),
}
PHONE_CODE_GONE = lazy_gettext(
    "This code can no longer be used. Enter your new phone number again to get a new code."
)
TOTP_WRONG_MESSAGE = lazy_gettext(
    "This code is not correct, or the time to add the app has passed. Type the 6 digits your "
    "authenticator app shows now, or start again."
)


class WrongPassword(AccountError):
    """The current password typed to confirm a change is wrong (counted as a failed login)."""

    def __init__(self) -> None:
        super().__init__("wrong_password", WRONG_PASSWORD_MESSAGE)


class ChangeRefused(AccountError):
    """A change cannot be made as asked; `message` says what to do instead."""


class EmailCodeRefused(AccountError):
    """An E code was refused: `code` is "invalid", "expired" or "used"."""

    def __init__(self, code: str) -> None:
        super().__init__(code, EMAIL_CODE_MESSAGES[code])


# --- re-authentication ----------------------------------------------------------------------


class Reauth(StrEnum):
    """What a change needs before it may be made, given the SSO session."""

    OK = "ok"
    #: The session is at basis and the change needs midden: the second factor only.
    STEP_UP = "step_up"
    #: The last real authentication is too old: log in again (force_authn).
    FRESH = "fresh"


def reauth_needed(
    row: sso.SsoSession, *, level: Level = Level.BASIS, now: datetime | None = None
) -> Reauth:
    """Whether the session may make a change that needs `level` and a recent login.

    Example::

        reauth_needed(row, level=Level.MIDDEN) is Reauth.OK   # else send through the flow
    """
    now = now or clock.now()
    if row.level < int(level):
        return Reauth.STEP_UP
    if now - row.auth_time > REAUTH_WINDOW:
        return Reauth.FRESH
    return Reauth.OK


# --- helpers --------------------------------------------------------------------------------


def _audit(session: Session, settings: Settings, account: Account, action: str,
           outcome: str) -> None:
    audit.record(
        session, actor=f"account:{account.id}", role=AUDIT_ROLE, desk=None,
        action=action, object_ref=f"account:{account.id}", outcome=outcome, settings=settings,
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def notify(app: Flask, to: str | None, template: str, language: str, **context: Any) -> bool:
    """Mail a notice (`mail/<template>.<lang>.txt`); False when there is no address or it
    could not be sent. Never raises for a delivery problem: the change stands."""
    if not to:
        return False
    try:
        get_mail(app).send(render_template(to, template, message_language(language), **context))
    except MailError as exc:
        log.warning("notice %s not sent (%s)", template, exc.reason)
        return False
    return True


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _check_password(session: Session, settings: Settings, account: Account,
                    password: str, action: str) -> None:
    policies = get_policies()
    if not passwords_for(policies.accounts.password).verify(account.password_hash, password):
        count_failed_login(session, settings, policies, account)
        _audit(session, settings, account, action, "failure:wrong_password")
        session.commit()
        raise WrongPassword()


# --- password -------------------------------------------------------------------------------


def change_password(
    session: Session, settings: Settings, app: Flask, account: Account, *,
    current_password: str, new_password: str, keep_session: str | None,
) -> None:
    """Set a new password after checking the current one; ends every SSO session of the
    account except `keep_session` (this browser's) and mails a notice.

    Raises WrongPassword, PasswordRejected.
    """
    reload(session, account)
    _check_password(session, settings, account, current_password, "account.password_change")
    policy = get_policies(app).accounts.password
    problems = check_new_password(new_password, policy, account.username)
    if problems:
        raise PasswordRejected(problems)
    now = clock.now()
    session.execute(
        sa.update(Account).where(Account.id == account.id)
        .values(password_hash=passwords_for(policy).hash(new_password), password_changed_at=now)
        .execution_options(synchronize_session=False)
    )
    sso.end_all_sessions(session, account.id, keep=keep_session)
    record_event(session, account.id, EventKind.PASSWORD_CHANGED, at=now, route=ROUTE)
    _audit(session, settings, account, "account.password_change", "success")
    session.commit()
    reload(session, account)
    notify(app, account.email, "notice_password_changed", account.language,
           username=account.username, when=_when(now))


# --- phone ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingPhone:
    """A phone change waiting for its code; kept in the server-side session between pages."""

    account_id: str
    e164: str
    channel: str
    binding: str
    started_at: datetime

    def to_dict(self) -> dict[str, str]:
        return {
            "account_id": self.account_id, "e164": self.e164, "channel": self.channel,
            "binding": self.binding, "started_at": self.started_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: object) -> PendingPhone | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                account_id=str(data["account_id"]), e164=str(data["e164"]),
                channel=str(data["channel"]), binding=str(data["binding"]),
                started_at=datetime.fromisoformat(str(data["started_at"])),
            )
        except (KeyError, ValueError):
            return None

    def live(self, account: Account, now: datetime | None = None) -> bool:
        return (
            self.account_id == account.id
            and (now or clock.now()) - self.started_at < PHONE_CHANGE_VALIDITY
        )


def start_phone_change(
    session: Session, app: Flask, account: Account, raw_phone: str, *, ip: str | None,
    language: str,
) -> PendingPhone:
    """Check the new number against the phone policy and send it a code.

    Raises ChangeRefused (the same number, or one with no room for another account:
    gateway.accounts.number_limit), PhoneRejected, LimitExceeded, SendingUnavailable (each
    with a `.message` for the person).
    """
    phone = parse_phone(raw_phone, get_policies(app).sms)
    if phone.e164 == account.phone_e164:
        raise ChangeRefused("same_phone", SAME_PHONE_MESSAGE)
    _check_room(session, app, account, phone.e164)
    binding = PHONE_BINDING.format(account_id=account.id, nonce=secrets.token_urlsafe(12))
    # The SMS service runs transactions of its own; ours must not hold SQLite's write lock.
    session.commit()
    get_sms_service(app).send_code(
        purpose=Purpose.PHONE_CHANGE, flow_id=binding, phone=phone, language=language,
        account_id=account.id, ip=ip,
    )
    return PendingPhone(account_id=account.id, e164=phone.e164, channel=phone.channel.value,
                        binding=binding, started_at=clock.now())


def _check_room(session: Session, app: Flask, account: Account, e164: str) -> None:
    try:
        check_room(session, get_policies(app).sms.max_accounts_per_number, e164,
                   exclude=account.id)
    except NumberFull as exc:
        raise ChangeRefused(exc.code, exc.message) from None


PHONE_NOTICE_REFUSED = lazy_gettext(
    "Your phone number has not been changed: we must first send a notice to your current"
    " number, and too many messages have been sent to it (or we cannot send messages right"
    " now). Try again later; your code stays valid until it expires."
)

_PHONE_NOTICE = {
    "en": "{service}: the phone number of your account has just been changed to a number "
    "ending in {digits}. Not you? Contact a desk at once.",
    "nl": "{service}: het telefoonnummer van uw account is zojuist gewijzigd in een nummer "
    "dat eindigt op {digits}. Niet door u gedaan? Neem direct contact op met een balie.",
}


def _old_number_notice(app: Flask, account: Account, new_e164: str) -> tuple[Phone, str] | None:
    """The old number and the notice it is to get, counted against the SMS abuse limits
    (per number, per account, number range, country budget; no per-IP limit: the person is
    logged in and the notice is the gateway's own message). None when there is no other old
    number, or it no longer passes the phone policy (it could not get a code either).
    Raises ChangeRefused when the limits refuse the notice."""
    old_e164 = account.phone_e164
    if not old_e164 or old_e164 == new_e164:
        return None
    try:
        old = parse_phone(old_e164, get_policies(app).sms)
    except PhoneRejected:
        log.warning("phone change notice skipped: the old number fails the phone policy")
        return None
    text = _PHONE_NOTICE[message_language(account.language)].format(
        service=SERVICE_NAME, digits=last_digits(new_e164)
    )
    try:
        get_sms_service(app).count_message(phone=old, text=text, account_id=account.id)
    except (LimitExceeded, SendingUnavailable) as exc:
        log.warning("phone change refused: notice to the old number not allowed (%s)",
                    type(exc).__name__)
        raise ChangeRefused("notice_refused", PHONE_NOTICE_REFUSED) from None
    return old, text


def finish_phone_change(
    session: Session, settings: Settings, app: Flask, account: Account,
    pending: PendingPhone, code: str,
) -> None:
    """Check the code sent to the new number; on success the number is changed and verified,
    the old number gets an SMS notice and the e-mail address a mail.

    Raises ChangeRefused with a message for the person when the code is not accepted.
    """
    if not pending.live(account):
        raise ChangeRefused("expired", PHONE_CODE_GONE)
    # Again: the number may have filled up since the code was sent; the code stays usable.
    _check_room(session, app, account, pending.e164)
    session.commit()  # see start_phone_change
    # The old number's notice is counted against the SMS abuse limits before anything
    # changes, and a refusal refuses the change (the code stays usable): otherwise someone
    # who exhausted the old number's budget could move the account without its owner hearing.
    notice = _old_number_notice(app, account, pending.e164)
    outcome = get_sms_service(app).verify_code(
        purpose=Purpose.PHONE_CHANGE, flow_id=pending.binding, code=code
    )
    if outcome is not VerifyOutcome.OK:
        _audit(session, settings, account, "account.phone_change", f"failure:{outcome.value}")
        session.commit()
        raise ChangeRefused(outcome.value, PHONE_CODE_MESSAGES.get(outcome, PHONE_CODE_GONE))
    reload(session, account)
    old_e164, old_channel = account.phone_e164, account.phone_channel
    now = clock.now()
    session.execute(
        sa.update(Account).where(Account.id == account.id)
        .values(phone_e164=pending.e164, phone_channel=pending.channel, phone_verified_at=now)
        .execution_options(synchronize_session=False)
    )
    record_event(session, account.id, EventKind.PHONE_CHANGED, at=now, route=ROUTE)
    _audit(session, settings, account, "account.phone_change", "success")
    session.commit()
    reload(session, account)
    digits = last_digits(pending.e164)
    if notice is not None and old_e164 == notice[0].e164:
        try:
            get_dispatcher(app).send(
                session, to=old_e164, channel=old_channel or "sms", text=notice[1],
                purpose="phone_change_notice", idempotency_key=f"notice:{pending.binding}",
            )
        except DeliveryFailed:
            log.warning("phone change notice to the old number not delivered")
    notify(app, account.email, "notice_phone_changed", account.language,
           username=account.username, digits=digits, when=_when(now))


# --- e-mail ---------------------------------------------------------------------------------


def _email_codes(session: Session, account_id: str) -> list[AccountCode]:
    query = (
        sa.select(AccountCode)
        .where(AccountCode.account_id == account_id, AccountCode.kind == CodeKind.EMAIL.value)
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(query))


def start_email_change(
    session: Session, settings: Settings, app: Flask, account: Account, raw_address: object
) -> str:
    """Keep the new address as pending and mail an E code to it; returns the address.

    Raises InvalidAddress, ChangeRefused (the same verified address), TryLater,
    ChangeRefused("too_many") after EMAIL_CODES_PER_DAY codes.
    """
    address = validate_email(raw_address)
    reload(session, account)
    if (
        account.email is not None
        and account.email_verified_at is not None
        and account.email.casefold() == address.casefold()
    ):
        raise ChangeRefused("same_email", SAME_EMAIL_MESSAGE)
    try:
        sent = get_store(app).incr(f"myaccount:email-code:{account.id}", timedelta(days=1))
    except StoreUnavailable:
        raise TryLater() from None
    if sent > EMAIL_CODES_PER_DAY:
        _audit(session, settings, account, "account.email_code", "failure:too_many")
        session.commit()
        raise ChangeRefused("too_many", TOO_MANY_EMAIL_CODES)
    code = new_code(CodeKind.EMAIL)
    now = clock.now()
    session.execute(
        sa.update(AccountCode)
        .where(
            AccountCode.account_id == account.id, AccountCode.kind == CodeKind.EMAIL.value,
            AccountCode.used_at.is_(None), AccountCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )
    session.add(AccountCode(
        account_id=account.id, kind=CodeKind.EMAIL.value,
        code_hmac=code_hmac(settings, CodeKind.EMAIL, code), channel=EMAIL_CHANNEL,
        created_at=now, expires_at=now + EMAIL_CODE_VALIDITY, used_at=None,
        superseded_at=None, attempts=0,
    ))
    session.execute(
        sa.update(Account).where(Account.id == account.id).values(pending_email=address)
        .execution_options(synchronize_session=False)
    )
    _audit(session, settings, account, "account.email_code", "issued")
    session.commit()
    reload(session, account)
    hours = int(EMAIL_CODE_VALIDITY.total_seconds() // 3600)
    notify(app, address, "notice_email_code", account.language, username=account.username,
           code=code, hours=hours)
    return address


def finish_email_change(
    session: Session, settings: Settings, app: Flask, account: Account, raw_code: object
) -> None:
    """Check the E code; on success the pending address becomes the (verified, confirmed)
    address and the old address gets a notice. Raises EmailCodeRefused."""
    reload(session, account)
    code = normalise_code(raw_code) if isinstance(raw_code, str) else ""
    digest = code_hmac(settings, CodeKind.EMAIL, code) if is_well_formed(
        code, CodeKind.EMAIL) else None
    rows = _email_codes(session, account.id)
    found: AccountCode | None = None
    for row in rows:  # every row compared, in constant time
        if digest is not None and codes_equal(row.code_hmac, digest) and found is None:
            found = row
    now = clock.now()
    live = [r.id for r in rows if r.used_at is None and r.superseded_at is None]
    if found is None or account.pending_email is None:
        if live:
            session.execute(
                sa.update(AccountCode).where(AccountCode.id.in_(live))
                .values(attempts=AccountCode.attempts + 1)
                .execution_options(synchronize_session=False)
            )
        _audit(session, settings, account, "account.email_change", "failure:wrong_code")
        session.commit()
        raise EmailCodeRefused("invalid")
    refusal: str | None = None
    if found.used_at is not None:
        refusal = "used"
    elif (found.superseded_at is not None or found.expires_at <= now
          or found.attempts >= EMAIL_CODE_MAX_ATTEMPTS):
        refusal = "expired"
    else:
        used = session.execute(
            sa.update(AccountCode)
            .where(
                AccountCode.id == found.id, AccountCode.used_at.is_(None),
                AccountCode.superseded_at.is_(None), AccountCode.expires_at > now,
                AccountCode.attempts < EMAIL_CODE_MAX_ATTEMPTS,
            )
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(used) != 1:
            refusal = "used"
    if refusal is not None:
        session.rollback()
        _audit(session, settings, account, "account.email_change", f"failure:code_{refusal}")
        session.commit()
        raise EmailCodeRefused(refusal)
    old, new = account.email, account.pending_email
    session.execute(
        sa.update(Account).where(Account.id == account.id)
        .values(email=new, email_verified_at=now, email_confirmed_at=now, pending_email=None)
        .execution_options(synchronize_session=False)
    )
    record_event(session, account.id, EventKind.EMAIL_CHANGED, at=now, route=ROUTE)
    _audit(session, settings, account, "account.email_change", "success")
    session.commit()
    reload(session, account)
    if old and old.casefold() != new.casefold():
        notify(app, old, "notice_email_changed", account.language, username=account.username,
               when=_when(now))


def cancel_email_change(session: Session, account: Account) -> None:
    """Forget the pending address and end its codes."""
    now = clock.now()
    session.execute(
        sa.update(AccountCode)
        .where(AccountCode.account_id == account.id, AccountCode.kind == CodeKind.EMAIL.value,
               AccountCode.used_at.is_(None), AccountCode.superseded_at.is_(None))
        .values(superseded_at=now).execution_options(synchronize_session=False)
    )
    session.execute(
        sa.update(Account).where(Account.id == account.id).values(pending_email=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    reload(session, account)


class EmailPrompt(StrEnum):
    """What the interstitial after login asks."""

    #: No verified address: please add one.
    ADD = "add"
    #: Not confirmed for EMAIL_CONFIRM_INTERVAL: is it still right?
    CONFIRM = "confirm"


def email_prompt(account: Account, now: datetime | None = None) -> EmailPrompt | None:
    """Whether the owner should be asked about the e-mail address now."""
    if account.email is None or account.email_verified_at is None:
        return EmailPrompt.ADD
    last = max(filter(None, (account.email_confirmed_at, account.email_verified_at)))
    if (now or clock.now()) - last >= EMAIL_CONFIRM_INTERVAL:
        return EmailPrompt.CONFIRM
    return None


def confirm_email(session: Session, settings: Settings, account: Account) -> None:
    """The owner says the address is still right."""
    if account.email is None or account.email_verified_at is None:
        return
    now = clock.now()
    session.execute(
        sa.update(Account).where(Account.id == account.id).values(email_confirmed_at=now)
        .execution_options(synchronize_session=False)
    )
    record_event(session, account.id, EventKind.EMAIL_CONFIRMED, at=now, route=ROUTE)
    _audit(session, settings, account, "account.email_confirm", "success")
    session.commit()
    reload(session, account)


# --- authenticator app ----------------------------------------------------------------------


def qr_svg(uri: str) -> Markup:
    """The provisioning URI as an inline SVG QR code: paths only, no script or style (the
    Content-Security-Policy allows neither inline)."""
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=10,
                        border=4)
    out = BytesIO()
    image.save(out)
    svg = out.getvalue().decode("ascii")
    if svg.startswith("<?xml"):
        svg = svg.split("?>", 1)[1]
    # Our own output of a library that escapes nothing we give it but the URI's data bits.
    return Markup(svg.replace("<svg ", '<svg role="img" focusable="false" ', 1))  # noqa: S704


def begin_app(session: Session, settings: Settings, account: Account) -> tuple[str, Markup]:
    """A new pending secret: (the secret grouped for typing, the QR code)."""
    secret, uri = totp.begin_enrolment(session, settings, account)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return grouped, qr_svg(uri)


def confirm_app(session: Session, settings: Settings, app: Flask, account: Account,
                code: str) -> None:
    """Accept the pending app with a code from it; mails a notice. Raises ChangeRefused."""
    if not totp.confirm_enrolment(session, settings, account, code, get_policies(app)):
        raise ChangeRefused("wrong_code", TOTP_WRONG_MESSAGE)
    notify(app, account.email, "notice_totp_added", account.language,
           username=account.username, when=_when(clock.now()))


def remove_app(session: Session, settings: Settings, app: Flask, account: Account) -> None:
    had = totp.has_totp(account)
    totp.remove_totp(session, settings, account)
    if had:
        notify(app, account.email, "notice_totp_removed", account.language,
               username=account.username, when=_when(clock.now()))


# --- linked European eIDs -----------------------------------------------------------------


def remove_eid_link(
    session: Session, settings: Settings, app: Flask, account: Account, link_id: str
) -> bool:
    """Remove a European eID linked to the account (the caller re-authenticated the owner at
    midden): `unlink_eid` with the owner as the actor. False when the account has no such
    link (another account's, or removed already). Commits."""
    return unlink_eid(session, settings, app, account, link_id) is not None


def unlink_eid(
    session: Session,
    settings: Settings,
    app: Flask,
    account: Account,
    link_id: str,
    *,
    staff: StaffAccount | None = None,
    reason: str | None = None,
) -> EidasLink | None:
    """Remove one of the account's European eID links: the one removal both the owner (My
    account, `staff` None) and a desk (`staff`, gateway.desks.eidas_unlink_desk) make. Ends
    the SSO sessions that eID logged in to the account with (they carry the account and its
    BSN), records `eid_unlinked`, an audit entry and mails a notice. The audit entry names
    the owner (`account.eid_unlink`) or the staff member and their desk
    (`account.eid_unlinked`, with the desk's `reason` beside it); the history marks a desk's
    removal with route "desk".

    The link removed, or None when the account has no link with this id (another account's,
    or removed already): then nothing is written. Commits.
    """
    from gateway.desks.eidas_links import remove_link

    valid_id = isinstance(link_id, str) and 0 < len(link_id) <= 36
    link = remove_link(session, account.id, link_id) if valid_id else None
    if link is None:
        session.rollback()
        return None
    sso.end_all_sessions(session, account.id, subject_key=link.subject_key)
    now = clock.now()
    record_event(session, account.id, EventKind.EID_UNLINKED, at=now,
                 route="eidas" if staff is None else "desk")
    if staff is None:
        _audit(session, settings, account, "account.eid_unlink", "success")
    else:
        from gateway.desks.service import audit_record

        audit_record(session, settings, staff=staff, action="account.eid_unlinked",
                     object_ref=f"account:{account.id}", outcome="success", reason=reason)
    session.commit()
    notify(app, account.email, "notice_eid_unlinked", account.language,
           username=account.username, when=_when(now), by_desk=staff is not None)
    return link


# --- deactivation ---------------------------------------------------------------------------


def deactivate(session: Session, settings: Settings, app: Flask, account: Account, *,
               password: str, confirmed: bool) -> None:
    """Deactivate the account for good: status `deactivated`, every SSO session ended, a
    notice mailed. Raises WrongPassword, ChangeRefused("not_confirmed")."""
    reload(session, account)
    _check_password(session, settings, account, password, "account.deactivate")
    if not confirmed:
        raise ChangeRefused("not_confirmed", NOT_CONFIRMED_MESSAGE)
    now = clock.now()
    changed = session.execute(
        sa.update(Account)
        .where(Account.id == account.id, Account.status == AccountStatus.ACTIVE.value)
        .values(status=AccountStatus.DEACTIVATED.value)
        .execution_options(synchronize_session=False)
    )
    sso.end_all_sessions(session, account.id)
    if _rowcount(changed) == 1:
        record_event(session, account.id, EventKind.DEACTIVATED, at=now, route=ROUTE)
        _audit(session, settings, account, "account.deactivate", "success")
    session.commit()
    reload(session, account)
    notify(app, account.email, "notice_deactivated", account.language,
           username=account.username, when=_when(now))


# --- login notices --------------------------------------------------------------------------


def set_login_notices(session: Session, settings: Settings, account: Account, on: bool) -> None:
    session.execute(
        sa.update(Account).where(Account.id == account.id).values(notify_logins=bool(on))
        .execution_options(synchronize_session=False)
    )
    _audit(session, settings, account, "account.login_notices", "on" if on else "off")
    session.commit()
    reload(session, account)


def send_login_notice(app: Flask, account: Account, *, flow_id: str, service: str,
                      level: str, at: datetime) -> bool:
    """Mail "someone logged in" once per login flow when the owner asked for it."""
    if not account.notify_logins or not account.email or account.email_verified_at is None:
        return False
    try:
        first = get_store(app).add_once(f"myaccount:login-notice:{flow_id}", LOGIN_NOTICE_TTL)
    except StoreUnavailable:
        log.warning("login notice skipped: shared store unavailable")
        return False
    if not first:
        return False
    return notify(app, account.email, "notice_login", account.language,
                  username=account.username, service=service, level=level, when=_when(at))


__all__ = [
    "EMAIL_CONFIRM_INTERVAL",
    "REAUTH_WINDOW",
    "ChangeRefused",
    "EmailCodeRefused",
    "EmailPrompt",
    "InvalidAddress",
    "PendingPhone",
    "Reauth",
    "WrongPassword",
    "begin_app",
    "change_password",
    "confirm_app",
    "confirm_email",
    "deactivate",
    "email_prompt",
    "finish_email_change",
    "finish_phone_change",
    "reauth_needed",
    "remove_app",
    "send_login_notice",
    "set_login_notices",
    "start_email_change",
    "start_phone_change",
]
