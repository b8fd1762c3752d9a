"""The online application: a citizen abroad asks for an account (issue 4, item 1 and "Bad input").

A person fills in BSN, date of birth, nationality, phone, e-mail, language, username, password
and the desk where they will show their passport or identity card. `submit_application` checks
every field (each refusal has its own message in Dutch and English), and then, in this order:

1. counts the submission against the per-IP limit in the shared store (fail closed: a store
   that cannot be reached refuses the request, `StoreUnavailable`);
2. refuses a username that an account or an open application already holds. That is not a
   secret (DigiD says "choose another username" too), so the person is told;
3. runs the phone policy and the SMS abuse limits (`gateway.sms`) for the typed number, on
   every path, so that the limits never answer differently for a BSN that already has an
   account;
4. hashes the password (argon2id), on every path, so the work is comparable;
5. when the BSN already has an account or an open application (no enumeration, as the
   issue and DigiD require): sends an e-mail to the address ON THAT ACCOUNT (or application),
   never to the typed one, and creates nothing. The answer is the same `Receipt`, so the page
   the person sees is byte for byte the same;
6. otherwise makes a desk code (`B` + 8, `gateway.desks.codes`, valid 30 days), sends it by SMS
   (or by a voice call to a landline) through the dispatcher, and only when a provider took
   it stores the application (state `submitted`, the code as an HMAC) with its audit entry in
   one transaction, then sends the code by e-mail too.

Why the SMS goes through the dispatcher and not `SmsService.send_code`: the service's code
machinery makes 6-digit one-time codes bound to a flow, while the desk code is a 9-character
letter code the citizen reads out at a desk. The service's phone policy and abuse limiter
(`SmsService.limiter`) are still applied first, with the same counters as every other SMS.
The message has no WebOTP line: the desk code is never typed into this site by its owner.

Nothing half-written: the SMS is sent before anything is stored, so when every provider fails
the person sees a clear message and no application exists. A failed e-mail does not undo an
application whose code arrived by SMS. Two submissions racing for one username or one BSN are
serialised by short claims in the shared store.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from babel import Locale
from babel.core import get_global
from babel.dates import format_date
from flask import Flask, current_app

from gateway import audit, clock
from gateway import metrics as prometheus
from gateway.accounts.models import Account, new_id
from gateway.accounts.number_limit import NumberFull, check_room
from gateway.accounts.passwords import Passwords, check_new_password
from gateway.accounts.policy import PasswordPolicy, UsernamePolicy
from gateway.db import Database, get_db
from gateway.desks.applications import ApplicationState
from gateway.desks.bsn import BsnError, normalise_bsn
from gateway.desks.codes import DESK_CODE_VALIDITY, CodeKind, code_hmac, new_code
from gateway.desks.models import Application
from gateway.desks.policy import Desk, DeskKind
from gateway.i18n import LANGUAGES, lazy_gettext
from gateway.mail import InvalidAddress, MailError, MailSender, get_mail, validate_email
from gateway.mail.templates import render_template as render_mail
from gateway.policy import Policies
from gateway.settings import Settings
from gateway.sms.dispatch import DeliveryFailed
from gateway.sms.messages import SERVICE_NAME, segments
from gateway.sms.phone import Channel, Phone, PhoneRejected, parse_phone
from gateway.sms.purposes import Purpose
from gateway.sms.service import LimitExceeded, SendingUnavailable, SmsService, get_sms_service
from gateway.store import SharedStore, StoreUnavailable, get_store

log = logging.getLogger(__name__)

EXTENSION = "gateway.apply"

#: The form's fields, in the order the page shows them (and the error summary lists them).
FIELDS = (
    "bsn", "dob-day", "dob-month", "dob-year", "nationality", "phone", "email", "language",
    "username", "password", "desk",
)
#: Key of an error that belongs to the whole form (the summary links to the form itself).
FORM = "apply-form"

#: Raw input longer than this is not looked at (the longest field, an e-mail address, may have
#: 254 octets; validate_email has its own bound for what it parses).
MAX_FIELD_CHARS = 1024
#: Values shown back in the form are cut to this, so a hostile megabyte is never reflected.
MAX_ECHO_CHARS = 256

#: Submissions of the form per IP address (an IPv6 /64 counts as one) in a fixed hour.
#: Generous to people behind one NAT (an embassy's guest network, a university) who make a
#: mistake or two each; tight enough that a script cannot walk usernames or spend SMS and
#: argon2 work. Invalid submissions count too: they are what a script sends most.
SUBMISSIONS_PER_IP_PER_HOUR = 20
SUBMISSION_WINDOW = timedelta(hours=1)
#: How long a submission holds its username and BSN while it sends the SMS and stores the row.
CLAIM_TTL = timedelta(minutes=2)

#: Births before this year are refused as mistyped (no one alive was born earlier).
EARLIEST_BIRTH_YEAR = 1900
#: A username is ASCII letters, digits and . - _ (what every keyboard and every login form
#: can type), starting with a letter or digit; it needs at least one letter, so that a BSN or a
#: phone number is never chosen as a username (it would show up on screens and in logs).
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGITS = re.compile(r"[0-9]{1,4}")
_IP_KEY_HEX = 32

SUBMISSIONS = prometheus.counter(
    "apply_submissions_total",
    "Online application form submissions, by outcome (accepted also counts the answers given "
    "for a BSN that already has an account, which look the same to the person).",
    ("outcome",),
)


# --- errors and results -------------------------------------------------------------------


class ApplicationRefused(Exception):
    """The application was not taken. `errors` maps a field id (or `FORM`) to a lazy message in
    Dutch and English; `status` is the HTTP status the page is answered with."""

    def __init__(self, errors: Mapping[str, Any], status: int = 422) -> None:
        super().__init__(", ".join(errors))  # the field names only: never the values
        self.errors = dict(errors)
        self.status = status


@dataclass(frozen=True)
class Receipt:
    """What the person is told. The same for a new application and for a BSN that already has
    an account or an open application: keep it free of anything that differs between them."""

    desk: Desk


@dataclass(frozen=True)
class ValidApplication:
    bsn: str
    birth_date: date
    nationality: str
    phone: Phone
    email: str
    language: str
    username: str
    username_key: str
    password: str
    desk: Desk


# --- messages -----------------------------------------------------------------------------

MESSAGES: dict[str, Any] = {
    "bsn_empty": lazy_gettext("Enter your BSN (citizen service number)."),
    "dob_empty": lazy_gettext("Enter your date of birth."),
    "dob_incomplete": lazy_gettext("Your date of birth must include a day, a month and a year."),
    "dob_invalid": lazy_gettext("Enter a real date of birth, for example 27 3 1985."),
    "dob_future": lazy_gettext("Your date of birth must be in the past."),
    "nationality_empty": lazy_gettext("Choose your nationality."),
    "nationality_ineligible": lazy_gettext(
        "You can apply only with a nationality from the list: Dutch, or that of a country of "
        "the European Economic Area or Switzerland."
    ),
    "language_invalid": lazy_gettext("Choose Dutch or English for our messages to you."),
    "username_empty": lazy_gettext("Choose a username."),
    "username_characters": lazy_gettext(
        "Your username may contain only letters (a to z), digits, dots, dashes and "
        "underscores, and must start with a letter or a digit."
    ),
    "username_no_letter": lazy_gettext("Your username must contain at least one letter."),
    "username_taken": lazy_gettext("This username is already in use. Choose another username."),
    "password_empty": lazy_gettext("Choose a password."),
    "desk_empty": lazy_gettext(
        "Choose the desk where you will show your passport or identity card."
    ),
    "desk_unknown": lazy_gettext("This desk does not exist. Choose a desk from the list."),
    "too_many": lazy_gettext(
        "Too many applications have been sent from your internet connection. "
        "Please try again in an hour."
    ),
    "not_sent": lazy_gettext(
        "We could not send your desk code by text message just now, so your application has "
        "not been saved. Please try again in a few minutes."
    ),
}


def _message(key: str) -> Any:
    return MESSAGES[key]


# --- reading the form ---------------------------------------------------------------------


def _text(raw: Mapping[str, object], name: str) -> str:
    """The field's text; anything that is not one string of sane length reads as empty."""
    value = raw.get(name)
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        return ""
    return value


