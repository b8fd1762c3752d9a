"""The eIDAS route's block of `policies/routes.yaml`, checked when the app starts.

    eidas:
      enabled: true
      node_metadata_url: http://127.0.0.1:8002/metadata
      countries: [AT, BE, DE, ES, FR, IT]
      node_metadata_signing_certificates: [eidas-node-metadata.pem]

Optional fields and their defaults are the `EidasConfig` attributes below. A bad value raises
`ValueError("field: reason")`, which the route loader turns into a start-up error naming
routes.yaml and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

#: ISO 3166-1 alpha-2 codes as eIDAS uses them (Greece is EL in the eIDAS network).
_COUNTRY: Final = re.compile(r"\A[A-Z]{2}\Z")
_KNOWN_FIELDS: Final = frozenset({
    "enabled", "node_metadata_url", "countries", "metadata_cache_seconds",
    "metadata_timeout_seconds", "require_encrypted_assertions", "require_signed_response",
    "provider_name", "node_metadata_signing_certificates",
})


@dataclass(frozen=True)
class EidasConfig:
    node_metadata_url: str
    countries: tuple[str, ...]
    #: A fetched node metadata document is used this long before it is fetched again.
    metadata_cache_seconds: int = 600
    #: Connect and read timeout of that fetch: a slow node must not hold a login page long.
    metadata_timeout_seconds: float = 3.0
    #: eIDAS SAML Message Format v1.2, 3.4: assertions are encrypted for the SP.
    require_encrypted_assertions: bool = True
    #: eIDAS SAML Message Format v1.2, 3.4: the Response is signed by the node.
    require_signed_response: bool = True
    #: AuthnRequest ProviderName (eIDAS: the SP's name as shown to the citizen).
    provider_name: str = "abroad-gateway"
    #: PEM files of the certificates the node's metadata must be signed with (eIDAS
    #: Interoperability Architecture 5: the trust anchor exchanged out of band; two during a
    #: rollover). As written in routes.yaml: a relative path is taken from the policies
    #: folder (`EidasRoute.configure` resolves and loads them). Required outside dev.
    node_metadata_signing_certificates: tuple[str, ...] = ()


def parse_config(raw: Mapping[str, Any]) -> EidasConfig:
    unknown = set(raw) - _KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field")
    url = raw.get("node_metadata_url")
    if not isinstance(url, str) or not url:
        raise ValueError("node_metadata_url: required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise ValueError("node_metadata_url: must be an http(s) URL without credentials")
    countries_raw = raw.get("countries")
    if not isinstance(countries_raw, list | tuple) or not countries_raw:
        raise ValueError("countries: a non-empty list of ISO 3166-1 alpha-2 codes")
    countries: list[str] = []
    for value in countries_raw:
        if not isinstance(value, str) or not _COUNTRY.match(value):
            raise ValueError(f"countries: {str(value)[:8]!r} is not an upper-case 2-letter code")
        if value == "NL":
            raise ValueError("countries: NL is the gateway's own country")
        if value not in countries:
            countries.append(value)
    cache = raw.get("metadata_cache_seconds", 600)
    if isinstance(cache, bool) or not isinstance(cache, int) or not 10 <= cache <= 86400:
        raise ValueError("metadata_cache_seconds: a whole number from 10 to 86400")
    timeout = raw.get("metadata_timeout_seconds", 3.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 30:
        raise ValueError("metadata_timeout_seconds: a number of seconds up to 30")
    flags: dict[str, bool] = {}
    for name in ("require_encrypted_assertions", "require_signed_response"):
        value = raw.get(name, True)
        if not isinstance(value, bool):
            raise ValueError(f"{name}: true or false")
        flags[name] = value
    provider_name = raw.get("provider_name", "abroad-gateway")
    if not isinstance(provider_name, str) or not 0 < len(provider_name) <= 100:
        raise ValueError("provider_name: 1 to 100 characters")
    trust = raw.get("node_metadata_signing_certificates", [])
    if isinstance(trust, str):
        trust = [trust]
    if (
        not isinstance(trust, list | tuple) or len(trust) > 4
        or not all(isinstance(path, str) and 0 < len(path) <= 1024 for path in trust)
    ):
        raise ValueError("node_metadata_signing_certificates: a list of up to 4 file paths")
    return EidasConfig(
        node_metadata_url=url, countries=tuple(countries), metadata_cache_seconds=cache,
        metadata_timeout_seconds=float(timeout), provider_name=provider_name,
        node_metadata_signing_certificates=tuple(trust), **flags,
    )
