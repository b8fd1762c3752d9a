"""Machine-readable zones (MRZ) of passports and identity cards, ICAO Doc 9303 (8th edition).

Two formats are read, the ones a desk sees on documents it accepts:
- TD3 (Part 4, passports): 2 lines of 44 characters;
- TD1 (Part 5, identity cards): 3 lines of 30 characters.
TD2 (2×36) and visas (MRV) are refused: they are not documents a desk accepts.

Check digits follow Part 3 section 4.9: character values 0-9 for digits, A=10 … Z=35 and
`<` = 0, weighted 7, 3, 1 repeating, summed, modulo 10. Every check digit is verified: document
number, birth date, expiry, the optional data where the format has its own digit (TD3 only),
and the composite digit. A TD1 document number longer than 9 characters continues in the
optional data field, marked by `<` in the check digit position (Part 5, the note on the
document number), and is read that way.

Two-digit years are resolved against `today` (a parameter, so tests and replays are exact):
- a birth date is never in the future: `yy` is 20yy unless that is after today, else 19yy
  (someone over 100 reads as a baby; desks compare birth dates without the century, see
  gateway.desks.documents.compare_mrz, so this cannot cause a false match or mismatch);
- an expiry date is at most `EXPIRY_YEARS_AHEAD` years ahead: `yy` is 20yy unless that is
  further ahead, else 19yy. No document is issued for longer than 30 years (the longest we know
  is the Belgian eID for people over 75); a document that expired 70 years ago cannot carry
  an MRZ (they began in 1980), so the window cannot hide an old expiry.

Germany writes its state code as `D<<` (Part 3, the one exception to alpha-3); it is read
as `DEU` everywhere so the rest of the gateway only ever sees alpha-3 codes.

Anything that is not a well-formed MRZ (wrong length, lower case, characters outside the
MRZ set, bad dates, bad check digits, any garbage) raises `MrzError` with a translated message
and a machine-readable `reason`; no other exception leaves `parse_mrz`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from gateway.desks.policy import DocumentType
from gateway.i18n import lazy_gettext

#: Longest input accepted before looking at it: three TD1 lines or two TD3 lines with line
#: breaks and a scanner's surrounding white space fit easily.
MAX_INPUT_CHARS = 200
#: See the module docstring: how far ahead a two-digit expiry year may resolve.
EXPIRY_YEARS_AHEAD = 30

_MRZ_LINE = re.compile(r"[A-Z0-9<]+")
_STATE = re.compile(r"[A-Z]{1,3}")
_GERMANY = "D<<"


class MrzError(ValueError):
    """Not a valid MRZ. `message` is a lazy, translated text for the desk officer;
    `reason` is a stable code ("shape", "characters", "check_digit", "date", "field")."""

    def __init__(self, message: Any, reason: str, field: str | None = None) -> None:
        super().__init__(str(message))
        self.message = message
        self.reason = reason
        #: For check-digit and field errors: which field ("document_number", "birth_date", ...).
        self.field = field


@dataclass(frozen=True)
class Mrz:
    """The fields of a parsed MRZ. Names use spaces where the MRZ has `<` fillers."""

    format: str  # "TD1" or "TD3"
    #: The MRZ document code without fillers: "P", "PN", "I", "ID", ...
    document_code: str
    issuing_state: str
    # Personal data is kept out of repr(), so a logged Mrz leaks nothing.
    surname: str = dataclasses.field(repr=False)
    given_names: str = dataclasses.field(repr=False)
    document_number: str = dataclasses.field(repr=False)
    nationality: str
    birth_date: date = dataclasses.field(repr=False)
    #: "F", "M" or "X" (unspecified; older documents print `<`).
    sex: str = dataclasses.field(repr=False)
    expiry: date
    #: TD3: the personal number field (a BSN on Dutch passports); TD1: the optional data of
    #: line 1 after the document number (a BSN on Dutch identity cards).
    optional_data: str = dataclasses.field(repr=False)
    #: TD1 only: the optional data of line 2.
    optional_data_2: str = dataclasses.field(default="", repr=False)

    @property
    def document_type(self) -> DocumentType | None:
        """Passport for TD3 `P…`, identity card for TD1 `I…`; None for anything else
        (crew certificates `A…`/`C…`), which a desk does not accept."""
        if self.format == "TD3" and self.document_code.startswith("P"):
            return DocumentType.PASSPORT
        if self.format == "TD1" and self.document_code.startswith("I"):
            return DocumentType.IDENTITY_CARD
        return None


def char_value(char: str) -> int:
    """ICAO 9303 Part 3 §4.9: digits are themselves, A=10 … Z=35, the filler `<` is 0."""
    if "0" <= char <= "9":
        return ord(char) - ord("0")
    if "A" <= char <= "Z":
        return ord(char) - ord("A") + 10
    if char == "<":
        return 0
    raise ValueError(f"not an MRZ character: {char!r}")


def check_digit(data: str) -> str:
    """The check digit of `data` (weights 7, 3, 1 repeating; sum modulo 10)."""
    weights = (7, 3, 1)
    return str(sum(char_value(c) * weights[i % 3] for i, c in enumerate(data)) % 10)


def parse_mrz(text: object, *, today: date) -> Mrz:
    """Parse a TD1 or TD3 MRZ from one string (lines separated by line breaks) or a sequence
    of lines; raise `MrzError` for anything else.

    White space around each line (a scanner's carriage returns, trailing blanks) and empty
    lines are ignored; inside a line nothing is corrected: lower case and look-alike
    characters are refused, since guessing would defeat the check digits.
    """
    try:
        lines = _split(text)
        if len(lines) == 3 and all(len(line) == 30 for line in lines):
            return _parse_td1(lines, today)
        if len(lines) == 2 and all(len(line) == 44 for line in lines):
            return _parse_td3(lines, today)
        raise MrzError(
            lazy_gettext(
                "This is not the machine-readable zone of a passport (2 lines of 44 characters)"
                " or an identity card (3 lines of 30 characters)."
            ),
            "shape",
        )
    except MrzError:
        raise
    except Exception as exc:  # the contract: nothing but MrzError leaves here
        raise MrzError(
            lazy_gettext("The machine-readable zone could not be read."), "field"
        ) from exc


# --- internals --------------------------------------------------------------------------------


def _split(text: object) -> list[str]:
    if isinstance(text, str):
        if len(text) > MAX_INPUT_CHARS:
            raise _shape_error()
        raw_lines: Sequence[object] = text.splitlines()
    elif isinstance(text, Sequence) and not isinstance(text, (bytes, bytearray)):
        if len(text) > 3:
            raise _shape_error()
        raw_lines = list(text)
    else:
        raise _shape_error()
    if not all(isinstance(line, str) and len(line) <= MAX_INPUT_CHARS for line in raw_lines):
        raise _shape_error()
    lines = [str(line).strip() for line in raw_lines if str(line).strip()]
    for line in lines:
        if not _MRZ_LINE.fullmatch(line):
            raise MrzError(
                lazy_gettext(
                    "The machine-readable zone may only contain capital letters A-Z, digits"
                    " and the < sign."
                ),
                "characters",
            )
    return lines


def _shape_error() -> MrzError:
    return MrzError(
        lazy_gettext(
            "This is not the machine-readable zone of a passport (2 lines of 44 characters)"
            " or an identity card (3 lines of 30 characters)."
        ),
        "shape",
    )


#: With their article, which Dutch chooses per word (het documentnummer, de geboortedatum).
_FIELD_LABELS = {
    "document_number": lazy_gettext("the document number"),
    "birth_date": lazy_gettext("the date of birth"),
    "expiry": lazy_gettext("the expiry date"),
    "optional_data": lazy_gettext("the personal number"),
    "composite": lazy_gettext("the zone as a whole"),
}


def _verify(data: str, digit: str, field: str) -> None:
    if not digit.isdigit() or check_digit(data) != digit:
        raise MrzError(
            lazy_gettext(
                "The check digit of %(field)s in the machine-readable zone is wrong."
                " Scan the document again or type the lines exactly as printed.",
                field=_FIELD_LABELS[field],
            ),
            "check_digit",
            field,
        )


def _field_error(field: str) -> MrzError:
    return MrzError(
        lazy_gettext(
            "In the machine-readable zone, %(field)s is invalid.",
            field=_FIELD_LABELS.get(field, field),
        ),
        "field",
        field,
    )


def _state(raw: str, field: str) -> str:
    if raw == _GERMANY:
        return "DEU"
    code = raw.rstrip("<")
    if not _STATE.fullmatch(code) or len(code) != 3:
        raise MrzError(
            lazy_gettext("The machine-readable zone has an invalid country code."), "field", field
        )
    return code


def _names(raw: str) -> tuple[str, str]:
    primary, _, secondary = raw.rstrip("<").partition("<<")
    surname = " ".join(part for part in primary.split("<") if part)
    given = " ".join(part for part in secondary.split("<") if part)
    if not surname or any(c.isdigit() for c in raw):
        raise MrzError(
            lazy_gettext("The machine-readable zone has an invalid name."), "field", "name"
        )
    return surname, given


def _date(raw: str, field: str, today: date) -> date:
    if not raw.isdigit():
        raise _field_error(field)
    yy, mm, dd = int(raw[0:2]), int(raw[2:4]), int(raw[4:6])
    try:
        if field == "birth_date":
            candidate = date(2000 + yy, mm, dd)
            if candidate > today:
                candidate = date(1900 + yy, mm, dd)
        else:
            candidate = date(2000 + yy, mm, dd)
            if candidate.year > today.year + EXPIRY_YEARS_AHEAD:
                candidate = date(1900 + yy, mm, dd)
    except ValueError:
        raise _field_error(field) from None
    return candidate


def _sex(raw: str) -> str:
    if raw == "<":
        return "X"
    if raw in ("F", "M", "X"):
        return raw
    raise MrzError(lazy_gettext("The machine-readable zone has an invalid sex."), "field", "sex")


def _document_code(raw: str, allowed: str) -> str:
    code = raw.rstrip("<")
    if not code or code[0] not in allowed or not code.isalpha():
        raise MrzError(
            lazy_gettext("This machine-readable zone is not from a passport or identity card."),
            "field",
            "document_code",
        )
    return code


def _parse_td3(lines: list[str], today: date) -> Mrz:
    # Part 4, section 4.2.2: line 1 = code(2) state(3) names(39);
    # line 2 = number(9) cd nationality(3) birth(6) cd sex expiry(6) cd optional(14) cd composite.
    l1, l2 = lines
    document_code = _document_code(l1[0:2], "P")
    issuing_state = _state(l1[2:5], "issuing_state")
    surname, given_names = _names(l1[5:44])

    number, number_cd = l2[0:9], l2[9]
    birth, birth_cd = l2[13:19], l2[19]
    expiry, expiry_cd = l2[21:27], l2[27]
    optional, optional_cd = l2[28:42], l2[42]
    _verify(number, number_cd, "document_number")
    _verify(birth, birth_cd, "birth_date")
    _verify(expiry, expiry_cd, "expiry")
    # An empty personal number may carry `<` as its check digit (Part 4).
    if not (optional == "<" * 14 and optional_cd == "<"):
        _verify(optional, optional_cd, "optional_data")
    _verify(l2[0:10] + l2[13:20] + l2[21:43], l2[43], "composite")

    document_number = number.rstrip("<")
    if not document_number or "<" in document_number:
        raise _field_error("document_number")
    return Mrz(
        format="TD3",
        document_code=document_code,
        issuing_state=issuing_state,
        surname=surname,
        given_names=given_names,
        document_number=document_number,
        nationality=_state(l2[10:13], "nationality"),
        birth_date=_date(birth, "birth_date", today),
        sex=_sex(l2[20]),
        expiry=_date(expiry, "expiry", today),
        optional_data=optional.rstrip("<"),
    )


def _parse_td1(lines: list[str], today: date) -> Mrz:
    # Part 5, section 4.2.2: line 1 = code(2) state(3) number(9) cd optional(15);
    # line 2 = birth(6) cd sex expiry(6) cd nationality(3) optional(11) composite;
    # line 3 = names(30).
    l1, l2, l3 = lines
    document_code = _document_code(l1[0:2], "IAC")
    issuing_state = _state(l1[2:5], "issuing_state")

    number, number_cd, optional = l1[5:14], l1[14], l1[15:30]
    if number_cd == "<":
        # Long document number (Part 5): the rest of the number, then its check digit,
        # then `<`, at the start of the optional data field.
        extension, _, rest = optional.partition("<")
        if len(extension) < 2:
            raise _field_error("document_number")
        number, number_cd, optional = number + extension[:-1], extension[-1], rest
    _verify(number, number_cd, "document_number")

    birth, birth_cd = l2[0:6], l2[6]
    expiry, expiry_cd = l2[8:14], l2[14]
    _verify(birth, birth_cd, "birth_date")
    _verify(expiry, expiry_cd, "expiry")
    _verify(l1[5:30] + l2[0:7] + l2[8:15] + l2[18:29], l2[29], "composite")

    document_number = number.rstrip("<")
    if not document_number or "<" in document_number:
        raise _field_error("document_number")
    surname, given_names = _names(l3)
    return Mrz(
        format="TD1",
        document_code=document_code,
        issuing_state=issuing_state,
        surname=surname,
        given_names=given_names,
        document_number=document_number,
        nationality=_state(l2[15:18], "nationality"),
        birth_date=_date(birth, "birth_date", today),
        sex=_sex(l2[7]),
        expiry=_date(expiry, "expiry", today),
        optional_data=optional.strip("<"),
        optional_data_2=l2[18:29].rstrip("<"),
    )
