"""Attribute release to SAML service providers: one naming for every released attribute.

Each attribute an SP may receive has a neutral name (the login flow's, see
gateway.flows.types.AuthnResult.attributes and shared/eidas-contract "Neutral attribute
names"); `gateway rp add-saml --attribute NAME` registers it per SP. In the assertion every
attribute is written the same way (SAML 2.0 Profiles 8.2.3, the URI name format):

- `Name`: a URI — the `urn:oid:` name of the X.500/LDAP or PKIX attribute type where one exists
  (SAML V2.0 X.500/LDAP Attribute Profile; RFC 4519, RFC 3739), otherwise the eIDAS
  natural-person attribute URI (eIDAS SAML Attribute Profile 1.2);
- `NameFormat`: `urn:oasis:names:tc:SAML:2.0:attrname-format:uri`;
- `FriendlyName`: the neutral name the SP was registered with;
- one `xs:string` value.

The table is in docs/saml-idp.md. The BSN is never an attribute: --bsn SPs receive it as the
NameID `s00000000:<BSN>`, DigiD's form.

Values: a desk-account login gives the account's registered data; an external route (eIDAS)
gives what its identity provider asserted (`AuthnResult.attributes`), which wins over the
linked account's data where both have a value, since it is what this login proved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from saml2 import saml

NAME_FORMAT_URI: Final = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
EIDAS_NATURAL: Final = "http://eidas.europa.eu/attributes/naturalperson/"


@dataclass(frozen=True)
class AttributeName:
    neutral: str
    uri: str
    meaning: str


#: Every releasable attribute, in release order.
ATTRIBUTES: Final = (
    AttributeName("family_name", "urn:oid:2.5.4.4", "surname (X.500 sn)"),
    AttributeName("given_name", "urn:oid:2.5.4.42", "given names (X.500 givenName)"),
    AttributeName("birthdate", "urn:oid:1.3.6.1.5.5.7.9.1",
                  "date of birth, YYYY-MM-DD (PKIX dateOfBirth, RFC 3739)"),
    AttributeName("birth_name", EIDAS_NATURAL + "BirthName", "name at birth (eIDAS BirthName)"),
    AttributeName("place_of_birth", "urn:oid:1.3.6.1.5.5.7.9.2",
                  "place of birth (PKIX placeOfBirth, RFC 3739)"),
    AttributeName("address", "urn:oid:2.5.4.16",
                  "current address, one formatted string (X.500 postalAddress)"),
    AttributeName("gender", EIDAS_NATURAL + "Gender",
                  "Male, Female or Unspecified (eIDAS Gender)"),
    AttributeName("country", "urn:oid:2.5.4.6",
                  "ISO 3166-1 alpha-2 code of the state that issued the eID (X.500 c)"),
    AttributeName("email", "urn:oid:0.9.2342.19200300.100.1.3", "e-mail address (RFC 4524 mail)"),
    AttributeName("nationality", "urn:oid:1.3.6.1.5.5.7.9.4",
                  "nationality as registered at the desk (PKIX countryOfCitizenship)"),
)
BY_NAME: Final = {a.neutral: a for a in ATTRIBUTES}
RELEASABLE: Final = tuple(a.neutral for a in ATTRIBUTES)
#: Names from before the neutral naming (stored registrations, scripts): still accepted.
ALIASES: Final = {"surname": "family_name", "given_names": "given_name",
                  "birth_date": "birthdate"}


def canonical(name: str) -> str | None:
    """The neutral name for `name` (an alias is translated), or None when unknown."""
    name = ALIASES.get(name, name)
    return name if name in BY_NAME else None


def account_values(account: Any) -> dict[str, str]:
    """The released-attribute values a desk account holds (gateway.accounts.models.Account)."""
    if account is None:
        return {}
    birth_date = getattr(account, "birth_date", None)
    values = {
        "family_name": getattr(account, "surname", None),
        "given_name": getattr(account, "given_names", None),
        "birthdate": birth_date.isoformat() if birth_date is not None else None,
        "email": getattr(account, "email", None),
        "nationality": getattr(account, "nationality", None),
    }
    return {name: str(value) for name, value in values.items() if value}


def released(
    names: Iterable[str], account: Any, asserted: Mapping[str, Any]
) -> list[tuple[AttributeName, str]]:
    """What an SP registered for `names` receives: (attribute, value) in table order.

    `asserted` (the route's attributes) wins over the account's data; names without a value
    are left out (never an empty attribute)."""
    wanted = {c for c in (canonical(n) for n in names) if c is not None}
    values = account_values(account)
    for name, value in asserted.items():
        if name in BY_NAME and isinstance(value, str) and value:
            values[name] = value
    return [(a, values[a.neutral]) for a in ATTRIBUTES if a.neutral in wanted and
            a.neutral in values]


def attribute_statement(
    attributes: list[tuple[AttributeName, str]],
) -> saml.AttributeStatement | None:
    """The AttributeStatement for `attributes`; None when there is nothing (an empty one is
    not schema-valid)."""
    if not attributes:
        return None
    return saml.AttributeStatement(attribute=[
        saml.Attribute(
            name=name.uri, name_format=NAME_FORMAT_URI, friendly_name=name.neutral,
            # pysaml2 types a str value xsi:type="xs:string" itself.
            attribute_value=[saml.AttributeValue(text=value)],
        )
        for name, value in attributes
    ])
