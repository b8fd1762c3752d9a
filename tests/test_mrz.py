"""ICAO 9303 MRZ parsing and check digits (gateway.desks.mrz)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.desks.mrz import EXPIRY_YEARS_AHEAD, Mrz, MrzError, check_digit, parse_mrz
from gateway.desks.policy import DocumentType

TODAY = date(2025, 6, 1)

# ICAO Doc 9303 Part 4 (TD3, passport) and Part 5 (TD1, identity card) specimens of the
# fictional state Utopia, exactly as printed in the standard.
TD3_SPECIMEN = [
    "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<",
    "L898902C36UTO7408122F1204159ZE184226B<<<<<10",
]
TD1_SPECIMEN = [
    "I<UTOD231458907<<<<<<<<<<<<<<<",
    "7408122F1204159UTO<<<<<<<<<<<6",
    "ERIKSSON<<ANNA<MARIA<<<<<<<<<<",
]

# A Dutch passport-shaped MRZ (fictional holder from the demo register), check digits worked
# out by hand with weights 7-3-1:
#   number XR12B8KP3: X33*7 R27*3 1*1 2*7 B11*3 8*1 K20*7 P25*3 3*1 = 231+81+1+14+33+8+140+75+3
#     = 586 -> 6
#   birth 710423: 49+3+0+28+6+3 = 89 -> 9;  expiry 310615: 21+3+0+42+3+5 = 74 -> 4
#   personal number 999973800<<<<<: 63+27+9+63+21+3+56+0+0 = 242 -> 2
#   composite over number+cd, birth+cd, expiry+cd+optional+cd -> 8
NLD_PASSPORT = [
    "P<NLDVAN<DEN<BERG<<WILLEM<<<<<<<<<<<<<<<<<<<",
    "XR12B8KP36NLD7104239M3106154999973800<<<<<28",
]

CHECK_POSITIONS_TD3 = [(1, 9), (1, 19), (1, 27), (1, 42), (1, 43)]
CHECK_POSITIONS_TD1 = [(0, 14), (1, 6), (1, 14), (1, 29)]


def replace(lines: list[str], row: int, col: int, char: str) -> list[str]:
    changed = list(lines)
    changed[row] = changed[row][:col] + char + changed[row][col + 1 :]
    return changed


def test_check_digit_examples_from_part_3() -> None:
    # Part 3 section 4.9 worked example: date 520727 has check digit 3.
    assert check_digit("520727") == "3"
    assert check_digit("L898902C3") == "6"
    assert check_digit("D23145890") == "7"
    assert check_digit("<<<<<<") == "0"


def test_td3_specimen() -> None:
    mrz = parse_mrz(TD3_SPECIMEN, today=TODAY)
    assert mrz == Mrz(
        format="TD3",
        document_code="P",
        issuing_state="UTO",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        document_number="L898902C3",
        nationality="UTO",
        birth_date=date(1974, 8, 12),
        sex="F",
        expiry=date(2012, 4, 15),
        optional_data="ZE184226B",
    )
    assert mrz.document_type is DocumentType.PASSPORT


def test_td1_specimen() -> None:
    mrz = parse_mrz("\n".join(TD1_SPECIMEN), today=TODAY)
    assert mrz.format == "TD1"
    assert mrz.document_type is DocumentType.IDENTITY_CARD
    assert (mrz.issuing_state, mrz.nationality) == ("UTO", "UTO")
    assert (mrz.surname, mrz.given_names) == ("ERIKSSON", "ANNA MARIA")
    assert mrz.document_number == "D23145890"
    assert mrz.birth_date == date(1974, 8, 12)
    assert mrz.expiry == date(2012, 4, 15)
    assert mrz.sex == "F"
    assert (mrz.optional_data, mrz.optional_data_2) == ("", "")


def test_dutch_passport() -> None:
    mrz = parse_mrz(NLD_PASSPORT, today=TODAY)
    assert mrz.issuing_state == mrz.nationality == "NLD"
    assert mrz.surname == "VAN DEN BERG"
    assert mrz.given_names == "WILLEM"
    assert mrz.document_number == "XR12B8KP3"
    assert mrz.birth_date == date(1971, 4, 23)
    assert mrz.expiry == date(2031, 6, 15)
    assert mrz.optional_data == "999973800"


def test_repr_leaks_no_personal_data() -> None:
    text = repr(parse_mrz(NLD_PASSPORT, today=TODAY))
    for secret in ("BERG", "WILLEM", "XR12B8KP3", "999973800", "1971"):
        assert secret not in text


def test_scanner_noise_around_lines_is_ignored() -> None:
    text = "\r\n  " + "\r\n".join(TD3_SPECIMEN) + "  \r\n\n"
    assert parse_mrz(text, today=TODAY).document_number == "L898902C3"


@pytest.mark.parametrize(
    ("lines", "positions"),
    [(TD3_SPECIMEN, CHECK_POSITIONS_TD3), (TD1_SPECIMEN, CHECK_POSITIONS_TD1),
     (NLD_PASSPORT, CHECK_POSITIONS_TD3)],
)
def test_changing_any_single_check_digit_is_caught(
    lines: list[str], positions: list[tuple[int, int]]
) -> None:
    for row, col in positions:
        for digit in "0123456789<A":
            if digit == lines[row][col]:
                continue
            with pytest.raises(MrzError) as info:
                parse_mrz(replace(lines, row, col, digit), today=TODAY)
            # `<` where TD1 has the number's check digit announces a long number instead,
            # which then does not hold together: refused as a malformed field.
            expected = ("check_digit", "field") if digit == "<" else ("check_digit",)
            assert info.value.reason in expected, (row, col, digit)


@pytest.mark.parametrize(
    ("row", "col", "field"),
    [
        (1, 0, "document_number"),  # a character of the document number
        (1, 15, "birth_date"),
        (1, 24, "expiry"),
        (1, 30, "optional_data"),
        (1, 11, "composite"),  # nationality is covered by the composite digit only
    ],
)
def test_changing_a_data_character_is_caught(row: int, col: int, field: str) -> None:
    char = "7" if TD3_SPECIMEN[row][col] != "7" else "8"
    with pytest.raises(MrzError) as info:
        parse_mrz(replace(TD3_SPECIMEN, row, col, char), today=TODAY)
    assert info.value.reason in ("check_digit", "field")
    if info.value.reason == "check_digit":
        assert info.value.field == field


def test_empty_personal_number_may_have_a_filler_check_digit() -> None:
    line2 = "L898902C36UTO7408122F1204159" + "<" * 14 + "<"
    line2 += check_digit(line2[0:10] + line2[13:20] + line2[21:43])
    mrz = parse_mrz([TD3_SPECIMEN[0], line2], today=TODAY)
    assert mrz.optional_data == ""


def _td1(
    number_field: str, line2_head: str, nationality: str = "UTO", state: str = "UTO"
) -> list[str]:
    line1 = ("I<" + state + number_field).ljust(30, "<")
    line2 = (line2_head + nationality).ljust(29, "<")
    line2 += check_digit(line1[5:30] + line2[0:7] + line2[8:15] + line2[18:29])
    return [line1, line2, "ERIKSSON<<ANNA<MARIA<<<<<<<<<<"]


def test_td1_long_document_number_continues_in_optional_data() -> None:
    # Part 5: a number longer than 9 characters puts `<` in the check digit position and
    # continues in the optional data, followed by its check digit and a filler.
    number = "D23145890123"
    field = number[:9] + "<" + number[9:] + check_digit(number) + "<"
    mrz = parse_mrz(_td1(field, "7408122F1204159"), today=TODAY)
    assert mrz.document_number == number
    # The same lines with a wrong check digit for the long number are refused.
    bad = number[:9] + "<" + number[9:] + str((int(check_digit(number)) + 1) % 10) + "<"
    with pytest.raises(MrzError):
        parse_mrz(_td1(bad, "7408122F1204159"), today=TODAY)


def test_germany_d_is_read_as_deu() -> None:
    number = "T22000129"
    head = "640812" + check_digit("640812") + "F" + "310331" + check_digit("310331")
    lines = _td1(number + check_digit(number), head, nationality="D<<", state="D<<")
    lines[0] = "ID" + lines[0][2:]  # the document code is not covered by any check digit
    mrz = parse_mrz(lines, today=TODAY)
    assert mrz.issuing_state == "DEU"
    assert mrz.nationality == "DEU"
    assert mrz.document_code == "ID"
    assert mrz.document_type is DocumentType.IDENTITY_CARD


@pytest.mark.parametrize(
    ("yymmdd", "birth"),
    [
        ("740812", date(1974, 8, 12)),
        ("250601", date(2025, 6, 1)),  # born today
        ("250602", date(1925, 6, 2)),  # tomorrow in this century: must be the last one
        ("000229", date(2000, 2, 29)),
    ],
)
def test_birth_date_window(yymmdd: str, birth: date) -> None:
    line2 = "L898902C36UTO" + yymmdd + check_digit(yymmdd) + "F1204159ZE184226B<<<<<1"
    line2 += check_digit(line2[0:10] + line2[13:20] + line2[21:43])
    assert parse_mrz([TD3_SPECIMEN[0], line2], today=TODAY).birth_date == birth


@pytest.mark.parametrize(
    ("yymmdd", "expiry"),
    [
        ("120415", date(2012, 4, 15)),
        (f"{(TODAY.year + EXPIRY_YEARS_AHEAD) % 100:02d}1231",
         date(TODAY.year + EXPIRY_YEARS_AHEAD, 12, 31)),
        (f"{(TODAY.year + EXPIRY_YEARS_AHEAD + 1) % 100:02d}0101",
         date(TODAY.year + EXPIRY_YEARS_AHEAD + 1 - 100, 1, 1)),
        ("991231", date(1999, 12, 31)),
    ],
)
def test_expiry_window(yymmdd: str, expiry: date) -> None:
    line2 = "L898902C36UTO7408122F" + yymmdd + check_digit(yymmdd) + "ZE184226B<<<<<1"
    line2 += check_digit(line2[0:10] + line2[13:20] + line2[21:43])
    assert parse_mrz([TD3_SPECIMEN[0], line2], today=TODAY).expiry == expiry


@pytest.mark.parametrize("yymmdd", ["741312", "740832", "010229", "7408AB"])
def test_impossible_dates_are_refused(yymmdd: str) -> None:
    line2 = "L898902C36UTO" + yymmdd + check_digit(yymmdd) + "F1204159ZE184226B<<<<<1"
    line2 += check_digit(line2[0:10] + line2[13:20] + line2[21:43])
    with pytest.raises(MrzError) as info:
        parse_mrz([TD3_SPECIMEN[0], line2], today=TODAY)
    assert info.value.reason == "field"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "shape"),
        ("\n\n", "shape"),
        ([], "shape"),
        (TD3_SPECIMEN[:1], "shape"),
        ([TD3_SPECIMEN[0], TD3_SPECIMEN[1][:-1]], "shape"),  # 43 characters
        ([TD3_SPECIMEN[0] + "<", TD3_SPECIMEN[1] + "<"], "shape"),  # 45
        (TD1_SPECIMEN[:2], "shape"),
        ([*TD1_SPECIMEN, TD1_SPECIMEN[2]], "shape"),  # four lines
        ([line.lower() for line in TD3_SPECIMEN], "characters"),
        ([TD3_SPECIMEN[0].replace("ERIKSSON", "ERIKSSÖN"), TD3_SPECIMEN[1]], "characters"),
        ([TD3_SPECIMEN[0].replace("<<ANNA", "  ANNA"), TD3_SPECIMEN[1]], "characters"),
        ([TD3_SPECIMEN[0], TD3_SPECIMEN[1].replace("0", "O")], "check_digit"),
        ("P" * 10_000, "shape"),
        (["A" * 10_000, "B"], "shape"),
        (None, "shape"),
        (12345, "shape"),
        (b"P<UTO", "shape"),
        ([1, 2], "shape"),
        ({"a": 1}, "shape"),
    ],
)
def test_hostile_input_gives_mrz_error(text: object, reason: str) -> None:
    with pytest.raises(MrzError) as info:
        parse_mrz(text, today=TODAY)
    assert info.value.reason == reason
    assert str(info.value.message)


def test_visa_and_td2_shapes_are_refused() -> None:
    visa = ["V" + TD3_SPECIMEN[0][1:], TD3_SPECIMEN[1]]
    with pytest.raises(MrzError) as info:
        parse_mrz(visa, today=TODAY)
    assert info.value.field == "document_code"
    with pytest.raises(MrzError):
        parse_mrz(["I<UTO" + "<" * 31, "D231458907UTO7408122F1204159<<<<<<<6"], today=TODAY)


def test_names_with_digits_are_refused() -> None:
    lines = [TD3_SPECIMEN[0].replace("ANNA", "AN4A"), TD3_SPECIMEN[1]]
    with pytest.raises(MrzError) as info:
        parse_mrz(lines, today=TODAY)
    assert info.value.field == "name"


def _only_mrz_error(text: object) -> None:
    try:
        result = parse_mrz(text, today=TODAY)
    except MrzError:
        return
    assert isinstance(result, Mrz)


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=300), st.lists(st.text(max_size=60), max_size=5)))
def test_any_text_gives_mrz_or_mrz_error(text: object) -> None:
    _only_mrz_error(text)


MRZ_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<"


@settings(max_examples=200)
@given(
    st.one_of(
        st.lists(st.text(MRZ_CHARS, min_size=30, max_size=30), min_size=3, max_size=3),
        st.lists(st.text(MRZ_CHARS, min_size=44, max_size=44), min_size=2, max_size=2),
    )
)
def test_well_shaped_garbage_gives_mrz_or_mrz_error(lines: list[str]) -> None:
    _only_mrz_error(lines)


@settings(max_examples=200)
@given(st.data())
def test_mutated_specimens_give_mrz_or_mrz_error(data: st.DataObject) -> None:
    lines = list(data.draw(st.sampled_from([TD3_SPECIMEN, TD1_SPECIMEN, NLD_PASSPORT])))
    for _ in range(data.draw(st.integers(1, 4))):
        row = data.draw(st.integers(0, len(lines) - 1))
        col = data.draw(st.integers(0, len(lines[row]) - 1))
        lines = replace(lines, row, col, data.draw(st.sampled_from(MRZ_CHARS)))
    _only_mrz_error(lines)
