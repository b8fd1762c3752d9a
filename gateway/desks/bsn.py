"""The burgerservicenummer (BSN): normal form and the eleven-test.

Rules from the Logisch Ontwerp BSN (RvIG), as also stated in the Handreiking BSN:
- a BSN has 9 digits; 8-digit numbers (issued early, when it replaced the sofinummer) are
  valid and get a leading zero, so `12345678` is read as `012345678`. Spreadsheets drop that
  zero, which is the common way an 8-digit BSN reaches us;
- it passes the BSN variant of the eleven-test:
  9*d1 + 8*d2 + 7*d3 + 6*d4 + 5*d5 + 4*d6 + 3*d7 + 2*d8 - 1*d9 ≡ 0 (mod 11).
  The last weight is -1 rather than +1 so that a bank account number (plain eleven-test)
  typed by mistake is refused;
- 000000000 passes the arithmetic but is never issued (it is the "unknown" value in registers).

Passing the test says the number is well formed, not that it was issued or belongs to the
person typing it; the population register answers that (gateway.desks.register).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.i18n import lazy_gettext

#: Input longer than this is refused before any work is done on it (a BSN with every
#: separator a person might type is far shorter).
MAX_INPUT_CHARS = 32

_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)
_NINE_DIGITS = re.compile(r"[0-9]{9}")
_EIGHT_OR_NINE = re.compile(r"[0-9]{8,9}")
#: Separators people type when copying a BSN from a letter: spaces (also non-breaking) and dots.
_SEPARATORS = re.compile(r"[ .\u00a0]")


class BsnError(ValueError):
    """The input is not a valid BSN. `message` is a lazy, translated text for a form."""

    def __init__(self, message: Any, reason: str) -> None:
        super().__init__(str(message))
        self.message = message
        #: "format" (not 8 or 9 digits) or "checksum" (fails the eleven-test or is all zeros).
        self.reason = reason


def is_valid_bsn(s: str) -> bool:
    """True for exactly 9 ASCII digits, not all zero, passing the BSN eleven-test.

    Takes the normal form only; use `normalise_bsn` on what a person typed.
    """
    if not isinstance(s, str) or not _NINE_DIGITS.fullmatch(s) or s == "000000000":
        return False
    total = sum(weight * int(digit) for weight, digit in zip(_WEIGHTS, s, strict=True))
    return total % 11 == 0


def normalise_bsn(raw: str) -> str:
    """The 9-digit normal form of a BSN a person typed, or `BsnError`.

    Spaces and dots are allowed anywhere (`123.456.782`, `1234 56 782`); 8 digits get the
    leading zero the official rule gives them. Only ASCII digits count: other Unicode digits
    (Arabic-Indic, full-width) are refused rather than converted, so what is stored is what a
    person can read back from their letter.
    """
    if not isinstance(raw, str) or len(raw) > MAX_INPUT_CHARS:
        raise BsnError(lazy_gettext("A BSN has 9 digits."), "format")
    digits = _SEPARATORS.sub("", raw.strip())
    if not _EIGHT_OR_NINE.fullmatch(digits):
        raise BsnError(lazy_gettext("A BSN has 9 digits."), "format")
    if len(digits) == 8:
        digits = "0" + digits
    if not is_valid_bsn(digits):
        raise BsnError(
            lazy_gettext("This is not a valid BSN. Check the digits on your letter or document."),
            "checksum",
        )
    return digits