def echo_values(raw: Mapping[str, object]) -> dict[str, str]:
    """What the form shows back when it comes back with errors: never the password, and
    nothing longer than `MAX_ECHO_CHARS`, without control characters."""
    values: dict[str, str] = {}
    for name in FIELDS:
        if name == "password":
            continue
        value = raw.get(name)
        if isinstance(value, str):
            values[name] = "".join(
                ch for ch in value[:MAX_ECHO_CHARS] if unicodedata.category(ch) != "Cc"
            )
    return values


def username_key(username: str) -> str:
    """The form in which usernames are unique and looked up (case does not count)."""
    return username.strip().lower()


def _check_username(raw: str, policy: UsernamePolicy) -> tuple[str | None, Any]:
    value = unicodedata.normalize("NFKC", raw).strip()
    if not value:
        return None, _message("username_empty")
    if not (policy.min_length <= len(value) <= policy.max_length):
        return None, lazy_gettext(
            "Your username must have %(min)d to %(max)d characters.",
            min=policy.min_length,
            max=policy.max_length,
        )
    if not value.isascii() or not _USERNAME.fullmatch(value):
        return None, _message("username_characters")
    if not any(ch.isalpha() for ch in value):
        return None, _message("username_no_letter")
    return value, None


def _check_birth_date(day: str, month: str, year: str, today: date) -> tuple[date | None, Any]:
    parts = [p.strip() for p in (day, month, year)]
    if not any(parts):
        return None, _message("dob_empty")
    if not all(parts):
        return None, _message("dob_incomplete")
    if not all(_DIGITS.fullmatch(p) for p in parts) or len(parts[2]) != 4:
        return None, _message("dob_invalid")
    try:
        born = date(int(parts[2]), int(parts[1]), int(parts[0]))
    except ValueError:
        return None, _message("dob_invalid")
    if born > today:
        return None, _message("dob_future")
    if born.year < EARLIEST_BIRTH_YEAR:
        return None, _message("dob_invalid")
    return born, None


