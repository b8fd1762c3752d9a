"""E-mail addresses: the strict check that forms and senders share.

The syntax rules are RFC 5321/5322 as implemented by the `email-validator` package (also what
pydantic's `EmailStr` uses), configured strictly: a plain `local@domain`, no display name, no
quoted local part, no IP-address literal, a domain that could exist on the public internet
(RFC 6761 special-use names such as `.local` and `localhost` are refused), and a local part of
at most 64 octets. Internationalised domains are accepted (sent in their IDNA form), but a local
part must be ASCII: mail to it would need SMTPUTF8 (RFC 6531) at every relay on the way, and
an address we cannot deliver to locks a citizen out of recovery. No DNS look-up is made: it
would leak which addresses people type, make forms slow, and fail in tests without network.
"""

from __future__ import annotations

from typing import Any

import email_validator

from gateway.i18n import lazy_gettext

#: Far beyond the 254 octets an address may have (RFC 5321 section 4.5.3.1.3 and errata 1690);
#: longer input is refused before any parsing work is done on it.
MAX_INPUT_CHARS = 512


class InvalidAddress(ValueError):
    """The input is not an address we accept. `message` is a lazy, translated text for a form."""

    def __init__(self, message: Any) -> None:
        super().__init__(str(message))
        self.message = message


def _check(raw: str) -> email_validator.ValidatedEmail:
    return email_validator.validate_email(
        raw,
        allow_smtputf8=False,
        allow_empty_local=False,
        allow_quoted_local=False,
        allow_domain_literal=False,
        allow_display_name=False,
        strict=True,
        check_deliverability=False,
        globally_deliverable=True,
    )


def validate_email(raw: object) -> str:
    """Check an address typed by a person; return its normal form or raise `InvalidAddress`.

    Surrounding white space is removed; the domain is lower-cased (and Unicode-normalised);
    the local part keeps its case, because RFC 5321 section 2.4 leaves its meaning to the
    receiving domain.

    Example::

        try:
            address = validate_email(form["email"])
        except InvalidAddress as exc:
            errors["email"] = exc.message
    """
    if not isinstance(raw, str):
        raise InvalidAddress(lazy_gettext("Enter your e-mail address."))
    value = raw.strip()
    if not value:
        raise InvalidAddress(lazy_gettext("Enter your e-mail address."))
    if len(value) > MAX_INPUT_CHARS:
        raise InvalidAddress(lazy_gettext("This e-mail address is too long."))
    local, at, _ = value.rpartition("@")
    if at and not local.isascii():
        raise InvalidAddress(
            lazy_gettext(
                "We cannot send mail to an address with accents or other special characters "
                "before the @. Please use another e-mail address."
            )
        )
    try:
        result = _check(value)
    except email_validator.EmailNotValidError:
        raise InvalidAddress(
            lazy_gettext("Enter a valid e-mail address, for example name@example.com.")
        ) from None
    normalised: str = result.normalized
    return normalised


def ascii_address(address: str) -> str:
    """The form of a (valid) address to put in the SMTP envelope and the To header: the same
    address with an internationalised domain in its IDNA (xn--) form. Raises `InvalidAddress`."""
    if not isinstance(address, str) or len(address) > MAX_INPUT_CHARS:
        raise InvalidAddress(
            lazy_gettext("Enter a valid e-mail address, for example name@example.com.")
        )
    try:
        result = _check(address)
    except email_validator.EmailNotValidError:
        raise InvalidAddress(
            lazy_gettext("Enter a valid e-mail address, for example name@example.com.")
        ) from None
    ascii_form = result.ascii_email
    if ascii_form is None:  # only with allow_smtputf8, which is off; fail closed anyway
        raise InvalidAddress(
            lazy_gettext("Enter a valid e-mail address, for example name@example.com.")
        )
    return ascii_form
