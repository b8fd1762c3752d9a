"""The portal as a SAML 2.0 service provider (SAML 2.0 Profiles 4.1, Web Browser SSO, and 4.4,
Single Logout), with python3-saml (OneLogin), the library many relying parties use.

python3-saml rather than pysaml2: the gateway's IdP is built on pysaml2, and a relying party
on an independent implementation is what proves the two interoperate (the same reason the
IdP's tests use it). It needs nothing beyond python-xmlsec and lxml, which the gateway already
depends on.

What the portal does, as DigiD's relying parties do:
- AuthnRequest over HTTP-Redirect, signed (RSA-SHA256), with RequestedAuthnContext
  (comparison minimum) for the level wanted; the request ID is kept in the session.
- Response over HTTP-POST to the ACS: python3-saml in strict mode checks the signatures
  (response and assertion), Destination, Recipient, Audience, InResponseTo against the kept
  ID, the time window, and the issuer; the portal then checks the AuthnContextClassRef reached
  at least the level asked for.
- Single logout over HTTP-Redirect: a signed LogoutRequest with the NameID and SessionIndex;
  the signed LogoutResponse must answer the kept request ID.

The IdP metadata is read from the gateway over the configured (loopback) URL; a relying party
on the internet pins the IdP certificate or checks the metadata signature instead.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final
from urllib.parse import urlsplit

import requests
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.errors import OneLogin_Saml2_Error
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from gateway.levels import Level
from gateway.portal.keys import PortalAddresses, PortalKeys

HTTP_TIMEOUT: Final = 10.0
METADATA_TTL: Final = 300.0
METADATA_PATH: Final = "/saml/idp/metadata"
#: Attributes the demo SP asks the gateway to release, by their neutral names
#: (gateway.idp.saml.attributes; each arrives with that name as its FriendlyName).
REQUESTED_ATTRIBUTES: Final = ("family_name", "given_name", "birthdate", "nationality", "email")
#: The legacy DigiD NameID form for SPs entitled to the BSN: `s00000000:<BSN>`.
BSN_NAMEID_PREFIX: Final = "s00000000:"


class SamlError(Exception):
    """The SAML exchange failed; the message is safe to show."""


def _security(level: Level | None) -> dict[str, Any]:
    return {
        "authnRequestsSigned": True,
        "logoutRequestSigned": True,
        "logoutResponseSigned": True,
        "wantAssertionsSigned": True,
        "wantMessagesSigned": True,
        # No encryption key in the metadata: the demo shows the assertion in the clear.
        "wantAssertionsEncrypted": False,
        "wantNameIdEncrypted": False,
        "wantNameId": True,
        "wantAttributeStatement": False,
        "requestedAuthnContext": [level.context_class] if level else False,
        "requestedAuthnContextComparison": "minimum",
        "signatureAlgorithm": C.RSA_SHA256,
        "digestAlgorithm": C.SHA256,
        "rejectDeprecatedAlgorithm": True,
        "signMetadata": False,
    }


def sp_data(addresses: PortalAddresses, keys: PortalKeys) -> dict[str, Any]:
    return {
        "entityId": addresses.entity_id,
        "assertionConsumerService": {"url": addresses.acs_url, "binding": C.BINDING_HTTP_POST},
        "singleLogoutService": {"url": addresses.sls_url, "binding": C.BINDING_HTTP_REDIRECT},
        "NameIDFormat": C.NAMEID_UNSPECIFIED,
        "x509cert": keys.saml_cert_pem,
        "privateKey": keys.saml_key_pem,
    }


def sp_metadata(addresses: PortalAddresses, keys: PortalKeys) -> bytes:
    """The SP metadata the gateway registers (`gateway rp add-saml --metadata`)."""
    settings = OneLogin_Saml2_Settings(
        {"strict": True, "sp": sp_data(addresses, keys), "security": _security(None)},
        sp_validation_only=True,
    )
    metadata = settings.get_sp_metadata()
    errors = settings.validate_metadata(metadata)
    if errors:
        raise SamlError("the SP metadata is invalid: " + ", ".join(errors))
    return metadata if isinstance(metadata, bytes) else metadata.encode()


class SamlServiceProvider:
    def __init__(self, addresses: PortalAddresses, keys: PortalKeys) -> None:
        self.addresses = addresses
        self._keys = keys
        self._lock = threading.Lock()
        self._idp: tuple[float, dict[str, Any]] | None = None

    def _idp_data(self) -> dict[str, Any]:
        with self._lock:
            if self._idp and time.monotonic() - self._idp[0] < METADATA_TTL:
                return self._idp[1]
        url = self.addresses.gateway_url + METADATA_PATH
        try:
            response = requests.get(url, timeout=HTTP_TIMEOUT)
            response.raise_for_status()
            parsed = OneLogin_Saml2_IdPMetadataParser.parse(
                response.content, required_sso_binding=C.BINDING_HTTP_REDIRECT,
                required_slo_binding=C.BINDING_HTTP_REDIRECT,
            )
        except (requests.RequestException, OneLogin_Saml2_Error, ValueError) as exc:
            raise SamlError(f"cannot read the IdP metadata at {url}") from exc
        idp = parsed.get("idp")
        if not isinstance(idp, dict) or not idp.get("entityId"):
            raise SamlError("the IdP metadata names no identity provider")
        with self._lock:
            self._idp = (time.monotonic(), idp)
        return idp

    def _settings(self, level: Level | None) -> OneLogin_Saml2_Settings:
        return OneLogin_Saml2_Settings({
            "strict": True,
            "sp": sp_data(self.addresses, self._keys),
            "idp": self._idp_data(),
            "security": _security(level),
        })

    def _request_data(self, path: str, get: dict[str, str], post: dict[str, str],
                      query_string: str = "") -> dict[str, Any]:
        # The URL the IdP addressed is our configured one, never the Host header a client
        # sent: Destination checks compare against this.
        parts = urlsplit(self.addresses.portal_url)
        https = parts.scheme == "https"
        return {
            "https": "on" if https else "off",
            "http_host": parts.hostname,
            "server_port": str(parts.port or (443 if https else 80)),
            "script_name": path,
            "get_data": get, "post_data": post, "query_string": query_string,
            "validate_signature_from_qs": bool(query_string),
        }

    def start(self, level: Level, relay_state: str) -> tuple[str, str]:
        """The AuthnRequest as a signed HTTP-Redirect URL, and its ID to keep."""
        auth = OneLogin_Saml2_Auth(self._request_data("/saml/login", {}, {}), self._settings(level))
        url = auth.login(return_to=relay_state, set_nameid_policy=False)
        return str(url), str(auth.get_last_request_id())

    def finish(self, post: dict[str, str], request_id: str, level: int) -> dict[str, Any]:
        """Validate the Response posted to the ACS; returns what the result page shows."""
        auth = OneLogin_Saml2_Auth(self._request_data("/saml/acs", {}, post), self._settings(None))
        try:
            auth.process_response(request_id=request_id)
        except Exception as exc:  # hostile input: base64, zlib and XML errors besides its own
            raise SamlError("the SAML response could not be read") from exc
        if auth.get_errors() or not auth.is_authenticated():
            # The reason stays in the log of a real SP; it can name what an attacker changed.
            reason = "the SAML response was refused: " + ", ".join(auth.get_errors())
            detail = auth.get_last_error_reason() or ""
            if detail.startswith("The status code of the Response was not Success"):
                # The gateway's own answer (a SAML status such as RequestDenied), nothing an
                # attacker chose: worth showing to the developer reading this page.
                reason += " (" + detail[:200] + ")"
            raise SamlError(reason)
        contexts = [str(c) for c in auth.get_last_authn_contexts()]
        reached = Level.from_context_class(contexts[0]) if contexts else None
        if reached is None or reached < level:
            raise SamlError("the assertion does not reach the level asked for")
        name_id = str(auth.get_nameid())
        return {
            "name_id": name_id,
            "name_id_format": auth.get_nameid_format(),
            "name_id_nq": auth.get_nameid_nq(),
            "name_id_spnq": auth.get_nameid_spnq(),
            "bsn": name_id[len(BSN_NAMEID_PREFIX):] if name_id.startswith(BSN_NAMEID_PREFIX)
            else None,
            "session_index": auth.get_session_index(),
            # Keyed by FriendlyName (the gateway's neutral name); the XML shows the URI Names.
            "attributes": {k: list(v) for k, v in auth.get_friendlyname_attributes().items()},
            "authn_context": contexts,
            "level": int(reached),
            "assertion_id": auth.get_last_assertion_id(),
            "in_response_to": auth.get_last_response_in_response_to(),
            "issuer": self._idp_data()["entityId"],
            "response_xml": _text(auth.get_last_response_xml(pretty_print_if_possible=True)),
        }

    def logout(self, result: dict[str, Any], relay_state: str) -> tuple[str, str]:
        """A signed LogoutRequest over HTTP-Redirect, and its ID to keep."""
        auth = OneLogin_Saml2_Auth(self._request_data("/saml/logout", {}, {}), self._settings(None))
        url = auth.logout(
            return_to=relay_state, name_id=result.get("name_id"),
            session_index=result.get("session_index"),
            name_id_format=result.get("name_id_format"), nq=result.get("name_id_nq"),
            spnq=result.get("name_id_spnq"),
        )
        return str(url), str(auth.get_last_request_id())

    def finish_logout(self, get: dict[str, str], query_string: str, request_id: str) -> None:
        """Check the LogoutResponse that came back over HTTP-Redirect."""
        auth = OneLogin_Saml2_Auth(
            self._request_data("/saml/sls", get, {}, query_string), self._settings(None)
        )
        if "SAMLResponse" not in get:
            raise SamlError("no LogoutResponse")
        try:
            auth.process_slo(keep_local_session=True, request_id=request_id)
        except Exception as exc:  # hostile input: base64, zlib and XML errors besides its own
            raise SamlError("the LogoutResponse could not be read") from exc
        if auth.get_errors():
            raise SamlError("the LogoutResponse was refused: " + ", ".join(auth.get_errors()))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")
