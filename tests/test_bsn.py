"""The BSN normal form and eleven-test (gateway.desks.bsn)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.desks.bsn import BsnError, is_valid_bsn, normalise_bsn

# Worked examples published with the rule (RvIG's weights 9..2, -1):
# 123456782: 9+16+21+24+25+24+21+16-2 = 154 = 14*11.
# 249566758: 18+32+63+30+30+24+21+10-8 = 220 = 20*11.
VALID = ["123456782", "249566758", "999900109"]


@pytest.mark.parametrize("bsn", VALID)
def test_valid_numbers_pass(bsn: str) -> None:
    assert is_valid_bsn(bsn)
    assert normalise_bsn(bsn) == bsn


@pytest.mark.parametrize(
    "bsn",
    [
        "123456781",  # off by one in the check position
        "123456783",
        "213456782",  # two digits swapped
        "249566757",
        "000000000",  # passes the arithmetic, never issued
        "12345678",  # 8 digits are not the normal form
        "1234567820",
        "",
        "12345678a",
        "12345678²",  # a superscript two counts as a digit for str.isdigit
        "١٢٣٤٥٦٧٨٢",  # Arabic-Indic digits
        "１２３４５６７８２",  # full-width digits
    ],
)
def test_invalid_numbers_fail(bsn: str) -> None:
    assert not is_valid_bsn(bsn)


def test_eleven_test_uses_minus_one_for_the_last_digit() -> None:
    # 100000002 passes the plain eleven-test of bank account numbers (9*1 + 1*2 = 11) but not
    # the BSN variant (9*1 - 1*2 = 7): a mistyped account number is refused.
    assert not is_valid_bsn("100000002")
    # 100000009: 9*1 - 1*9 = 0 is a valid BSN (and 9 + 9 = 18 is no account number).
    assert is_valid_bsn("100000009")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("123456782", "123456782"),
        (" 123 456 782 ", "123456782"),
        ("123.456.782", "123456782"),
        ("1234\u00a056782", "123456782"),
        # 8 digits get a leading zero (Logisch Ontwerp BSN): 011111112 is
        # 8+7+6+5+4+3+2 - 2 = 33 = 3*11.
        ("11111112", "011111112"),
        ("11.111.112", "011111112"),
    ],
)
def test_normalise_accepts_separators_and_eight_digits(raw: str, expected: str) -> None:
    assert normalise_bsn(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "format"),
        ("1234567", "format"),
        ("1234567890", "format"),
        ("123-456-782", "format"),  # dashes are not a separator a BSN letter uses
        ("12345678x", "format"),
        ("١٢٣٤٥٦٧٨٢", "format"),
        ("1" * 1000, "format"),
        ("123456781", "checksum"),
        ("11111111", "checksum"),
        ("000000000", "checksum"),
        ("00000000", "checksum"),
    ],
)
def test_normalise_refuses_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(BsnError) as info:
        normalise_bsn(raw)
    assert info.value.reason == reason
    assert str(info.value.message)  # a translated text for the form


def test_error_messages_differ_by_reason() -> None:
    with pytest.raises(BsnError) as short:
        normalise_bsn("123")
    with pytest.raises(BsnError) as wrong:
        normalise_bsn("123456781")
    assert str(short.value.message) != str(wrong.value.message)


@given(st.text(max_size=40))
def test_normalise_never_raises_anything_else(raw: str) -> None:
    try:
        result = normalise_bsn(raw)
    except BsnError:
        return
    assert is_valid_bsn(result)


@given(st.integers(min_value=1, max_value=999_999_999))
def test_a_valid_bsn_and_any_single_digit_change(n: int) -> None:
    bsn = str(n).zfill(9)
    if not is_valid_bsn(bsn):
        return
    # The weights 9..2 and -1 are all non-zero and distinct mod 11, so changing one digit
    # always breaks the test.
    for i in range(9):
        for d in "0123456789":
            if d != bsn[i]:
                assert not is_valid_bsn(bsn[:i] + d + bsn[i + 1 :])
