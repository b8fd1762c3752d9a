"""The phone policy (issue 3, item 1 and "Bad input"): what people type, what is refused, and why.

Numbers are in real formats from phonenumbers' example ranges and the regulators' fictional
ranges (US/CA 555-01xx, AU 0491 570 xxx, GB 020 7946 0xxx); none is knowingly a person's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import phonenumbers
import pytest
from babel.messages.pofile import read_po
from flask import Flask
from flask_babel import Babel, force_locale
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from gateway.i18n import TRANSLATIONS_DIR
from gateway.sms.phone import (
    MAX_INPUT_LENGTH,
    Channel,
    Phone,
    PhoneRejected,
    RejectReason,
    parse_phone,
)
from gateway.sms.policy import NumberType, SmsPolicy

POLICY = SmsPolicy()

SMS, VOICE = Channel.SMS, Channel.VOICE
R = RejectReason

# (typed, default_region, (e164, region, channel) or the reason it is refused)
TABLE: list[tuple[str, str | None, tuple[str, str, Channel] | RejectReason]] = [
    # Netherlands: the Dutch way, the international way, and the numbers that are refused.
    ("06 12345678", None, ("+31612345678", "NL", SMS)),
    ("06-1234 5678", None, ("+31612345678", "NL", SMS)),
    ("+31 6 1234 5678", None, ("+31612345678", "NL", SMS)),
    ("0031 6 12 34 56 78", None, ("+31612345678", "NL", SMS)),
    ("+31 (0)6 12345678", None, ("+31612345678", "NL", SMS)),
    ("020 123 4567", None, ("+31201234567", "NL", VOICE)),
    ("+31 (0)70 123 4567", None, ("+31701234567", "NL", VOICE)),
    ("0800 1234", None, R.TOLL_FREE),
    ("0900 1234", None, R.PREMIUM_RATE),
    ("085 123 4567", None, R.VOIP),
    ("088 123 4567", None, R.UAN),
    ("066 2345678", None, R.PAGER),
    # Belgium
    ("+32 470 12 34 56", None, ("+32470123456", "BE", SMS)),
    ("0470 12 34 56", "BE", ("+32470123456", "BE", SMS)),
    ("+32 12 34 56 78", None, ("+3212345678", "BE", VOICE)),
    ("+32 78 79 12 34", None, R.SHARED_COST),
    ("+32 78 10 23 45", None, R.UAN),
    # Germany
    ("+49 151 23456789", None, ("+4915123456789", "DE", SMS)),
    ("0151 23456789", "DE", ("+4915123456789", "DE", SMS)),
    ("+49 30 123456", None, ("+4930123456", "DE", VOICE)),
    ("+49 180 1 2345", None, R.SHARED_COST),
    ("+49 700 1234 5678", None, R.PERSONAL_NUMBER),
    ("+49 177 99 1234567", None, R.VOICEMAIL),
    ("+49 164 12345", None, R.PAGER),
    # France
    ("+33 6 12 34 56 78", None, ("+33612345678", "FR", SMS)),
    ("+33 1 23 45 67 89", None, ("+33123456789", "FR", VOICE)),
    ("+33 9 12 34 56 78", None, R.VOIP),
    ("+33 8 91 12 34 56", None, R.PREMIUM_RATE),
    # Spain
    ("+34 612 34 56 78", None, ("+34612345678", "ES", SMS)),
    ("+34 91 123 45 67", None, ("+34911234567", "ES", VOICE)),
    ("+34 901 12 34 56", None, R.SHARED_COST),
    # United Kingdom: VoIP 056, personal 070, pager 076, UAN 055
    ("+44 7400 123456", None, ("+447400123456", "GB", SMS)),
    ("07400 123456", "GB", ("+447400123456", "GB", SMS)),
    ("0044 20 7946 0000", None, ("+442079460000", "GB", VOICE)),
    ("+44 800 123 4567", None, R.TOLL_FREE),
    ("+44 909 876 5432", None, R.PREMIUM_RATE),
    ("+44 56 1234 5678", None, R.VOIP),
    ("+44 70 1234 5678", None, R.PERSONAL_NUMBER),
    ("+44 76 4012 3456", None, R.PAGER),
    ("+44 55 1234 5678", None, R.UAN),
    # United States and Canada: one plan, every number "fixed line or mobile"
    ("+1 415 555 0100", None, ("+14155550100", "US", SMS)),
    ("(415) 555-0100", "US", ("+14155550100", "US", SMS)),
    ("011 31 6 12345678", "US", ("+31612345678", "NL", SMS)),
    ("+1 (800) 234-5678", None, R.TOLL_FREE),
    ("+1 900 234 5678", None, R.PREMIUM_RATE),
    ("+1 613 555 0199", None, ("+16135550199", "CA", SMS)),
    # Australia, New Zealand, Japan
    ("+61 491 570 156", None, ("+61491570156", "AU", SMS)),
    ("+61 2 5550 1234", None, ("+61255501234", "AU", VOICE)),
    ("+61 1300 123 456", None, R.SHARED_COST),
    ("+64 21 123 4567", None, ("+64211234567", "NZ", SMS)),
    ("+64 3 234 5678", None, ("+6432345678", "NZ", VOICE)),
    ("+81 90-1234-5678", None, ("+819012345678", "JP", SMS)),
    ("090-1234-5678", "JP", ("+819012345678", "JP", SMS)),
    ("+81 3-1234-5678", None, ("+81312345678", "JP", VOICE)),
    ("+81 50-1234-5678", None, R.VOIP),
    # Brazil, South Africa, India, Morocco, Turkey
    ("+55 11 96123-4567", None, ("+5511961234567", "BR", SMS)),
    ("+55 11 2345-6789", None, ("+551123456789", "BR", VOICE)),
    ("+27 71 123 4567", None, ("+27711234567", "ZA", SMS)),
    ("+27 21 123 4567", None, ("+27211234567", "ZA", VOICE)),
    ("+91 81234 56789", None, ("+918123456789", "IN", SMS)),
    ("+91 1800 12 3456", None, R.TOLL_FREE),
    ("+212 6 50 12 34 56", None, ("+212650123456", "MA", SMS)),
    ("+212 5 20 12 34 56", None, ("+212520123456", "MA", VOICE)),
    ("+90 501 234 56 78", None, ("+905012345678", "TR", SMS)),
    ("+90 212 345 67 89", None, ("+902123456789", "TR", VOICE)),
    # Suriname and the Caribbean parts of the Kingdom
    # (+599 is Curaçao and Bonaire, +1 721 Sint Maarten)
    ("+597 741-2345", None, ("+5977412345", "SR", SMS)),
    ("+597 211-234", None, ("+597211234", "SR", VOICE)),
    ("+599 9 518 1234", None, ("+59995181234", "CW", SMS)),
    ("+599 9 435 1234", None, ("+59994351234", "CW", VOICE)),
    ("+297 560 1234", None, ("+2975601234", "AW", SMS)),
    ("+297 521 2345", None, ("+2975212345", "AW", VOICE)),
    ("+1 721 520 5678", None, ("+17215205678", "SX", SMS)),
    ("+599 318 1234", None, ("+5993181234", "BQ", SMS)),
    # Thailand, Indonesia, Italy (the leading 0 of a landline stays), Switzerland, and more
    ("+66 81 234 5678", None, ("+66812345678", "TH", SMS)),
    ("+66 2 123 4567", None, ("+6621234567", "TH", VOICE)),
    ("+62 812-345-678", None, ("+62812345678", "ID", SMS)),
    ("+62 21 8350123", None, ("+62218350123", "ID", VOICE)),
    ("+39 312 345 6789", None, ("+393123456789", "IT", SMS)),
    ("+39 02 1234 5678", None, ("+390212345678", "IT", VOICE)),
    ("+41 78 123 45 67", None, ("+41781234567", "CH", SMS)),
    ("+41 74 012 34 56", None, R.PAGER),
    ("+48 512 345 678", None, ("+48512345678", "PL", SMS)),
    ("+52 222 123 4567", None, ("+522221234567", "MX", SMS)),
    ("+353 85 012 3456", None, ("+353850123456", "IE", SMS)),
    ("+65 8123 4567", None, ("+6581234567", "SG", SMS)),
    ("+971 50 123 4567", None, ("+971501234567", "AE", SMS)),
    # Numbers of no country: international networks, satellite, global freephone
    ("+882 34 21234", None, R.NON_GEOGRAPHIC),
    ("+881 6 123 45678", None, R.NON_GEOGRAPHIC),
    ("+870 301 234 567", None, R.NON_GEOGRAPHIC),
    ("+800 1234 5678", None, R.NON_GEOGRAPHIC),
]


def test_table_is_as_large_as_the_issue_asks() -> None:
    assert len(TABLE) >= 40
    regions = {phonenumbers.region_code_for_number(phonenumbers.parse(raw, dr or "NL"))
               for raw, dr, _ in TABLE}
    assert len(regions - {"001"}) >= 25
    refused = {e for _, _, e in TABLE if isinstance(e, RejectReason)}
    assert {R.PREMIUM_RATE, R.TOLL_FREE, R.SHARED_COST, R.VOIP, R.PAGER, R.UAN,
            R.PERSONAL_NUMBER, R.VOICEMAIL, R.NON_GEOGRAPHIC} <= refused


@pytest.mark.parametrize(("raw", "default_region", "expected"), TABLE)
def test_table(
    raw: str, default_region: str | None, expected: tuple[str, str, Channel] | RejectReason
) -> None:
    if isinstance(expected, RejectReason):
        with pytest.raises(PhoneRejected) as info:
            parse_phone(raw, POLICY, default_region=default_region)
        assert info.value.reason is expected
        return
    phone = parse_phone(raw, POLICY, default_region=default_region)
    assert (phone.e164, phone.region, phone.channel) == expected
    assert phone.country_code == phonenumbers.parse(phone.e164).country_code
    assert phone.number_type in {"mobile", "fixed_line_or_mobile", "fixed_line"}
    assert (phone.number_type == "fixed_line") == (phone.channel is Channel.VOICE)


def test_phone_fields() -> None:
    phone = parse_phone("06 12345678", POLICY)
    assert phone == Phone("+31612345678", "NL", 31, "mobile", Channel.SMS)
    assert phone.international == "+31 6 12345678"
    assert phone.prefix(2) == "+316123456"
    with pytest.raises(ValueError):
        phone.prefix(0)
    with pytest.raises(AttributeError):
        phone.e164 = "+31600000000"  # type: ignore[misc]


# --- what people type ---------------------------------------------------------------------

SAME_NUMBER = [
    "06 12345678",
    "0612345678",
    "06-12345678",
    "06.12.34.56.78",
    "(06) 1234 5678",
    "6 12345678",  # the trunk 0 forgotten
    "+31612345678",
    "+31 06 12345678",  # the trunk 0 kept after the country code
    "+31 (0)6 12 34 56 78",
    "(+31) 6 12345678",
    "0031612345678",
    "00 31 6 1234 5678",
    "  +31 6 1234 5678\t",
    "+31\u00a06\u00a012345678",  # no-break spaces from a web page
    "+31\u20096\u2009123\u202f456\u202f78",  # thin spaces
    "+31\u20136\u20131234\u20135678",  # en dashes
    "\u202a+31 6 12345678\u202c",  # bidi embedding from a chat app
    "\u200e+31 6 12345678\u200f",
    "\ufeff06 12345678",
    "\uff0b\uff13\uff11\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # full width
    "\u0660\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",  # Arabic-Indic digits
    "\u06f0\u06f6\u06f1\u06f2\u06f3\u06f4\u06f5\u06f6\u06f7\u06f8",  # Persian digits
    "\u0966\u096c\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e",  # Devanagari digits
]


@pytest.mark.parametrize("raw", SAME_NUMBER)
def test_what_people_type_normalises_alike(raw: str) -> None:
    assert parse_phone(raw, POLICY).e164 == "+31612345678"


def test_numbers_without_country_code_are_read_as_dutch_by_default() -> None:
    assert parse_phone("0151 23456789", POLICY, default_region="DE").region == "DE"
    # Read as Dutch, a German national number is no number at all: ask for the country code.
    with pytest.raises(PhoneRejected) as info:
        parse_phone("0151 23456789", POLICY)
    assert info.value.reason is R.INVALID
    assert "country code" in str(info.value.message)


def test_default_region_is_only_for_national_numbers() -> None:
    # 00 means abroad whatever the region's own international prefix is (US: 011).
    assert parse_phone("0044 20 7946 0000", POLICY, default_region="US").region == "GB"
    assert parse_phone("+31 6 12345678", POLICY, default_region="JP").region == "NL"
    assert parse_phone("0470 12 34 56", POLICY, default_region="be").region == "BE"


@pytest.mark.parametrize("region", ["ZZ", "001", "XX", "Netherlands", "nl\x00"])
def test_unknown_default_region_asks_for_the_country_code(region: str) -> None:
    with pytest.raises(PhoneRejected) as info:
        parse_phone("06 12345678", POLICY, default_region=region)
    assert info.value.reason is R.INVALID
    assert parse_phone("+31 6 12345678", POLICY, default_region=region).region == "NL"


def test_empty_default_region_means_the_dutch_default() -> None:
    assert parse_phone("06 12345678", POLICY, default_region="").region == "NL"


# --- hostile input ------------------------------------------------------------------------

HOSTILE = [
    ("", R.EMPTY),
    ("   ", R.EMPTY),
    ("\t\u00a0", R.EMPTY),
    ("+", R.INVALID),
    ("()-.", R.INVALID),
    ("++31612345678", R.INVALID),
    ("+31+612345678", R.INVALID),
    ("0612345678+", R.INVALID),
    ("06 1234 567", R.INVALID),  # a digit short
    ("06 1234 56789", R.INVALID),  # a digit long
    ("+0 612345678", R.INVALID),  # no country code 0
    ("+999 12345678", R.INVALID),  # no country code 999
    ("1-800-FLOWERS", R.INVALID),  # vanity letters
    ("+1 415 555 0100 ext. 12", R.INVALID),  # an extension cannot receive an SMS
    ("tel:+31612345678", R.INVALID),
    ("06 12345678; DROP TABLE phone", R.INVALID),
    ("<script>alert(1)</script>", R.INVALID),
    ("06\x0012345678", R.INVALID),  # NUL
    ("06\n12345678", R.INVALID),  # header injection shape
    ("06\r\n12345678", R.INVALID),
    ("\x1b[31m0612345678", R.INVALID),  # terminal escape
    ("06\u00b212345678", R.INVALID),  # superscript two is a digit, not a decimal digit
    ("06\u216012345678", R.INVALID),  # Roman numeral one
    ("\U0001f4de 06 12345678", R.INVALID),  # telephone emoji
    ("0\u0301612345678", R.INVALID),  # combining accent
    ("0" * 21, R.TOO_LONG),
    ("+" + "1" * 20, R.TOO_LONG),
    ("06 12345678" + " " * MAX_INPUT_LENGTH, R.TOO_LONG),
    ("9" * 100_000, R.TOO_LONG),
    ("\u202e" * 10_000, R.TOO_LONG),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_hostile_input_is_refused_with_a_reason(raw: str, reason: RejectReason) -> None:
    with pytest.raises(PhoneRejected) as info:
        parse_phone(raw, POLICY)
    assert info.value.reason is reason
    # The exception's text is the reason only: it may be logged, the number may not.
    assert str(info.value) == reason.value


def test_length_limit_is_on_the_input_as_typed() -> None:
    number = "+31 6 12345678"
    padded = number.center(MAX_INPUT_LENGTH)
    assert parse_phone(padded, POLICY).e164 == "+31612345678"
    with pytest.raises(PhoneRejected) as info:
        parse_phone(padded + " ", POLICY)
    assert info.value.reason is R.TOO_LONG


def test_not_a_string_is_refused() -> None:
    for value in (None, 31612345678, b"0612345678"):
        with pytest.raises(PhoneRejected):
            parse_phone(value, POLICY)  # type: ignore[arg-type]


def test_a_parser_failure_is_a_refusal_and_logs_no_number(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise IndexError("metadata bug")

    monkeypatch.setattr(phonenumbers, "parse", broken)
    with caplog.at_level(logging.WARNING), pytest.raises(PhoneRejected) as info:
        parse_phone("06 12345678", POLICY)
    assert info.value.reason is R.INVALID
    assert "IndexError" in caplog.text
    assert "12345678" not in caplog.text


def test_unknown_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # is_valid_number implies a known type today; the guard is for metadata that changes.
    monkeypatch.setattr(
        phonenumbers, "number_type", lambda n: PhoneNumberType.UNKNOWN
    )
    with pytest.raises(PhoneRejected) as info:
        parse_phone("06 12345678", POLICY)
    assert info.value.reason is R.UNKNOWN_TYPE


def test_numbers_that_cannot_be_dialled_from_abroad_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        phonenumbers, "can_be_internationally_dialled", lambda n: False
    )
    with pytest.raises(PhoneRejected) as info:
        parse_phone("+44 7400 123456", POLICY)
    assert info.value.reason is R.NOT_REACHABLE
    # Codes leave from the Netherlands: a Dutch number needs no international dialling.
    assert parse_phone("06 12345678", POLICY).region == "NL"


# --- policy -------------------------------------------------------------------------------


def test_blocked_region() -> None:
    policy = SmsPolicy(blocked_regions=["GB"])
    with pytest.raises(PhoneRejected) as info:
        parse_phone("+44 7400 123456", policy)
    assert info.value.reason is R.REGION_BLOCKED
    assert parse_phone("06 12345678", policy).region == "NL"


def test_allowed_regions() -> None:
    policy = SmsPolicy(allowed_regions=["NL", "BE"])
    assert parse_phone("+32 470 12 34 56", policy).region == "BE"
    with pytest.raises(PhoneRejected) as info:
        parse_phone("+49 151 23456789", policy)
    assert info.value.reason is R.REGION_NOT_ALLOWED


def test_regions_sharing_a_country_code_are_told_apart() -> None:
    policy = SmsPolicy(blocked_regions=["CA"])
    assert parse_phone("+1 415 555 0100", policy).region == "US"
    with pytest.raises(PhoneRejected) as info:
        parse_phone("+1 613 555 0199", policy)
    assert info.value.reason is R.REGION_BLOCKED


def test_region_is_checked_before_type() -> None:
    with pytest.raises(PhoneRejected) as info:
        parse_phone("+44 909 876 5432", SmsPolicy(blocked_regions=["GB"]))
    assert info.value.reason is R.REGION_BLOCKED


def test_voice_can_be_closed() -> None:
    policy = SmsPolicy(voice_number_types=[])
    with pytest.raises(PhoneRejected) as info:
        parse_phone("020 123 4567", policy)
    assert info.value.reason is R.TYPE_NOT_ALLOWED
    assert parse_phone("06 12345678", policy).channel is Channel.SMS


def test_fixed_line_or_mobile_can_go_by_voice() -> None:
    policy = SmsPolicy(
        sms_number_types=[NumberType.MOBILE],
        voice_number_types=[NumberType.FIXED_LINE, NumberType.FIXED_LINE_OR_MOBILE],
    )
    phone = parse_phone("+1 415 555 0100", policy)
    assert (phone.number_type, phone.channel) == ("fixed_line_or_mobile", Channel.VOICE)
    assert parse_phone("+44 7400 123456", policy).channel is Channel.SMS


# --- messages -----------------------------------------------------------------------------


def _english(reason: RejectReason) -> str:
    return str(PhoneRejected(reason).message)


def test_every_reason_has_a_message_that_says_what_to_do() -> None:
    for reason in RejectReason:
        text = _english(reason)
        assert text.endswith("."), reason
        assert any(w in text for w in ("Please", "Enter", "Check", "use")), reason
        assert "{" not in text and "%" not in text


def test_every_message_has_dutch_in_the_catalog() -> None:
    with (TRANSLATIONS_DIR / "nl" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    for reason in RejectReason:
        entry = catalog.get(_english(reason))
        assert entry is not None and entry.string, reason
        assert entry.string != entry.id


def test_messages_are_dutch_in_a_dutch_request(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS_DIR)
    Babel(app)
    with app.test_request_context(), force_locale("nl"):
        message = PhoneRejected(R.PREMIUM_RATE).message
        assert str(message).startswith("Dit is een betaalnummer.")
    with app.test_request_context(), force_locale("en"):
        assert str(message).startswith("This is a premium-rate number.")


# --- properties (hypothesis) --------------------------------------------------------------

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
#: What shows up in a phone field: digits of several scripts, separators, plus signs, marks.
PHONEISH = st.text(
    alphabet=st.sampled_from(
        [*"0123456789+ -.()/", "\u00a0", "\u2013", "\uff0b", "\u202a", "\u202c", "\u0661",
         "\uff10", "x", "#", "*"]
    ),
    max_size=30,
)


def _parse_or_reason(raw: str, default_region: str | None = None) -> Phone | RejectReason:
    try:
        return parse_phone(raw, POLICY, default_region=default_region)
    except PhoneRejected as exc:
        return exc.reason


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(st.text(max_size=60), PHONEISH, st.binary(max_size=60).map(
        lambda b: b.decode("latin-1"))),
    default_region=st.one_of(st.none(), st.sampled_from(REGIONS), st.text(max_size=4)),
)
def test_any_text_gives_a_phone_or_a_refusal(raw: str, default_region: str | None) -> None:
    result = _parse_or_reason(raw, default_region)
    if isinstance(result, Phone):
        # Whatever was accepted is a plain E.164 number of a real region, open to codes.
        assert result.e164.startswith("+") and result.e164[1:].isascii()
        assert result.e164[1:].isdigit() and len(result.e164) <= 16
        assert result.region in phonenumbers.SUPPORTED_REGIONS
        assert result.number_type in {"mobile", "fixed_line_or_mobile", "fixed_line"}
        # ... and reading it again gives the same decision.
        assert parse_phone(result.e164, POLICY) == result


@st.composite
def real_numbers(draw: st.DrawFn) -> phonenumbers.PhoneNumber:
    """Valid numbers of every region and type: an example number with its tail changed."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE,
                                 PhoneNumberType.PREMIUM_RATE, PhoneNumberType.VOIP]))
    example = phonenumbers.example_number_for_type(region, kind)
    assume(example is not None)
    assert example is not None
    nsn = phonenumbers.national_significant_number(example)
    tail = draw(st.text("0123456789", min_size=2, max_size=2))
    number = phonenumbers.parse(f"+{example.country_code}{nsn[:-2]}{tail}")
    assume(phonenumbers.is_valid_number(number))
    return number


_FULL_WIDTH = str.maketrans("0123456789+", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17"
                            "\uff18\uff19\uff0b")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(number=real_numbers(), separator=st.sampled_from([" ", "-", ".", "\u00a0", "", " - "]))
def test_formatting_variants_normalise_alike(
    number: phonenumbers.PhoneNumber, separator: str
) -> None:
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(number)
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    expected = _parse_or_reason(e164)
    variants = [
        international,
        international.replace(" ", separator).replace("-", separator),
        "00" + e164[1:],
        f"\u202a{international}\u202c",
        e164.translate(_FULL_WIDTH),
    ]
    for variant in variants:
        assert _parse_or_reason(variant) == expected, variant
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    assert _parse_or_reason(national, default_region=region) == expected, national
    if isinstance(expected, Phone):
        assert expected.e164 == e164 and expected.region == region
