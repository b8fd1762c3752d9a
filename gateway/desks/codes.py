"""Codes a person types from a letter, an SMS or an e-mail: desk, activation, unblock, recovery
and e-mail confirmation codes (issue 4, items 1 and 4).

Shape: one letter that names the kind, then 8 characters from `ALPHABET`
(`BCDFGHJKLMNPQRSTVWXZ23456789`): no vowels, so no words (rude or otherwise) can appear, and no
0/O or 1/I/L-like pairs that are misread on paper. A desk code is `B` + 8 (9 characters), an
activation code `A` + 8, and so on (`CodeKind`).

Strength: 8 characters from 28 give 28**8 = 377,801,998,336 ≈ 2**38.5 possibilities per code.
NIST SP 800-63B (§5.1.2.1, look-up secrets) asks for at least 20 bits when the verifier limits
attempts, and §5.2.2 lets it allow at most 100 failed attempts per account. With that limit an
attacker's chance of guessing a given code is 100 / 28**8 ≈ 2.6e-10, and codes are single use
and short-lived (`DESK_CODE_VALIDITY`, `ACTIVATION_CODE_VALIDITY`), so 38.5 bits is ample while
staying short enough to type from a letter. The owner of each code (its flow) must enforce the
attempt limit; this module only makes and checks codes.

Storage: a code is kept only as `code_hmac(settings, kind, code)`, keyed per kind from
GATEWAY_SECRET_KEY, so a database leak reveals no usable code and an activation code's HMAC
can never match a desk code's. Compare HMACs with `codes_equal` (constant time).

Look-alikes: `normalise_code` upper-cases and drops spaces, dashes and the like, and folds
Unicode compatibility forms (full-width letters from some phone keyboards) to ASCII. It does
not map look-alike characters (O→0, I→1, …): the alphabet already leaves out 0, 1, O and I,
so there is nothing to map them to, and folding pairs that are both in the alphabet (5/S,
2/Z, 8/B) would silently cut the number of codes. A character outside the alphabet makes the
code not well formed, and the person is told to check it.
"""

from __future__ import annotations

import hmac
import re
import secrets
import unicodedata
from datetime import timedelta
from enum import StrEnum

from gateway.settings import Settings

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"
#: Characters after the kind letter.
BODY_LENGTH = 8
CODE_LENGTH = 1 + BODY_LENGTH

#: Issue 4 item 1 (as DigiD abroad today): the desk code is valid for 30 days, long enough to
#: book an appointment at an embassy and get there.
DESK_CODE_VALIDITY = timedelta(days=30)
#: Issue 4 item 4: the activation code is valid for 20 days (a letter abroad must arrive in
#: that time) and is single use.
ACTIVATION_CODE_VALIDITY = timedelta(days=20)

#: Input longer than this is not looked at (a code with a separator after every character is
#: still far shorter).
MAX_INPUT_CHARS = 64

_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_.]")


class CodeKind(StrEnum):
    """The kind of code; its value is the code's first letter."""

    DESK = "B"
    ACTIVATION = "A"
    UNBLOCK = "D"
    RECOVERY = "H"
    EMAIL = "E"

    @property
    def prefix(self) -> str:
        return self.value


def new_code(kind: CodeKind) -> str:
    """A fresh code of `kind` from the operating system's CSPRNG (`secrets`)."""
    return kind.prefix + "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))


def normalise_code(raw: str) -> str:
    """The form `is_well_formed` and `code_hmac` expect: upper case, no separators.

    Returns "" for input too long to be a code, so it is simply not well formed.
    """
    if not isinstance(raw, str) or len(raw) > MAX_INPUT_CHARS:
        return ""
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw)).upper()


def is_well_formed(code: str, kind: CodeKind) -> bool:
    """True when a normalised code has the shape of a `kind` code (says nothing of validity)."""
    return (
        isinstance(code, str)
        and len(code) == CODE_LENGTH
        and code[0] == kind.prefix
        and all(c in ALPHABET for c in code[1:])
    )


def code_hmac(settings: Settings, kind: CodeKind, code: str) -> str:
    """The stored form of a code: HMAC-SHA256 (hex) under a key only this kind uses."""
    key = settings.derive_key(f"code/{kind.name.lower()}")
    return hmac.new(key, normalise_code(code).encode(), "sha256").hexdigest()


def codes_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two stored code HMACs (or any two strings)."""
    return hmac.compare_digest(a.encode(), b.encode())
