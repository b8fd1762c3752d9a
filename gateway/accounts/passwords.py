"""Passwords: argon2id hashing and the rules a new password must meet.

Rules follow NIST SP 800-63B 5.1.1.2: at least 8 characters, long passwords allowed, no
composition rules, refused when on a list of common or breached passwords (shipped in
`gateway/data/common-passwords.txt`) or when it is the username. Hashing is argon2id with the
parameters in `policies/accounts.yaml`; `needs_rehash` tells the login to rehash when they change.
`verify_dummy` spends the same work for an unknown username, so timing does not tell whether an
account exists.
"""

from __future__ import annotations

import functools
import unicodedata
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.accounts.policy import PasswordPolicy
from gateway.i18n import lazy_gettext

COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "common-passwords.txt"


class PasswordProblem(StrEnum):
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    COMMON = "common"
    SAME_AS_USERNAME = "same_as_username"

    @property
    def message(self) -> str:
        return str(_MESSAGES[self])


_MESSAGES = {
    PasswordProblem.TOO_SHORT: lazy_gettext("Choose a password of at least 8 characters."),
    PasswordProblem.TOO_LONG: lazy_gettext("Choose a password of at most 128 characters."),
    PasswordProblem.COMMON: lazy_gettext(
        "This password is too common and easy to guess. Choose another one, for example a few "
        "unrelated words."
    ),
    PasswordProblem.SAME_AS_USERNAME: lazy_gettext("Your password must not be your username."),
}


@functools.cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def normalise(password: str) -> str:
    # NIST SP 800-63B 5.1.1.2: apply Unicode normalisation (NFKC) before hashing.
    return unicodedata.normalize("NFKC", password)


def check_new_password(password: str, policy: PasswordPolicy, username: str | None = None) -> list[
    PasswordProblem
]:
    """The problems with a new password; empty when it may be used."""
    pw = normalise(password)
    problems = []
    if len(pw) < policy.min_length:
        problems.append(PasswordProblem.TOO_SHORT)
    if len(pw) > policy.max_length:
        problems.append(PasswordProblem.TOO_LONG)
    if pw.casefold() in common_passwords():
        problems.append(PasswordProblem.COMMON)
    if username and pw.casefold() == username.casefold():
        problems.append(PasswordProblem.SAME_AS_USERNAME)
    return problems


class Passwords:
    """argon2id with the policy's parameters."""

    def __init__(self, policy: PasswordPolicy) -> None:
        a = policy.argon2
        self._hasher = PasswordHasher(
            time_cost=a.time_cost, memory_cost=a.memory_cost_kib, parallelism=a.parallelism,
            hash_len=32, salt_len=16, type=Type.ID,
        )
        self._max_length = policy.max_length
        self._dummy = self._hasher.hash("dummy password for unknown usernames")

    def hash(self, password: str) -> str:
        return self._hasher.hash(normalise(password))

    def verify(self, stored_hash: str, password: str) -> bool:
        if len(password) > 4 * self._max_length:
            # Never hash megabytes: refuse before spending work (still a plain "wrong").
            return False
        try:
            return self._hasher.verify(stored_hash, normalise(password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def verify_dummy(self, password: str) -> bool:
        """Spend the work of one verification for a username that does not exist."""
        self.verify(self._dummy, password)
        return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
