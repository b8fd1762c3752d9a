"""Document checks at the desk: what the officer typed, the MRZ, and the eligibility policy.

A desk officer records a document (type, issuing state, number, expiry) and may scan its MRZ
(gateway.desks.mrz). Two pure checks run over that record, so the desk service, the web UI and
the JSON API all refuse the same things for the same reasons:

- `check_document(entered, today, eligibility)`: the document itself is acceptable: not
  expired, a type the policy accepts, a nationality the policy makes eligible, and for Dutch
  documents a number of the Dutch form (below);
- `compare_mrz(mrz, entered)`: the MRZ agrees with what was typed (document type, issuing
  state, number, expiry, nationality, date of birth), so a typing error or a document that is
  not the one on the desk is noticed.

Dutch passport and identity card numbers (since 2014; RvIG "documentnummer"): two letters,
six letters or digits, one digit: `^[A-Z]{2}[0-9A-Z]{6}[0-9]$`, and never the letter O, which
the Dutch state does not use in document numbers so that it cannot be confused with zero.

Each result carries a stable code (for the API and audit log) and a lazy, translated message
(for the officer). The messages never contain the values themselves: they end up in logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from gateway.desks.mrz import Mrz
from gateway.desks.policy import DocumentType, EligibilityPolicy
from gateway.i18n import lazy_gettext

DUTCH_DOCUMENT_NUMBER = re.compile(r"[A-Z]{2}[0-9A-Z]{6}[0-9]")
#: Any state's document number as the MRZ can carry it (ICAO 9303 allows up to 9 characters in
#: the field, more for TD1 through the optional data); longer input is refused outright.
DOCUMENT_NUMBER = re.compile(r"[A-Z0-9]{1,20}")
_SEPARATORS = re.compile(r"[\s\-]")
#: Germany's MRZ code (ICAO 9303 Part 3) and its alpha-3 form; accepted when typed too.
_STATE_ALIASES = {"D": "DEU"}


@dataclass(frozen=True)
class EnteredDocument:
    """What the officer recorded about the document on the desk, together with the
    applicant's date of birth and nationality (from the application)."""

    document_type: DocumentType
    #: ISO 3166-1 alpha-3 as in the MRZ (`NLD`, `DEU`, ...).
    issuing_state: str
    document_number: str
    expiry: date
    nationality: str
    date_of_birth: date


class ProblemCode(StrEnum):
    EXPIRED = "expired"
    DOCUMENT_NOT_ACCEPTED = "document_not_accepted"
    NATIONALITY_NOT_ELIGIBLE = "nationality_not_eligible"
    BAD_DOCUMENT_NUMBER = "bad_document_number"
    NOT_IN_REGISTER = "not_in_register"
    NOT_NON_RESIDENT = "not_non_resident"


@dataclass(frozen=True)
class Problem:
    """A reason to refuse. `message` is lazy and translated."""

    code: ProblemCode
    message: Any


@dataclass(frozen=True)
class Mismatch:
    """Two sources disagree about one field (`field` is the EnteredDocument/register field
    name). `message` is lazy and translated."""

    field: str
    message: Any


def normalise_document_number(raw: str) -> str:
    """Upper case without spaces or dashes: how officers type a number from the page."""
    return _SEPARATORS.sub("", raw).upper()


def normalise_state(raw: str) -> str:
    """Upper-case alpha-3, with Germany's `D` (as printed in its MRZ) read as `DEU`."""
    code = raw.strip().strip("<").upper()
    return _STATE_ALIASES.get(code, code)


def is_dutch_document_number(number: str) -> bool:
    """The Dutch passport / identity card number form, without the letter O."""
    return bool(DUTCH_DOCUMENT_NUMBER.fullmatch(number)) and "O" not in number


def check_document(
    entered: EnteredDocument, today: date, eligibility: EligibilityPolicy
) -> list[Problem]:
    """Every reason, in a fixed order, why this document cannot be used; empty when it can.

    `today` is the desk's date; a document is valid up to and including its expiry date.
    """
    problems: list[Problem] = []
    if entered.expiry < today:
        problems.append(
            Problem(
                ProblemCode.EXPIRED,
                lazy_gettext(
                    "This document has expired. Ask for a valid passport or identity card."
                ),
            )
        )
    if entered.document_type not in eligibility.accepted_documents:
        problems.append(
            Problem(
                ProblemCode.DOCUMENT_NOT_ACCEPTED,
                lazy_gettext(
                    "This type of document is not accepted. Ask for a passport or identity card."
                ),
            )
        )
    if normalise_state(entered.nationality) not in eligibility.nationalities:
        problems.append(
            Problem(
                ProblemCode.NATIONALITY_NOT_ELIGIBLE,
                lazy_gettext("People of this nationality cannot get an account from abroad."),
            )
        )
    number = normalise_document_number(entered.document_number)
    if normalise_state(entered.issuing_state) == "NLD":
        if "O" in number:
            problems.append(
                Problem(
                    ProblemCode.BAD_DOCUMENT_NUMBER,
                    lazy_gettext(
                        "Dutch document numbers never contain the letter O; it is the digit 0."
                    ),
                )
            )
        elif not is_dutch_document_number(number):
            problems.append(
                Problem(
                    ProblemCode.BAD_DOCUMENT_NUMBER,
                    lazy_gettext(
                        "This is not a Dutch document number: two letters, six letters or digits,"
                        " and a final digit (9 characters)."
                    ),
                )
            )
    elif not DOCUMENT_NUMBER.fullmatch(number):
        problems.append(
            Problem(
                ProblemCode.BAD_DOCUMENT_NUMBER,
                lazy_gettext("A document number has only letters and digits."),
            )
        )
    return problems


_MRZ_MISMATCH_MESSAGES: dict[str, Any] = {
    "document_type": lazy_gettext(
        "The document type in the machine-readable zone differs from the one entered."
    ),
    "issuing_state": lazy_gettext(
        "The issuing country in the machine-readable zone differs from the one entered."
    ),
    "document_number": lazy_gettext(
        "The document number in the machine-readable zone differs from the one entered."
    ),
    "expiry": lazy_gettext(
        "The expiry date in the machine-readable zone differs from the one entered."
    ),
    "date_of_birth": lazy_gettext(
        "The date of birth in the machine-readable zone differs from the application."
    ),
    "nationality": lazy_gettext(
        "The nationality in the machine-readable zone differs from the application."
    ),
}


def _yymmdd(d: date) -> tuple[int, int, int]:
    return d.year % 100, d.month, d.day


def compare_mrz(mrz: Mrz, entered: EnteredDocument) -> list[Mismatch]:
    """Every field where the scanned MRZ and the typed record disagree; empty when they agree.

    The birth date is compared without its century: the MRZ has two-digit years, and a
    107-year-old applicant must not be refused because the window in gateway.desks.mrz reads
    their year as 2018. Day, month and year-in-century still have to agree. The expiry is
    compared in full (its window is unambiguous for any document in circulation).
    """
    in_mrz = {
        "document_type": mrz.document_type == entered.document_type,
        "issuing_state": mrz.issuing_state == normalise_state(entered.issuing_state),
        "document_number": mrz.document_number
        == normalise_document_number(entered.document_number),
        "expiry": mrz.expiry == entered.expiry,
        "date_of_birth": _yymmdd(mrz.birth_date) == _yymmdd(entered.date_of_birth),
        "nationality": mrz.nationality == normalise_state(entered.nationality),
    }
    return [
        Mismatch(name, _MRZ_MISMATCH_MESSAGES[name])
        for name, agrees in in_mrz.items()
        if not agrees
    ]
