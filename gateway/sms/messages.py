"""The texts that carry a one-time code, and how many SMS segments a text costs.

Issue 3, item 3. An SMS says who sends it, what the code is for, how long it is valid, and
never to share it, and ends with the origin-bound line of the WebOTP format
(`@<issuer host> #<code>`, WICG "Origin-bound one-time codes delivered via SMS"; INTERFACE.md,
"Messages to a phone") so the phone can offer to fill the code in on that site only. A voice
call speaks the same facts, with the digits apart and said twice, and no WebOTP line.

Why the texts are templates in this module rather than entries in the Babel catalog:
- an SMS is sent outside any request (a worker, `gateway sms test`), in the language of the
  account, which is not the language of the page that triggered it (a desk officer working
  in English for a citizen who reads Dutch); Flask-Babel picks its locale from the request;
- an SMS text is bound by the GSM 03.38 character set and the segment budget: one typographic
  apostrophe from a translator turns the message into UCS-2 and triples what each code costs,
  and a reworded ending can break the WebOTP line. Templates next to the tests that pin their
  charset, length and last line keep both languages inside those limits.

Segments follow 3GPP TS 23.038 (GSM 7-bit default alphabet and its extension table, escaped
characters counting 2) and TS 23.040 (160 septets in one message, 153 per part of a
concatenated one; UCS-2: 70 and 67 UTF-16 code units). National language shift tables are
not used: providers differ in supporting them, and our own texts need none.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from gateway.i18n import DEFAULT_LANGUAGE, LANGUAGES
from gateway.sms.phone import Channel
from gateway.sms.purposes import Purpose

#: Who sends the code, as the message names it (first words of every SMS and call).
SERVICE_NAME = "Abroad Gateway"

_CODE = re.compile(r"[0-9]{4,10}")
#: A DNS name or IPv4 address: the only characters a WebOTP host line may carry, all of them
#: in the GSM-7 basic set.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")

_PURPOSE: dict[str, dict[Purpose, str]] = {
    "en": {
        Purpose.LOGIN: "to log in",
        Purpose.ACTIVATION: "to activate your account",
        Purpose.APPLICATION: "for your application",
        Purpose.UNBLOCK: "to unblock your account",
        Purpose.RECOVERY: "to recover your account",
        Purpose.PHONE_CHANGE: "to confirm your new phone number",
        Purpose.TEST: "for a test message",
    },
    "nl": {
        Purpose.LOGIN: "om in te loggen",
        Purpose.ACTIVATION: "om uw account te activeren",
        Purpose.APPLICATION: "voor uw aanvraag",
        Purpose.UNBLOCK: "om uw account te deblokkeren",
        Purpose.RECOVERY: "om uw account te herstellen",
        Purpose.PHONE_CHANGE: "om uw nieuwe telefoonnummer te bevestigen",
        Purpose.TEST: "voor een testbericht",
    },
}

_SMS = {
    "en": (
        "{service}: your code {purpose} is {code}. Valid for {ttl}. "
        "Never share it: we will never ask you for it."
    ),
    "nl": (
        "{service}: uw code {purpose} is {code}. Geldig: {ttl}. "
        "Deel deze code nooit: wij vragen er nooit om."
    ),
}

_VOICE = {
    "en": (
        "This is {service}. Your code {purpose} is: {code}. Once more: {code}. "
        "The code is valid for {ttl}. Never share this code; we will never ask you for it."
    ),
    "nl": (
        "Dit is {service}. Uw code {purpose} is: {code}. Nogmaals: {code}. "
        "De code is {ttl} geldig. Deel deze code nooit; wij vragen er nooit om."
    ),
}


def _minutes(language: str, n: int) -> str:
    if language == "nl":
        return f"{n} minuut" if n == 1 else f"{n} minuten"
    return f"{n} minute" if n == 1 else f"{n} minutes"


def message_language(language: str) -> str:
    """`nl` or `en` from an account's or browser's tag (`en-GB` -> `en`); else the default."""
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    return primary if primary in LANGUAGES else DEFAULT_LANGUAGE


def host_of(issuer: str) -> str:
    """The host of GATEWAY_ISSUER, as the WebOTP line names it (no scheme, no port)."""
    host = urlsplit(issuer).hostname
    if not host or not _HOST.fullmatch(host):
        raise ValueError("the issuer URL has no host a WebOTP line can name")
    return host


def code_message(
    *,
    code: str,
    purpose: Purpose,
    language: str,
    issuer_host: str,
    channel: Channel,
    ttl_minutes: int,
) -> str:
    """The text of an SMS or of a voice call that carries `code`.

    Example::

        >>> print(code_message(code="123456", purpose=Purpose.LOGIN, language="en",
        ...     issuer_host="login.example.org", channel=Channel.SMS, ttl_minutes=5))
        Abroad Gateway: your code to log in is 123456. Valid for 5 minutes. Never share it: we will never ask you for it.
        <BLANKLINE>
        @login.example.org #123456
    """  # noqa: E501
    # Arguments come from code, never from a person; a wrong one is a bug, so refuse loudly
    # rather than send a code into a message it could break out of.
    if not _CODE.fullmatch(code):
        raise ValueError("code must be 4 to 10 ASCII digits")
    if not _HOST.fullmatch(issuer_host):
        raise ValueError("issuer_host must be a lower-case host name without scheme or port")
    if ttl_minutes < 1:
        raise ValueError("ttl_minutes must be at least 1")
    return _render(code, purpose, language, issuer_host, channel, ttl_minutes)


@functools.lru_cache(maxsize=256)
def code_message_segments(
    *,
    digits: int,
    purpose: Purpose,
    language: str,
    issuer_host: str,
    channel: Channel,
    ttl_minutes: int,
) -> int:
    """The SMS segments `code_message` costs with a code of `digits` digits, before a code
    exists (every code of a length costs the same). The arguments are checked when the
    message itself is made (`code_message`), before anything is sent."""
    text = _render("0" * digits, purpose, language, issuer_host, channel, ttl_minutes)
    return segments(text).count


def _render(
    code: str, purpose: Purpose, language: str, issuer_host: str, channel: Channel,
    ttl_minutes: int,
) -> str:
    purpose = Purpose(purpose)
    lang = message_language(language)
    fields = {
        "service": SERVICE_NAME,
        "purpose": _PURPOSE[lang][purpose],
        "ttl": _minutes(lang, ttl_minutes),
    }
    if Channel(channel) is Channel.VOICE:
        # Digits apart, so speech engines read "one, two, three" rather than a large number.
        return _VOICE[lang].format(code=", ".join(code), **fields)
    body = _SMS[lang].format(code=code, **fields)
    return f"{body}\n\n@{issuer_host} #{code}"


# GSM 03.38 default alphabet (3GPP TS 23.038, 6.2.1), without 0x1B, the escape to the
# extension table, which is not a character of its own.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: Default extension table (TS 23.038, 6.2.1.1): each is sent as escape + character, 2 septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7 = GSM7_BASIC | GSM7_EXTENSION

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class Segments:
    encoding: Encoding
    #: Septets (GSM-7) or UTF-16 code units (UCS-2) of the whole text.
    units: int
    #: SMS parts the text is sent as; what a provider bills. An empty text is still one SMS.
    count: int


def _parts(costs: list[int], single: int, part: int) -> int:
    if sum(costs) <= single:
        return 1
    # Concatenated: a character (an escape pair, a surrogate pair) never straddles two parts,
    # so a part may end a unit short of `part`.
    count, used = 1, 0
    for cost in costs:
        if used + cost > part:
            count, used = count + 1, 0
        used += cost
    return count


def segments(text: str) -> Segments:
    """GSM-7 when every character is in the default alphabet or its extension, else UCS-2."""
    # Units are counted by string methods (every send counts its text twice); the character
    # by character walk is only needed when the text does not fit in one SMS.
    if _GSM7.issuperset(text):
        units = len(text) + sum(map(text.count, GSM7_EXTENSION))
        if units <= 160:
            return Segments("GSM-7", units, 1)
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return Segments("GSM-7", units, _parts(costs, 160, 153))
    # Outside the Basic Multilingual Plane (emoji) a character is a surrogate pair: 2 units
    # (a lone surrogate is 1, as its code point is).
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= 70:
        return Segments("UCS-2", units, 1)
    costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return Segments("UCS-2", units, _parts(costs, 70, 67))