def validate(
    raw: Mapping[str, object], policies: Policies, *, today: date
) -> tuple[ValidApplication | None, dict[str, Any]]:
    """Check every field; (the application, {}) or (None, field id -> message).

    Pure: reads no database. Whether the username is free is the service's question.
    """
    errors: dict[str, Any] = {}

    bsn = ""
    raw_bsn = _text(raw, "bsn")
    if not raw_bsn.strip():
        errors["bsn"] = _message("bsn_empty")
    else:
        try:
            bsn = normalise_bsn(raw_bsn)
        except BsnError as exc:
            errors["bsn"] = exc.message

    born, problem = _check_birth_date(
        _text(raw, "dob-day"), _text(raw, "dob-month"), _text(raw, "dob-year"), today
    )
    if problem is not None:
        errors["dob-day"] = problem

    nationality = _text(raw, "nationality").strip().upper()
    if not nationality:
        errors["nationality"] = _message("nationality_empty")
    elif nationality not in policies.eligibility.nationalities:
        errors["nationality"] = _message("nationality_ineligible")

    phone: Phone | None = None
    try:
        phone = parse_phone(_text(raw, "phone"), policies.sms)
    except PhoneRejected as exc:
        errors["phone"] = exc.message

    email = ""
    try:
        email = validate_email(_text(raw, "email"))
    except InvalidAddress as exc:
        errors["email"] = exc.message

    language = _text(raw, "language").strip()
    if language not in LANGUAGES:
        errors["language"] = _message("language_invalid")

    raw_username = _text(raw, "username")
    username, problem = _check_username(raw_username, policies.accounts.username)
    if problem is not None:
        errors["username"] = problem

    password = _text(raw, "password")
    if not password:
        errors["password"] = _message("password_empty")
    else:
        # Compared with what was typed as username even when that was refused: a password
        # equal to any attempt at a username is still a guessable one.
        found = check_new_password(
            password, policies.accounts.password, username or raw_username.strip() or None
        )
        if found:
            errors["password"] = found[0].message

    desk_code = _text(raw, "desk").strip()
    desk = policies.desks.get(desk_code) if desk_code else None
    if not desk_code:
        errors["desk"] = _message("desk_empty")
    elif desk is None:
        errors["desk"] = _message("desk_unknown")

    if errors:
        return None, errors
    assert born is not None and phone is not None and username is not None and desk is not None
    return (
        ValidApplication(
            bsn=bsn,
            birth_date=born,
            nationality=nationality,
            phone=phone,
            email=email,
            language=language,
            username=username,
            username_key=username_key(username),
            password=password,
            desk=desk,
        ),
        {},
    )


