"""Desk, activation and other typed codes (gateway.desks.codes)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.desks.codes import (
    ACTIVATION_CODE_VALIDITY,
    ALPHABET,
    BODY_LENGTH,
    CODE_LENGTH,
    DESK_CODE_VALIDITY,
    CodeKind,
    code_hmac,
    codes_equal,
    is_well_formed,
    new_code,
    normalise_code,
)
from gateway.settings import Settings

SETTINGS = Settings(secret_key=b"k" * 40)


def test_alphabet_has_no_vowels_and_no_zero_or_one() -> None:
    assert ALPHABET == "BCDFGHJKLMNPQRSTVWXZ23456789"
    assert len(ALPHABET) == len(set(ALPHABET)) == 28
    assert not set(ALPHABET) & set("AEIOUY01")


def test_prefixes_and_lengths() -> None:
    assert {k.prefix for k in CodeKind} == {"B", "A", "D", "H", "E"}
    assert CodeKind.DESK.prefix == "B"
    assert CodeKind.ACTIVATION.prefix == "A"
    assert CODE_LENGTH == 9


def test_entropy_is_above_38_bits() -> None:
    bits = BODY_LENGTH * math.log2(len(ALPHABET))
    assert 38.4 < bits < 38.5


def test_validity_rules() -> None:
    assert DESK_CODE_VALIDITY.days == 30
    assert ACTIVATION_CODE_VALIDITY.days == 20
    assert DESK_CODE_VALIDITY.seconds == ACTIVATION_CODE_VALIDITY.seconds == 0


@pytest.mark.parametrize("kind", list(CodeKind))
def test_new_codes_have_the_shape_of_their_kind(kind: CodeKind) -> None:
    codes = {new_code(kind) for _ in range(2000)}
    assert len(codes) == 2000  # a repeat in 2000 draws from 2**38.5 would mean a broken RNG
    pattern = re.compile(f"{kind.prefix}[{ALPHABET}]{{8}}")
    assert all(pattern.fullmatch(c) for c in codes)
    assert all(is_well_formed(c, kind) for c in codes)
    # Every character is used (16,000 draws; missing one has probability ~ 28 * (27/28)**16000).
    assert set("".join(c[1:] for c in codes)) == set(ALPHABET)
    other = next(k for k in CodeKind if k is not kind)
    assert not any(is_well_formed(c, other) for c in codes)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("BCDFGHJKL", "BCDFGHJKL"),
        ("bcdfghjkl", "BCDFGHJKL"),
        (" B-CDFG-HJKL ", "BCDFGHJKL"),
        ("b cdf ghj kl", "BCDFGHJKL"),
        ("B–CDFG—HJKL", "BCDFGHJKL"),  # en and em dashes from a word processor
        ("ＢＣＤＦＧＨＪＫＬ", "BCDFGHJKL"),  # full-width letters from a phone keyboard
        ("B\tCDFG\u00a0HJKL\n", "BCDFGHJKL"),
        ("B" + "-" * 100, ""),  # too long to be looked at
    ],
)
def test_normalise(raw: str, normal: str) -> None:
    assert normalise_code(raw) == normal


@pytest.mark.parametrize(
    "code",
    [
        "BCDFGHJKL0",  # 10 characters
        "BCDFGHJK",  # 8
        "CCDFGHJKL",  # wrong kind
        "ACDFGHJKL",
        "BCDFGHJKA",  # a vowel
        "BCDFGHJK0",  # zero
        "BCDFGHJK1",
        "BCDFGHJKO",  # letter O: not mapped to anything
        "bcdfghjkl",  # not normalised
        "B<DFGHJKL",
        "",
    ],
)
def test_not_well_formed_desk_codes(code: str) -> None:
    assert not is_well_formed(code, CodeKind.DESK)


def test_hmac_is_stable_keyed_and_separated_by_kind() -> None:
    code = "BCDFGHJKL"
    digest = code_hmac(SETTINGS, CodeKind.DESK, code)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert code not in digest
    assert code_hmac(SETTINGS, CodeKind.DESK, " bcdf-ghjkl ") == digest
    assert code_hmac(SETTINGS, CodeKind.ACTIVATION, code) != digest
    assert code_hmac(Settings(secret_key=b"j" * 40), CodeKind.DESK, code) != digest
    assert code_hmac(SETTINGS, CodeKind.DESK, "BCDFGHJKM") != digest


def test_codes_equal() -> None:
    a = code_hmac(SETTINGS, CodeKind.ACTIVATION, "A23456789")
    assert codes_equal(a, code_hmac(SETTINGS, CodeKind.ACTIVATION, "a2345-6789"))
    assert not codes_equal(a, code_hmac(SETTINGS, CodeKind.ACTIVATION, "A23456788"))
    assert not codes_equal(a, a[:-1])
    assert not codes_equal(a, "")


@given(st.text(max_size=80))
def test_hostile_input_is_simply_not_well_formed(raw: str) -> None:
    normal = normalise_code(raw)
    for kind in CodeKind:
        if is_well_formed(normal, kind):
            assert len(normal) == CODE_LENGTH and normal[0] == kind.prefix
        code_hmac(SETTINGS, kind, raw)
