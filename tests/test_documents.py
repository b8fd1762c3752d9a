"""Document checks at the desk (gateway.desks.documents)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.desks.documents import (
    EnteredDocument,
    ProblemCode,
    check_document,
    compare_mrz,
    is_dutch_document_number,
)
from gateway.desks.mrz import parse_mrz
from gateway.desks.policy import DocumentType, EligibilityPolicy
from gateway.policy import load_file
from gateway.settings import DEFAULT_POLICIES_DIR

TODAY = date(2025, 6, 1)

ELIGIBILITY = EligibilityPolicy(
    nationalities=["NLD", "DEU", "BEL", "ESP"],
    accepted_documents=[DocumentType.PASSPORT, DocumentType.IDENTITY_CARD],
)

# The Dutch passport-shaped MRZ of tests/test_mrz.py.
NLD_PASSPORT = [
    "P<NLDVAN<DEN<BERG<<WILLEM<<<<<<<<<<<<<<<<<<<",
    "XR12B8KP36NLD7104239M3106154999973800<<<<<28",
]

GOOD = EnteredDocument(
    document_type=DocumentType.PASSPORT,
    issuing_state="NLD",
    document_number="XR12B8KP3",
    expiry=date(2031, 6, 15),
    nationality="NLD",
    date_of_birth=date(1971, 4, 23),
)


@pytest.mark.parametrize(
    "number", ["XR12B8KP3", "SPECI2014", "AB0000001", "NX4K72LC5", "ZZZZZZZZ9"]
)
def test_dutch_numbers(number: str) -> None:
    assert is_dutch_document_number(number)


@pytest.mark.parametrize(
    "number",
    [
        "XO12B8KP3",  # the letter O is never used
        "XR12B8KO3",
        "OR12B8KP3",
        "XR12B8KPA",  # last character must be a digit
        "1R12B8KP3",  # first two must be letters
        "X112B8KP3",
        "XR12B8KP",  # 8 characters
        "XR12B8KP30",  # 10
        "xr12b8kp3",  # not the normal form
        "XR12B8KP3\n",
        "XR12B8ΚP3",  # Greek capital kappa
        "",
    ],
)
def test_not_dutch_numbers(number: str) -> None:
    assert not is_dutch_document_number(number)


def test_a_good_document_has_no_problems() -> None:
    assert check_document(GOOD, TODAY, ELIGIBILITY) == []


def test_typed_numbers_are_normalised() -> None:
    typed = replace(GOOD, document_number=" xr12-b8kp 3 ", issuing_state="nld", nationality="nld")
    assert check_document(typed, TODAY, ELIGIBILITY) == []


def test_valid_through_the_expiry_date() -> None:
    assert check_document(replace(GOOD, expiry=TODAY), TODAY, ELIGIBILITY) == []
    problems = check_document(replace(GOOD, expiry=date(2025, 5, 31)), TODAY, ELIGIBILITY)
    assert [p.code for p in problems] == [ProblemCode.EXPIRED]
    assert str(problems[0].message)


def test_document_type_not_accepted() -> None:
    passports_only = ELIGIBILITY.model_copy(update={"accepted_documents": [DocumentType.PASSPORT]})
    card = replace(GOOD, document_type=DocumentType.IDENTITY_CARD)
    problems = check_document(card, TODAY, passports_only)
    assert [p.code for p in problems] == [ProblemCode.DOCUMENT_NOT_ACCEPTED]


@pytest.mark.parametrize("nationality", ["USA", "GBR", "UTO", "", "NL", "XXA"])
def test_nationality_not_eligible(nationality: str) -> None:
    problems = check_document(replace(GOOD, nationality=nationality), TODAY, ELIGIBILITY)
    assert [p.code for p in problems] == [ProblemCode.NATIONALITY_NOT_ELIGIBLE]


def test_germany_typed_as_d_is_eligible() -> None:
    german = replace(GOOD, issuing_state="D", nationality="D", document_number="T22000129")
    assert check_document(german, TODAY, ELIGIBILITY) == []


def test_bad_dutch_number_and_the_letter_o_have_their_own_messages() -> None:
    with_o = check_document(replace(GOOD, document_number="XO12B8KP3"), TODAY, ELIGIBILITY)
    wrong = check_document(replace(GOOD, document_number="XR12B8KPA"), TODAY, ELIGIBILITY)
    assert [p.code for p in with_o] == [ProblemCode.BAD_DOCUMENT_NUMBER]
    assert [p.code for p in wrong] == [ProblemCode.BAD_DOCUMENT_NUMBER]
    assert str(with_o[0].message) != str(wrong[0].message)


def test_foreign_numbers_are_not_held_to_the_dutch_form() -> None:
    belgian = replace(GOOD, issuing_state="BEL", nationality="BEL", document_number="592123456")
    assert check_document(belgian, TODAY, ELIGIBILITY) == []
    garbage = replace(belgian, document_number="59<21;3456")
    assert [p.code for p in check_document(garbage, TODAY, ELIGIBILITY)] == [
        ProblemCode.BAD_DOCUMENT_NUMBER
    ]


def test_every_problem_at_once_in_a_fixed_order() -> None:
    bad = EnteredDocument(
        document_type=DocumentType.IDENTITY_CARD,
        issuing_state="NLD",
        document_number="XO",
        expiry=date(2020, 1, 1),
        nationality="USA",
        date_of_birth=date(1971, 4, 23),
    )
    policy = ELIGIBILITY.model_copy(update={"accepted_documents": [DocumentType.PASSPORT]})
    assert [p.code for p in check_document(bad, TODAY, policy)] == [
        ProblemCode.EXPIRED,
        ProblemCode.DOCUMENT_NOT_ACCEPTED,
        ProblemCode.NATIONALITY_NOT_ELIGIBLE,
        ProblemCode.BAD_DOCUMENT_NUMBER,
    ]


def test_the_repository_policy_accepts_a_dutch_passport_and_refuses_an_american() -> None:
    policy = load_file(DEFAULT_POLICIES_DIR / "eligibility.yaml", EligibilityPolicy)
    assert check_document(GOOD, TODAY, policy) == []
    american = replace(GOOD, issuing_state="USA", nationality="USA", document_number="A1234567")
    assert [p.code for p in check_document(american, TODAY, policy)] == [
        ProblemCode.NATIONALITY_NOT_ELIGIBLE
    ]


def test_mrz_agrees_with_what_was_typed() -> None:
    mrz = parse_mrz(NLD_PASSPORT, today=TODAY)
    assert compare_mrz(mrz, GOOD) == []
    assert compare_mrz(mrz, replace(GOOD, document_number="xr12 b8kp3")) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"document_type": DocumentType.IDENTITY_CARD}, "document_type"),
        ({"issuing_state": "BEL"}, "issuing_state"),
        ({"document_number": "XR12B8KP4"}, "document_number"),
        ({"expiry": date(2031, 6, 16)}, "expiry"),
        ({"expiry": date(1931, 6, 15)}, "expiry"),
        ({"date_of_birth": date(1971, 4, 24)}, "date_of_birth"),
        ({"date_of_birth": date(1972, 4, 23)}, "date_of_birth"),
        ({"nationality": "DEU"}, "nationality"),
    ],
)
def test_each_disagreement_is_named(change: dict[str, Any], field: str) -> None:
    mrz = parse_mrz(NLD_PASSPORT, today=TODAY)
    mismatches = compare_mrz(mrz, replace(GOOD, **change))
    assert [m.field for m in mismatches] == [field]
    assert str(mismatches[0].message)
    assert "XR12B8KP" not in str(mismatches[0].message)


def test_birth_date_is_compared_without_the_century() -> None:
    # Someone born in 1918 reads as 2018 from a two-digit year; that is not a mismatch.
    mrz = replace(parse_mrz(NLD_PASSPORT, today=TODAY), birth_date=date(2018, 4, 23))
    assert compare_mrz(mrz, replace(GOOD, date_of_birth=date(1918, 4, 23))) == []


@given(
    st.text(max_size=40),
    st.text(max_size=5),
    st.text(max_size=5),
    st.dates(),
)
def test_hostile_typed_values_never_raise(
    number: str, state: str, nationality: str, day: date
) -> None:
    entered = replace(
        GOOD, document_number=number, issuing_state=state, nationality=nationality, expiry=day
    )
    problems = check_document(entered, TODAY, ELIGIBILITY)
    assert all(str(p.message) for p in problems)
    compare_mrz(parse_mrz(NLD_PASSPORT, today=TODAY), entered)


def test_messages_are_dutch_in_a_dutch_request() -> None:
    from flask import Flask
    from flask_babel import Babel, force_locale

    from gateway.desks.bsn import BsnError, normalise_bsn
    from gateway.desks.mrz import MrzError
    from gateway.i18n import TRANSLATIONS_DIR

    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS_DIR)
    Babel(app)
    expired = check_document(replace(GOOD, expiry=date(2020, 1, 1)), TODAY, ELIGIBILITY)[0]
    with pytest.raises(BsnError) as bsn_error:
        normalise_bsn("123456781")
    broken = [NLD_PASSPORT[0], NLD_PASSPORT[1][:9] + "7" + NLD_PASSPORT[1][10:]]
    with pytest.raises(MrzError) as mrz_error:
        parse_mrz(broken, today=TODAY)
    with app.test_request_context(), force_locale("nl"):
        assert str(expired.message).startswith("Dit document is verlopen.")
        assert str(bsn_error.value.message).startswith("Dit is geen geldig BSN.")
        assert str(mrz_error.value.message).startswith(
            "Het controlecijfer van het documentnummer in de machineleesbare zone klopt niet."
        )
    with app.test_request_context(), force_locale("en"):
        assert str(mrz_error.value.message).startswith(
            "The check digit of the document number in the machine-readable zone is wrong."
        )


def test_every_desk_check_message_has_dutch() -> None:
    from babel.messages.extract import extract_from_file
    from babel.messages.pofile import read_po

    from gateway.i18n import TRANSLATIONS_DIR

    with (TRANSLATIONS_DIR / "nl" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    desks = TRANSLATIONS_DIR.parent / "desks"
    found = 0
    for module in ("bsn", "mrz", "documents", "codes", "register", "cli"):
        for _line, message, _comments, _context in extract_from_file(
            "python", str(desks / f"{module}.py"), keywords={"lazy_gettext": None, "gettext": None}
        ):
            found += 1
            entry = catalog.get(message)
            assert entry is not None and entry.string and entry.string != entry.id, message
    assert found > 30