# --- choices for the form -----------------------------------------------------------------


def country_name(alpha: str, language: str) -> str:
    """The country's name in `language` from Babel's CLDR data; alpha-2 or alpha-3 codes."""
    code = alpha.upper()
    if len(code) == 3:
        aliases: Mapping[str, list[str]] = get_global("territory_aliases")
        code = (aliases.get(code) or [code])[0]
    name: str | None = Locale.parse(language).territories.get(code)
    return name or alpha


def _sort_key(text: str) -> str:
    # Accents aside, so "IJsland" and "Oostenrijk" sort where a Dutch reader looks for them.
    return "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    ).casefold()


def nationality_choices(policies: Policies, language: str) -> list[tuple[str, str]]:
    """(alpha-3 code, country name) for the select: the Netherlands first, then by name."""
    names = [(code, country_name(code, language)) for code in policies.eligibility.nationalities]
    first = [c for c in names if c[0] == "NLD"]
    rest = sorted((c for c in names if c[0] != "NLD"), key=lambda c: _sort_key(c[1]))
    return first + rest


DESK_GROUPS: tuple[tuple[DeskKind, Any], ...] = (
    (DeskKind.ABROAD, lazy_gettext("Abroad: embassies and consulates")),
    (DeskKind.CARIBBEAN, lazy_gettext("Caribbean part of the Kingdom")),
    (DeskKind.NETHERLANDS, lazy_gettext("In the Netherlands")),
    (DeskKind.VIDEO, lazy_gettext("By video call")),
)


def desk_label(desk: Desk, language: str) -> str:
    """The desk's policy name in `language`, with its country for desks abroad."""
    if desk.kind is DeskKind.VIDEO:
        return str(lazy_gettext("Video call (identity check by video)"))
    name = desk.display_name(language)
    if desk.kind is DeskKind.ABROAD and desk.country:
        return f"{name} ({country_name(desk.country, language)})"
    return name


def desk_choices(policies: Policies, language: str) -> list[tuple[Any, list[tuple[str, str]]]]:
    """[(group label, [(desk code, label), ...]), ...] in the order of DESK_GROUPS."""
    groups = []
    for kind, label in DESK_GROUPS:
        desks = sorted(
            ((d.code, desk_label(d, language)) for d in policies.desks.desks if d.kind is kind),
            key=lambda c: _sort_key(c[1]),
        )
        if desks:
            groups.append((label, desks))
    return groups


# --- the messages that carry the desk code ------------------------------------------------

_SMS = {
    "en": (
        "{service}: your desk code is {code}. Bring it with your passport or ID card to the "
        "desk you chose. Valid for {days} days. Show it only at the desk."
    ),
    "nl": (
        "{service}: uw baliecode is {code}. Neem deze met uw paspoort of ID-kaart mee naar "
        "de gekozen balie. {days} dagen geldig. Toon hem alleen aan de balie."
    ),
}
_VOICE = {
    "en": (
        "This is {service}. Your desk code is: {code}. Once more: {code}. Bring this code with "
        "your passport or identity card to the desk you chose. It is valid for {days} days."
    ),
    "nl": (
        "Dit is {service}. Uw baliecode is: {code}. Nogmaals: {code}. Neem deze code mee met "
        "uw paspoort of identiteitskaart naar de balie die u koos. De code is {days} dagen "
        "geldig."
    ),
}


