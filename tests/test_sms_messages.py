"""Code messages (issue 3, item 3) and SMS segment counting (3GPP TS 23.038 / 23.040)."""

from __future__ import annotations

import doctest
import math

import pytest
from flask import has_app_context, has_request_context
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sms import messages, phone
from gateway.sms.messages import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    SERVICE_NAME,
    Segments,
    code_message,
    host_of,
    message_language,
    segments,
)
from gateway.sms.phone import Channel
from gateway.sms.purposes import Purpose

CODE = "482913"
#: A long, realistic host: the texts must stay within 2 segments even with this one.
LONG_HOST = "inloggen.buitenland.overheid.example.nl"
SHORT_HOST = "login.example.nl"


def sms(purpose: Purpose, language: str, host: str = LONG_HOST, ttl: int = 5) -> str:
    return code_message(code=CODE, purpose=purpose, language=language, issuer_host=host,
                        channel=Channel.SMS, ttl_minutes=ttl)


def voice(purpose: Purpose, language: str, ttl: int = 5) -> str:
    return code_message(code=CODE, purpose=purpose, language=language, issuer_host=LONG_HOST,
                        channel=Channel.VOICE, ttl_minutes=ttl)


def test_purposes() -> None:
    assert [p.value for p in Purpose] == [
        "login", "activation", "application", "unblock", "recovery", "phone_change", "test"
    ]


@pytest.mark.parametrize("language", ["nl", "en"])
@pytest.mark.parametrize("purpose", list(Purpose))
def test_sms_ends_with_the_webotp_line_and_fits_two_segments(
    purpose: Purpose, language: str
) -> None:
    text = sms(purpose, language)
    lines = text.split("\n")
    assert lines[-1] == f"@{LONG_HOST} #{CODE}"
    body = "\n".join(lines[:-1])
    assert body.count(CODE) == 1
    assert text.count(CODE) == 2
    assert body.startswith(SERVICE_NAME + ":")
    seg = segments(text)
    assert seg.encoding == "GSM-7" and seg.count <= 2
    # Every character in the basic alphabet: no escaped character doubles a septet's cost.
    assert set(text) <= GSM7_BASIC


@pytest.mark.parametrize("language", ["nl", "en"])
def test_a_login_code_to_a_short_host_costs_one_segment(language: str) -> None:
    assert segments(sms(Purpose.LOGIN, language, host=SHORT_HOST)).count == 1


def test_texts_are_dutch_or_english_and_name_purpose_validity_and_warning() -> None:
    nl = sms(Purpose.LOGIN, "nl")
    en = sms(Purpose.LOGIN, "en")
    assert "om in te loggen" in nl and "5 minuten" in nl and "Deel deze code nooit" in nl
    assert "to log in" in en and "5 minutes" in en and "Never share" in en
    assert "1 minuut" in sms(Purpose.LOGIN, "nl", ttl=1)
    assert "1 minute." in sms(Purpose.LOGIN, "en", ttl=1)
    assert "10 minutes" in sms(Purpose.LOGIN, "en", ttl=10)


@pytest.mark.parametrize("language", ["nl", "en"])
def test_each_purpose_says_something_different(language: str) -> None:
    texts = {sms(p, language) for p in Purpose}
    assert len(texts) == len(Purpose)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("nl", "nl"), ("en", "en"), ("EN", "en"), ("en-GB", "en"), ("en_US", "en"),
     ("nl-BE", "nl"), ("de", "nl"), ("", "nl"), (" en ", "en"), ("english", "nl")],
)
def test_language_tags(tag: str, expected: str) -> None:
    assert message_language(tag) == expected
    if expected == "en":
        assert "Never share" in sms(Purpose.LOGIN, tag)
    else:
        assert "Deel deze code nooit" in sms(Purpose.LOGIN, tag)


@pytest.mark.parametrize("language", ["nl", "en"])
def test_voice_speaks_the_digits_apart_twice_without_webotp(language: str) -> None:
    text = voice(Purpose.LOGIN, language)
    assert text.count("4, 8, 2, 9, 1, 3") == 2
    assert CODE not in text
    assert "@" not in text and "#" not in text and "\n" not in text
    assert SERVICE_NAME in text
    assert ("5 minuten" if language == "nl" else "5 minutes") in text


def test_messages_work_outside_a_request() -> None:
    assert not has_app_context() and not has_request_context()
    assert sms(Purpose.RECOVERY, "nl").endswith(f"#{CODE}")


