"""The phone policy: read the number a person typed, normalise it to E.164, decide the channel.

Issue 3, item 1 and "Bad input". Numbers are read with phonenumbers (Google's libphonenumber
metadata) and written as ITU-T E.164 (`+` and at most 15 digits). Mobile and
fixed-line-or-mobile numbers receive the code by SMS, fixed-line numbers by a voice call; the
number types that cost the gateway money per message, can be had in bulk, or forward
elsewhere are refused with a reason and a message that tells the person what to do. Which
regions and types are open comes from `policies/sms.yaml` (`gateway.sms.policy.SmsPolicy`).

Any input string gives a `Phone` or raises `PhoneRejected`; nothing else escapes, because the
parser sits directly behind a form field and a hostile string must never become a 500.

Example::

    >>> parse_phone("06 12345678", SmsPolicy()).e164
    '+31612345678'
    >>> parse_phone("+44 20 7946 0000", SmsPolicy()).channel
    <Channel.VOICE: 'voice'>
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from flask_babel.speaklater import LazyString
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

from gateway.i18n import lazy_gettext
from gateway.sms.policy import NumberType, SmsPolicy

logger = logging.getLogger(__name__)

#: Numbers typed without `+` or `00` are read as Dutch: the gateway is the Netherlands' front
#: door, people who moved abroad often keep their Dutch mobile and write it the Dutch way
#: (`06 12345678`), and desk officers type Dutch numbers. A caller that knows better (the
#: country of residence on an application) passes `default_region`; the confirmation screen
#: shows the number in international format so a misread is caught before a code is sent.
DEFAULT_REGION = "NL"

#: Codes leave from the Netherlands: a number that cannot be dialled from abroad is unreachable.
SENDING_REGION = "NL"

#: Longest input looked at. `+31 (0)6 - 12 34 56 78` is 22 characters; 48 leaves room for
#: generous spacing and pasted invisible marks, and keeps hostile strings away from the parser.
MAX_INPUT_LENGTH = 48

#: E.164 allows 15 digits; an international prefix (up to 4: `0011`) and a trunk `(0)` add 5.
MAX_DIGITS = 20

_PLUS = frozenset("+\uff0b")  # ASCII and full-width plus
#: Separators people type or paste: spaces (also no-break and thin), dashes and minus signs
#: of several scripts, dots, slashes and brackets (ASCII and full-width).
_SEPARATORS = frozenset(
    " \t\u00a0\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
    "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
    "./\uff0e\uff0f()[]\uff08\uff09"
)
#: Invisible marks that copying a number from a chat or a right-to-left page adds
#: (zero-width space/joiners, direction marks, bidi embeddings and isolates, BOM). Dropping them
#: is safe because the result is rebuilt from the digits alone.
_INVISIBLE = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2066\u2067\u2068\u2069\ufeff"
)


class Channel(StrEnum):
    SMS = "sms"
    VOICE = "voice"


class RejectReason(StrEnum):
    EMPTY = "empty"
    INVALID = "invalid"
    TOO_LONG = "too_long"
    #: Country calling codes of no country: satellite (+881), international networks
    #: (+882/+883, a favourite of toll fraud), global freephone/premium (+800, +979).
    NON_GEOGRAPHIC = "non_geographic"
    NOT_REACHABLE = "not_reachable"
    REGION_BLOCKED = "region_blocked"
    REGION_NOT_ALLOWED = "region_not_allowed"
    PREMIUM_RATE = "premium_rate"
    SHARED_COST = "shared_cost"
    TOLL_FREE = "toll_free"
    VOIP = "voip"
    PAGER = "pager"
    UAN = "uan"
    PERSONAL_NUMBER = "personal_number"
    VOICEMAIL = "voicemail"
    UNKNOWN_TYPE = "unknown_type"
    #: A deliverable type (mobile, landline) that this deployment's policy does not open.
    TYPE_NOT_ALLOWED = "type_not_allowed"


_TYPE_NAMES: dict[int, NumberType] = {
    PhoneNumberType.MOBILE: NumberType.MOBILE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: NumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.FIXED_LINE: NumberType.FIXED_LINE,
    PhoneNumberType.TOLL_FREE: NumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE: NumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST: NumberType.SHARED_COST,
    PhoneNumberType.VOIP: NumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER: NumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER: NumberType.PAGER,
    PhoneNumberType.UAN: NumberType.UAN,
    PhoneNumberType.VOICEMAIL: NumberType.VOICEMAIL,
    PhoneNumberType.UNKNOWN: NumberType.UNKNOWN,
}

#: Types refused whatever the policy says (see gateway.sms.policy.DELIVERABLE_TYPES for why).
_REFUSED_TYPES: dict[NumberType, RejectReason] = {
    NumberType.PREMIUM_RATE: RejectReason.PREMIUM_RATE,
    NumberType.SHARED_COST: RejectReason.SHARED_COST,
    NumberType.TOLL_FREE: RejectReason.TOLL_FREE,
    NumberType.VOIP: RejectReason.VOIP,
    NumberType.PAGER: RejectReason.PAGER,
    NumberType.UAN: RejectReason.UAN,
    NumberType.PERSONAL_NUMBER: RejectReason.PERSONAL_NUMBER,
    NumberType.VOICEMAIL: RejectReason.VOICEMAIL,
    NumberType.UNKNOWN: RejectReason.UNKNOWN_TYPE,
}

_MESSAGES: dict[RejectReason, LazyString] = {
    RejectReason.EMPTY: lazy_gettext("Please enter your phone number."),
    RejectReason.INVALID: lazy_gettext(
        "This is not a phone number we can use. Check the number and enter it with its "
        "country code, for example +31 6 12345678."
    ),
    RejectReason.TOO_LONG: lazy_gettext(
        "This phone number is too long. Enter only the number, with its country code, "
        "for example +31 6 12345678."
    ),
    RejectReason.NON_GEOGRAPHIC: lazy_gettext(
        "This is a satellite or international network number, which cannot receive codes. "
        "Please use a mobile phone number."
    ),
    RejectReason.NOT_REACHABLE: lazy_gettext(
        "This number cannot be reached from abroad, so we cannot send a code to it. "
        "Please use a mobile phone number."
    ),
    RejectReason.REGION_BLOCKED: lazy_gettext(
        "We cannot send codes to phone numbers in this country. Please use a phone number "
        "from another country, or contact us."
    ),
    RejectReason.REGION_NOT_ALLOWED: lazy_gettext(
        "We cannot send codes to phone numbers in this country. Please use a phone number "
        "from another country, or contact us."
    ),
    RejectReason.PREMIUM_RATE: lazy_gettext(
        "This is a premium-rate number. We never send codes to paid service numbers. "
        "Please use a mobile phone number."
    ),
    RejectReason.SHARED_COST: lazy_gettext(
        "This is a shared-cost service number, which cannot receive codes. "
        "Please use a mobile phone number."
    ),
    RejectReason.TOLL_FREE: lazy_gettext(
        "This is a toll-free service number, which cannot receive codes. "
        "Please use a mobile phone number."
    ),
    RejectReason.VOIP: lazy_gettext(
        "This is an internet telephony (VoIP) number. For your safety we send codes only to "
        "mobile phones and landlines. Please use a mobile phone number."
    ),
    RejectReason.PAGER: lazy_gettext(
        "This is a pager number, which cannot receive codes. Please use a mobile phone number."
    ),
    RejectReason.UAN: lazy_gettext(
        "This is a company service number, which cannot receive codes. "
        "Please use your own mobile phone number."
    ),
    RejectReason.PERSONAL_NUMBER: lazy_gettext(
        "This is a personal forwarding number. For your safety we do not send codes to "
        "numbers that forward calls. Please use your mobile phone number."
    ),
    RejectReason.VOICEMAIL: lazy_gettext(
        "This is a voicemail access number, which cannot receive codes. "
        "Please use a mobile phone number."
    ),
    RejectReason.UNKNOWN_TYPE: lazy_gettext(
        "We cannot tell what kind of phone number this is, so we cannot send a code to it. "
        "Check the number, or use a mobile phone number."
    ),
    RejectReason.TYPE_NOT_ALLOWED: lazy_gettext(
        "We cannot send a code to this kind of phone number. Please use a mobile phone number."
    ),
}


class PhoneRejected(Exception):
    """The number cannot receive codes. `str()` is the reason only: no personal data in logs."""

    def __init__(self, reason: RejectReason) -> None:
        super().__init__(reason.value)
        self.reason = reason

    @property
    def message(self) -> LazyString:
        """What went wrong and what to do, for the person (Dutch or English)."""
        return _MESSAGES[self.reason]


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str
    #: ISO 3166-1 alpha-2 (phonenumbers' region, so the Caribbean +1 and +599 are told apart).
    region: str
    country_code: int
    #: Lower-case phonenumbers type name (`gateway.sms.policy.NumberType` values).
    number_type: str
    channel: Channel

    @property
    def international(self) -> str:
        """For showing back to the person: `+31 6 12345678`."""
        return phonenumbers.format_number(
            phonenumbers.parse(self.e164, None), PhoneNumberFormat.INTERNATIONAL
        )

    def prefix(self, digits_dropped: int) -> str:
        """The number without its last digits: the range that number-range limits count."""
        if not 1 <= digits_dropped <= 4:
            raise ValueError("digits_dropped must be 1 to 4")
        return self.e164[:-digits_dropped]


def _digits(raw: str) -> tuple[bool, str]:
    """(written with a leading plus, the ASCII digits); PhoneRejected on anything else."""
    plus = False
    digits: list[str] = []
    for ch in raw:
        if ch in _SEPARATORS or ch in _INVISIBLE:
            continue
        if ch in _PLUS:
            # One plus, before every digit: "+31 6 ...", "(+31) 6 ...".
            if plus or digits:
                raise PhoneRejected(RejectReason.INVALID)
            plus = True
        elif unicodedata.category(ch) == "Nd":
            # Decimal digits of any script (Arabic-Indic, Devanagari, full-width, ...).
            digits.append(str(unicodedata.decimal(ch)))
        else:
            # Letters (vanity numbers, "ext."), control characters, symbols.
            raise PhoneRejected(RejectReason.INVALID)
    return plus, "".join(digits)


def _read(raw: str, default_region: str | None) -> phonenumbers.PhoneNumber:
    if len(raw) > MAX_INPUT_LENGTH:
        raise PhoneRejected(RejectReason.TOO_LONG)
    if not raw.strip():
        raise PhoneRejected(RejectReason.EMPTY)
    plus, digits = _digits(raw)
    if not digits:
        raise PhoneRejected(RejectReason.INVALID)
    if len(digits) > MAX_DIGITS:
        raise PhoneRejected(RejectReason.TOO_LONG)
    region: str | None
    if plus:
        text, region = "+" + digits, None
    elif digits.startswith("00"):
        # 00 is the international prefix almost everywhere, and people abroad write it so
        # whatever their region's own prefix is; phonenumbers still reads a region's own
        # (011 in North America, 010 in Japan) below.
        text, region = "+" + digits[2:], None
    else:
        region = (default_region or DEFAULT_REGION).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            # No country to read a national number in: ask for the country code.
            raise PhoneRejected(RejectReason.INVALID)
        text = digits
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.TOO_LONG:
            raise PhoneRejected(RejectReason.TOO_LONG) from None
        raise PhoneRejected(RejectReason.INVALID) from None


def _decide(number: phonenumbers.PhoneNumber, policy: SmsPolicy) -> Phone:
    if not phonenumbers.is_valid_number(number):
        raise PhoneRejected(RejectReason.INVALID)
    region = phonenumbers.region_code_for_number(number)
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise PhoneRejected(RejectReason.NON_GEOGRAPHIC)
    if region in policy.blocked_regions:
        raise PhoneRejected(RejectReason.REGION_BLOCKED)
    if policy.allowed_regions and region not in policy.allowed_regions:
        raise PhoneRejected(RejectReason.REGION_NOT_ALLOWED)
    country_code = number.country_code
    if country_code is None:  # parse() always sets it; the stubs allow None
        raise PhoneRejected(RejectReason.INVALID)
    kind = _TYPE_NAMES.get(phonenumbers.number_type(number), NumberType.UNKNOWN)
    if kind in _REFUSED_TYPES:
        raise PhoneRejected(_REFUSED_TYPES[kind])
    # After the type: a toll-free number is better explained as toll-free than as unreachable.
    if region != SENDING_REGION and not phonenumbers.can_be_internationally_dialled(number):
        raise PhoneRejected(RejectReason.NOT_REACHABLE)
    if kind in policy.sms_number_types:
        channel = Channel.SMS
    elif kind in policy.voice_number_types:
        channel = Channel.VOICE
    else:
        raise PhoneRejected(RejectReason.TYPE_NOT_ALLOWED)
    return Phone(
        e164=phonenumbers.format_number(number, PhoneNumberFormat.E164),
        region=region,
        country_code=country_code,
        number_type=kind.value,
        channel=channel,
    )


def last_digits(e164: str | None) -> str:
    """The last two digits of a number: enough for its owner to recognise it, no more (what
    pages, mails and SMS records show of a phone number; "" for none)."""
    return e164[-2:] if e164 and len(e164) > 4 else ""


def parse_phone(raw: str, policy: SmsPolicy, *, default_region: str | None = None) -> Phone:
    """Read what a person typed; a `Phone` that may receive codes, or `PhoneRejected`.

    `default_region` (ISO alpha-2) reads numbers written without `+` or `00`; it defaults to
    the Netherlands (`DEFAULT_REGION`). An unknown region means such numbers are refused with
    the message that asks for the country code.
    """
    if not isinstance(raw, str):
        raise PhoneRejected(RejectReason.INVALID)
    try:
        return _decide(_read(raw, default_region), policy)
    except PhoneRejected:
        raise
    except Exception as exc:
        # A phonenumbers bug on hostile input: refuse the number (fail closed), log the kind
        # of failure but never the input (personal data).
        logger.warning("phone parser failed on an input (%s); refused", type(exc).__name__)
        raise PhoneRejected(RejectReason.INVALID) from None