def desk_code_message(code: str, language: str, channel: Channel) -> str:
    """The SMS text (GSM-7, one segment) or the spoken text that carries a desk code."""
    lang = language if language in _SMS else "nl"
    days = DESK_CODE_VALIDITY.days
    if Channel(channel) is Channel.VOICE:
        # Characters apart, so speech engines spell the code instead of reading a word.
        return _VOICE[lang].format(service=SERVICE_NAME, code=", ".join(code), days=days)
    return _SMS[lang].format(service=SERVICE_NAME, code=code, days=days)


# --- the service --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _passwords(policy: PasswordPolicy) -> Passwords:
    return Passwords(policy)


def _ip_block(ip: str) -> str:
    """The address, or for IPv6 its /64: what one subscriber can vary freely counts once."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return "raw:" + ip[:100]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _open(now: datetime) -> Any:
    """An application still waiting for a desk: submitted or checked, desk code not expired."""
    return sa.and_(
        Application.status.in_([ApplicationState.SUBMITTED.value, ApplicationState.CHECKED.value]),
        Application.desk_code_expires_at > now,
    )


@dataclass(frozen=True)
class _Holder:
    """Who already holds this BSN: where to tell them someone applied."""

    template: str
    email: str | None
    language: str
    object_ref: str
    outcome: str


class ApplicationService:
    """See the module docstring. Flask-free: tests call it without a request."""

    def __init__(
        self,
        *,
        settings: Settings,
        policies: Policies,
        database: Database,
        store: SharedStore,
        sms: SmsService,
        mail: MailSender,
        per_ip_per_hour: int = SUBMISSIONS_PER_IP_PER_HOUR,
    ) -> None:
        self.settings = settings
        self.policies = policies
        self.database = database
        self.store = store
        self.sms = sms
        self.mail = mail
        self.per_ip_per_hour = per_ip_per_hour
        self._key = settings.derive_key("apply-limits")

    def _hash(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:_IP_KEY_HEX]

    # -- steps --

    def count_submission(self, ip: str | None) -> None:
        """Count one submission from `ip`; ApplicationRefused (429) over the limit.
        StoreUnavailable propagates: the caller refuses (fail closed)."""
        if ip is None:
            ip = "unknown"
        key = f"apply:ip:{self._hash(_ip_block(ip))}"
        if self.store.incr(key, SUBMISSION_WINDOW) > self.per_ip_per_hour:
            SUBMISSIONS.labels(outcome="rate_limited").inc()
            raise ApplicationRefused({FORM: _message("too_many")}, status=429)

    def username_taken(self, key: str, now: datetime) -> bool:
        with self.database.sessionmaker() as session:
            account = session.scalar(sa.select(Account.id).where(Account.username_key == key))
            if account is not None:
                return True
            pending = session.scalar(
                sa.select(Application.id)
                .where(Application.username_key == key, _open(now))
                .limit(1)
            )
            return pending is not None

    def _holder(self, bsn: str, now: datetime) -> _Holder | None:
        with self.database.sessionmaker() as session:
            account = session.scalars(sa.select(Account).where(Account.bsn == bsn)).one_or_none()
            if account is not None:
                return _Holder("existing_account", account.email, account.language,
                               f"account:{account.id}", "duplicate_account")
            pending = session.scalars(
                sa.select(Application)
                .where(Application.bsn == bsn, _open(now))
                .order_by(Application.created_at.desc())
                .limit(1)
            ).one_or_none()
            if pending is not None:
                return _Holder("application_duplicate", pending.email, pending.language,
                               f"application:{pending.id}", "duplicate_application")
        return None

    def _claim(self, kind: str, value: str) -> str | None:
        key = f"apply:claim:{kind}:{self._hash(value)}"
        return key if self.store.add_once(key, CLAIM_TTL) else None

    def _release(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except StoreUnavailable:
                # The claim then simply runs out (CLAIM_TTL).
                log.warning("apply: could not release a claim (store unavailable)")

    # -- the whole submission --

    def submit(
        self, raw: Mapping[str, object], *, ip: str | None, request_id: str | None = None
    ) -> Receipt:
        """Take an application; `Receipt` or `ApplicationRefused`. See the module docstring."""
        self.count_submission(ip)
        now = clock.now()
        valid, errors = validate(raw, self.policies, today=now.date())
        username = valid.username_key if valid else None
        if valid is None:
            # Tell about a taken username together with the other problems, when it is
            # otherwise fine.
            candidate, problem = _check_username(
                _text(raw, "username"), self.policies.accounts.username
            )
            if candidate is not None and problem is None:
                username = username_key(candidate)
        if username is not None and "username" not in errors and self.username_taken(username, now):
            errors["username"] = _message("username_taken")
        if errors or valid is None:
            SUBMISSIONS.labels(outcome="invalid").inc()
            raise ApplicationRefused(errors)

        claims: list[str] = []
        try:
            claim = self._claim("username", valid.username_key)
            if claim is None:
                SUBMISSIONS.labels(outcome="invalid").inc()
                raise ApplicationRefused({"username": _message("username_taken")})
            claims.append(claim)
            bsn_claim = self._claim("bsn", valid.bsn)
            if bsn_claim is not None:
                claims.append(bsn_claim)
            return self._submit_valid(valid, ip=ip, request_id=request_id, now=now,
                                      racing=bsn_claim is None)
        finally:
            self._release(claims)

    def _submit_valid(
        self, valid: ValidApplication, *, ip: str | None, request_id: str | None,
        now: datetime, racing: bool,
    ) -> Receipt:
        holder = self._holder(valid.bsn, now)
        existing = racing or holder is not None
        code = new_code(CodeKind.DESK)
        text = desk_code_message(code, valid.language, valid.phone.channel)

        # The same phone policy and limits on both paths: a refusal must never tell whether
        # the BSN already has an account.
        try:
            phone = parse_phone(valid.phone.e164, self.sms.policy)
            # Before the SMS budget is spent on a desk code for an account that cannot be made.
            with self.database.sessionmaker() as session:
                check_room(session, self.sms.policy.max_accounts_per_number, phone.e164)
            self.sms.limiter.check_and_count(
                e164=phone.e164,
                region=phone.region,
                account_id=None,
                ip=ip,
                segments=1 if phone.channel is Channel.VOICE else segments(text).count,
            )
        except (PhoneRejected, NumberFull) as exc:
            SUBMISSIONS.labels(outcome="invalid").inc()
            raise ApplicationRefused({"phone": exc.message}) from None
        except LimitExceeded as exc:
            SUBMISSIONS.labels(outcome="sms_limited").inc()
            raise ApplicationRefused({"phone": exc.message}, status=429) from None
        except SendingUnavailable as exc:
            SUBMISSIONS.labels(outcome="send_failed").inc()
            raise ApplicationRefused({FORM: exc.message}, status=503) from None

        # argon2 on both paths: the time an answer takes must not tell the paths apart.
        password_hash = _passwords(self.policies.accounts.password).hash(valid.password)
        receipt = Receipt(desk=valid.desk)

        if existing:
            self._tell_holder(valid, holder, now=now, request_id=request_id)
            SUBMISSIONS.labels(outcome="accepted").inc()
            return receipt

        application_id = new_id()
        try:
            with self.database.sessionmaker() as session:
                self.sms.dispatcher.send(
                    session,
                    to=phone.e164,
                    channel=phone.channel,
                    text=text,
                    purpose=Purpose.APPLICATION.value,
                    idempotency_key=f"application:{application_id}",
                )
        except DeliveryFailed:
            SUBMISSIONS.labels(outcome="send_failed").inc()
            log.warning("apply: desk code not sent, application not kept")
            raise ApplicationRefused({FORM: _message("not_sent")}, status=503) from None

        expires_at = now + DESK_CODE_VALIDITY
        with self.database.begin() as session:
            session.add(
                Application(
                    id=application_id,
                    desk_code_hmac=code_hmac(self.settings, CodeKind.DESK, code),
                    desk_code_expires_at=expires_at,
                    status=ApplicationState.SUBMITTED.value,
                    bsn=valid.bsn,
                    birth_date=valid.birth_date,
                    nationality=valid.nationality,
                    phone_e164=phone.e164,
                    phone_channel=phone.channel.value,
                    email=valid.email,
                    language=valid.language,
                    username=valid.username,
                    username_key=valid.username_key,
                    password_hash=password_hash,
                    chosen_desk=valid.desk.code,
                    created_at=now,
                    updated_at=now,
                )
            )
            session.flush()
            audit.record(
                session,
                actor=audit.pseudonymise_bsn(self.settings, valid.bsn),
                role="applicant",
                desk=valid.desk.code,
                action="application.submitted",
                object_ref=f"application:{application_id}",
                outcome="submitted",
                request_id=request_id,
                settings=self.settings,
            )

        self._send_mail(
            valid.email,
            "application_submitted",
            valid.language,
            desk_code=code,
            desk_name=desk_label(valid.desk, valid.language),
            video=valid.desk.kind is DeskKind.VIDEO,
            valid_until=format_date(expires_at.date(), format="long", locale=valid.language),
            days=DESK_CODE_VALIDITY.days,
            username=valid.username,
            issuer=self.settings.issuer,
        )
        SUBMISSIONS.labels(outcome="accepted").inc()
        return receipt

    def _tell_holder(
        self, valid: ValidApplication, holder: _Holder | None, *, now: datetime,
        request_id: str | None,
    ) -> None:
        with self.database.begin() as session:
            audit.record(
                session,
                actor=audit.pseudonymise_bsn(self.settings, valid.bsn),
                role="applicant",
                desk=valid.desk.code,
                action="application.submitted",
                object_ref=holder.object_ref if holder else None,
                outcome=holder.outcome if holder else "duplicate_in_flight",
                request_id=request_id,
                settings=self.settings,
            )
        if holder is None or not holder.email:
            return
        language = holder.language if holder.language in LANGUAGES else "nl"
        self._send_mail(
            holder.email,
            holder.template,
            language,
            applied_on=format_date(now.date(), format="long", locale=language),
            issuer=self.settings.issuer,
        )

    def _send_mail(self, to: str, template: str, language: str, **context: Any) -> None:
        try:
            self.mail.send(render_mail(to, template, language, **context))
        except MailError as exc:
            # The application stands (or nothing was to be made); the kind of failure only.
            log.warning("apply: mail %s not sent (%s)", template, type(exc).__name__)


# --- wiring -------------------------------------------------------------------------------


def init_app(app: Flask) -> ApplicationService:
    """Build the app's ApplicationService; after the store, mail and SMS service exist."""
    from gateway.app import get_policies, get_settings

    service = ApplicationService(
        settings=get_settings(app),
        policies=get_policies(app),
        database=get_db(app),
        store=get_store(app),
        sms=get_sms_service(app),
        mail=get_mail(app),
    )
    app.extensions[EXTENSION] = service
    return service


def get_application_service(app: Flask | None = None) -> ApplicationService:
    service: ApplicationService = (app or current_app).extensions[EXTENSION]
    return service


def submit_application(
    raw: Mapping[str, object],
    *,
    ip: str | None,
    request_id: str | None = None,
    app: Flask | None = None,
) -> Receipt:
    """Take an online application from the form's fields (`FIELDS`).

    Returns the same `Receipt` whether or not the BSN already has an account; raises
    `ApplicationRefused` with a message per field (or for the whole form), and lets
    `StoreUnavailable` through (the page answers 503).

    Example::

        try:
            receipt = submit_application(form, ip=request.remote_addr, request_id=request_id())
        except ApplicationRefused as refused:
            return render_form(errors=refused.errors), refused.status
    """
    return get_application_service(app).submit(raw, ip=ip, request_id=request_id)