@pytest.mark.parametrize(
    "bad",
    [
        {"code": "12345a"},
        {"code": "123"},
        {"code": "1" * 11},
        {"code": "123456\n@evil.example #999999"},
        {"code": "\uff11\uff12\uff13\uff14\uff15\uff16"},  # full-width digits
        {"issuer_host": "https://login.example.nl"},
        {"issuer_host": "login.example.nl:8443"},
        {"issuer_host": "evil.example #999999\n@login.example.nl"},
        {"issuer_host": "Login.Example.NL"},
        {"issuer_host": ""},
        {"issuer_host": "-bad-.example"},
        {"ttl_minutes": 0},
        {"purpose": "everything"},
        {"channel": "fax"},
    ],
)
def test_arguments_that_could_break_the_message_are_refused(bad: dict[str, object]) -> None:
    args: dict[str, object] = {
        "code": CODE, "purpose": Purpose.LOGIN, "language": "nl",
        "issuer_host": SHORT_HOST, "channel": Channel.SMS, "ttl_minutes": 5,
    }
    args.update(bad)
    with pytest.raises(ValueError):
        code_message(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("issuer", "host"),
    [("https://login.example.nl", "login.example.nl"),
     ("https://Login.Example.NL:8443/base/", "login.example.nl"),
     ("http://127.0.0.1:8000", "127.0.0.1")],
)
def test_host_of_issuer(issuer: str, host: str) -> None:
    assert host_of(issuer) == host


@pytest.mark.parametrize("issuer", ["https://", "not a url", "http://[::1]:8000", "https://a b"])
def test_host_of_issuer_without_a_usable_host(issuer: str) -> None:
    with pytest.raises(ValueError):
        host_of(issuer)


def test_docstring_examples() -> None:
    for module in (messages, phone):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# --- segments -----------------------------------------------------------------------------


def test_gsm_alphabet_tables() -> None:
    # 128 positions less the escape; the extension's ten printable characters.
    assert len(GSM7_BASIC) == 127 and "\x1b" not in GSM7_BASIC
    assert len(GSM7_EXTENSION) == 10 and not GSM7_BASIC & GSM7_EXTENSION
    assert {"@", "£", "é", "Δ", "ß", "¿", "\n"} <= GSM7_BASIC
    assert {"€", "[", "]", "{", "}", "\\", "^", "~", "|", "\f"} == GSM7_EXTENSION


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Segments("GSM-7", 0, 1)),
        ("a" * 160, Segments("GSM-7", 160, 1)),
        ("a" * 161, Segments("GSM-7", 161, 2)),
        ("a" * 306, Segments("GSM-7", 306, 2)),
        ("a" * 307, Segments("GSM-7", 307, 3)),
        ("€", Segments("GSM-7", 2, 1)),
        ("[" * 80, Segments("GSM-7", 160, 1)),
        ("€" * 81, Segments("GSM-7", 162, 2)),
        ("a" * 159 + "€", Segments("GSM-7", 161, 2)),
        ("a" * 158 + "€", Segments("GSM-7", 160, 1)),
        # An escape pair never straddles two parts: 306 septets, yet three parts.
        ("a" * 152 + "€" + "a" * 152, Segments("GSM-7", 306, 3)),
        ("Café Ñandù @ £5, ¿sì?", Segments("GSM-7", 21, 1)),
        ("Ñandú", Segments("UCS-2", 5, 1)),  # ú is not in the GSM alphabet
        ("it’s", Segments("UCS-2", 4, 1)),  # one typographic apostrophe: UCS-2
        ("ł" * 70, Segments("UCS-2", 70, 1)),
        ("ł" * 71, Segments("UCS-2", 71, 2)),
        ("ł" * 134, Segments("UCS-2", 134, 2)),
        ("ł" * 135, Segments("UCS-2", 135, 3)),
        ("😀", Segments("UCS-2", 2, 1)),
        ("😀" * 35, Segments("UCS-2", 70, 1)),
        ("a" * 69 + "😀", Segments("UCS-2", 71, 2)),
        # A surrogate pair never straddles two parts either.
        ("a" * 66 + "😀" + "a" * 66, Segments("UCS-2", 134, 3)),
        ("日本語", Segments("UCS-2", 3, 1)),
    ],
)
def test_segments(text: str, expected: Segments) -> None:
    assert segments(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_segment_count_bounds(text: str) -> None:
    seg = segments(text)
    single, part = (160, 153) if seg.encoding == "GSM-7" else (70, 67)
    if seg.units <= single:
        assert seg.count == 1
    else:
        # At least what full parts need; at most one unit wasted per part.
        assert math.ceil(seg.units / part) <= seg.count <= math.ceil(seg.units / (part - 1))
    if seg.encoding == "GSM-7":
        assert set(text) <= GSM7_BASIC | GSM7_EXTENSION
        assert seg.units == len(text) + sum(ch in GSM7_EXTENSION for ch in text)
    else:
        assert seg.units == len(text.encode("utf-16-le")) // 2
