"""Which personal attributes an OIDC client receives (issue 8 item 4; OIDC Core 1.0 sections
5.1 and 5.4, and OpenID Connect for Identity Assurance 1.0 section 4 for the birth claims).

Attributes come from an external route (eIDAS: the person's own eID) under the neutral names
of gateway.flows.types (`AuthnResult.attributes`); a desk-account login carries none. They
map onto standard claims:

==================  =====================  ======================================  =======
neutral name        claim                  value                                   scope
==================  =====================  ======================================  =======
given_name          given_name             as asserted                             profile
family_name         family_name            as asserted                             profile
birthdate           birthdate              YYYY-MM-DD                              profile
gender              gender                 lower case ("male", "female", ...)      profile
birth_name          birth_family_name      as asserted (OIDC IDA)                  profile
place_of_birth      place_of_birth         {"locality": value} (OIDC IDA)          profile
address             address                {"formatted": value} (Core 5.1.1)       address
country             (none: not released; no standard claim names the issuing state)
==================  =====================  ======================================  =======

Release policy, per client (data minimisation, GDPR Article 5(1)(c)): a client receives a
claim only when (1) the operator registered it for that claim (`gateway rp add-oidc --claims
given_name,family_name,birthdate`, or a scope name for all of its claims: `--claims
profile,address`; by default none), (2) the authorization request asked for the claim's scope
(so a client may ask for less than it is allowed), and (3) the login carried the attribute.
The granted `scope` names only scopes the client may use. The claims go to the UserInfo
endpoint, not into the ID token: OIDC Core 5.4 puts scope-requested claims there whenever an
access token is issued (the code flow always issues one). The selected claims are kept with
the grant, sealed (gateway.crypto), until the grant ends.

The `bsn` claim is not an attribute: it follows the client's `--bsn` flag and the linked
account (gateway.idp.oidc.provider).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.crypto import SealError, seal, unseal
from gateway.settings import Settings

#: Scope -> the claims it asks for (OIDC Core 5.4; the birth claims from OIDC IDA 1.0).
SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "profile": ("given_name", "family_name", "birthdate", "gender", "birth_family_name",
                "place_of_birth"),
    "address": ("address",),
}
#: Every claim a client can be registered for.
RELEASABLE = tuple(claim for claims in SCOPE_CLAIMS.values() for claim in claims)
SEAL_PURPOSE = "oidc-grant-claims"
_DATE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


class PolicyError(ValueError):
    """A release policy that names something unknown; the message names the option."""


def parse_policy(values: Iterable[str], option: str = "--claims") -> tuple[str, ...]:
    """Claim names (or scope names, for all their claims), comma-separated or repeated, in
    the order of RELEASABLE, each once. Raises PolicyError for an unknown name."""
    wanted: set[str] = set()
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name in SCOPE_CLAIMS:
                wanted.update(SCOPE_CLAIMS[name])
            elif name in RELEASABLE:
                wanted.add(name)
            else:
                known = ", ".join((*SCOPE_CLAIMS, *RELEASABLE))
                raise PolicyError(f"{option}: unknown claim {name[:40]!r}; known: {known}")
    return tuple(claim for claim in RELEASABLE if claim in wanted)


def allowed_scopes(policy: Iterable[str]) -> frozenset[str]:
    """The attribute scopes a client with this policy may be granted."""
    allowed = set(policy)
    return frozenset(scope for scope, claims in SCOPE_CLAIMS.items() if allowed & set(claims))


def claims_of(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Every claim the attributes give, in OIDC form (empty and malformed values left out)."""
    def text(name: str) -> str | None:
        value = attributes.get(name)
        return value.strip() or None if isinstance(value, str) else None

    out: dict[str, Any] = {}
    for name in ("given_name", "family_name"):
        if (value := text(name)) is not None:
            out[name] = value
    if (birthdate := text("birthdate")) is not None and _DATE.match(birthdate):
        out["birthdate"] = birthdate
    if (gender := text("gender")) is not None:
        out["gender"] = gender.lower()
    if (birth_name := text("birth_name")) is not None:
        out["birth_family_name"] = birth_name
    if (place := text("place_of_birth")) is not None:
        out["place_of_birth"] = {"locality": place}
    if (address := text("address")) is not None:
        out["address"] = {"formatted": address}
    return out


def released(policy: Iterable[str], scope: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The claims this client gets for this login: allowed by its policy, asked for through
    the granted `scope`, and present in the attributes."""
    requested = {c for s in scope.split() for c in SCOPE_CLAIMS.get(s, ())}
    allowed = set(policy) & requested
    return {name: value for name, value in claims_of(attributes).items() if name in allowed}


def seal_claims(settings: Settings, claims: Mapping[str, Any]) -> str | None:
    if not claims:
        return None
    return seal(settings, SEAL_PURPOSE, json.dumps(dict(claims), sort_keys=True))


def unseal_claims(settings: Settings, sealed: str | None) -> dict[str, Any]:
    """The claims kept with a grant; {} when none (or when they cannot be opened)."""
    if not sealed:
        return {}
    try:
        data = json.loads(unseal(settings, SEAL_PURPOSE, sealed))
    except (SealError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in RELEASABLE} if isinstance(data, dict) else {}
