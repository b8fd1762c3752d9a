"""The portal as an OpenID Connect relying party (OIDC Core 1.0, section 3.1: the authorization
code flow), written the way a relying party should copy it.

- Discovery (OIDC Discovery 1.0, section 4): endpoints come from the gateway's
  `/.well-known/openid-configuration`, whose `issuer` must equal the configured issuer exactly.
- Authorization request: `state` (CSRF, RFC 6749 10.12), `nonce` (replay, OIDC Core 3.1.2.1),
  PKCE with S256 (RFC 7636; required by RFC 9700), `acr_values` for the level wanted.
- Authorization response: `state` compared in constant time; `iss` (RFC 9207) must be the
  issuer, against mix-up attacks.
- Token request: authenticated with `private_key_jwt` (RFC 7523), a short-lived assertion.
- ID token (OIDC Core 3.1.3.7): signature checked against the gateway's JWKS, `iss`, `aud`,
  `exp`, `iat`, `nonce`, and the `acr` reached at least the level asked for.
- Logout: RP-initiated logout (OIDC RP-Initiated Logout 1.0) with `id_token_hint`,
  `post_logout_redirect_uri` and `state`.

authlib's requests client builds the requests and PKCE; joserfc verifies the ID token.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from gateway.levels import Level
from gateway.portal.keys import CLIENT_ID, PortalAddresses

#: Calls to the gateway are on the server side; a slow gateway must not hang the portal.
HTTP_TIMEOUT: Final = 10.0
#: Discovery and keys are cached this long; a key the cache does not know triggers a refetch.
METADATA_TTL: Final = 300.0
#: A private_key_jwt assertion lives one minute (the gateway refuses more than ten).
ASSERTION_LIFETIME: Final = 60
#: Clock skew accepted on `iat`/`exp` of the ID token.
LEEWAY: Final = 60
ID_TOKEN_ALGS: Final = ("RS256", "ES256")


class OidcError(Exception):
    """The login could not be completed; the message is safe to show (no secrets)."""


@dataclass(frozen=True)
class PendingLogin:
    """What the portal remembers between the redirect and the callback (in its session)."""

    state: str
    nonce: str
    code_verifier: str
    level: int

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "nonce": self.nonce, "code_verifier": self.code_verifier,
                "level": self.level}

    @classmethod
    def from_dict(cls, data: Any) -> PendingLogin | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(str(data["state"]), str(data["nonce"]), str(data["code_verifier"]),
                       int(data["level"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class OidcLogin:
    id_token: str
    header: dict[str, Any]
    claims: dict[str, Any]
    userinfo: dict[str, Any] | None
    token_response: dict[str, Any]


class _ShortPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """authlib's private_key_jwt with a one-minute assertion and a fresh jti every time
    (authlib's default lives an hour)."""

    def sign(self, auth: Any, token_endpoint: str) -> Any:
        return private_key_jwt_sign(
            auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
            alg=self.alg, claims={"jti": secrets.token_urlsafe(32)},
            header={"kid": auth.client_secret.kid}, expires_in=ASSERTION_LIFETIME,
        )


class OidcClient:
    def __init__(self, addresses: PortalAddresses, key: RSAKey) -> None:
        self.addresses = addresses
        self.issuer = addresses.gateway_url
        self._key = key
        self._lock = threading.Lock()
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, KeySet] | None = None

    # --- metadata -------------------------------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = requests.get(url, timeout=HTTP_TIMEOUT)
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise OidcError(f"cannot read {url}") from exc
        if not isinstance(data, dict):
            raise OidcError(f"{url} is not a JSON object")
        return data

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            if self._discovery and time.monotonic() - self._discovery[0] < METADATA_TTL:
                return self._discovery[1]
        data = self._get_json(self.issuer + "/.well-known/openid-configuration")
        # OIDC Discovery 4.3: the issuer in the document must be the one we asked.
        if data.get("issuer") != self.issuer:
            raise OidcError("the discovery document names another issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(name), str):
                raise OidcError(f"the discovery document has no {name}")
        with self._lock:
            self._discovery = (time.monotonic(), data)
        return data

    def _keys(self, refresh: bool = False) -> KeySet:
        with self._lock:
            if not refresh and self._jwks and time.monotonic() - self._jwks[0] < METADATA_TTL:
                return self._jwks[1]
        keys = KeySet.import_key_set(self._get_json(self.discovery()["jwks_uri"]))  # type: ignore[arg-type]
        with self._lock:
            self._jwks = (time.monotonic(), keys)
        return keys

    def _session(self) -> OAuth2Session:
        session = OAuth2Session(
            CLIENT_ID, self._key, scope="openid",
            redirect_uri=self.addresses.oidc_callback,
            token_endpoint_auth_method="private_key_jwt",  # noqa: S106 - a method name
            code_challenge_method="S256",
        )
        session.register_client_auth_method(_ShortPrivateKeyJWT(self.discovery()["token_endpoint"]))
        return session

    # --- the flow -------------------------------------------------------------------------

    def start(self, level: Level, language: str) -> tuple[str, PendingLogin]:
        """The authorization request URL and what to remember until the callback."""
        pending = PendingLogin(
            state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64), level=int(level),
        )
        url, _state = self._session().create_authorization_url(
            self.discovery()["authorization_endpoint"], state=pending.state,
            code_verifier=pending.code_verifier, nonce=pending.nonce,
            acr_values=level.context_class, ui_locales=language,
        )
        return str(url), pending

    def finish(self, args: dict[str, str], pending: PendingLogin) -> OidcLogin:
        """The callback: check the response, redeem the code, verify the ID token."""
        if not hmac.compare_digest(args.get("state", ""), pending.state):
            raise OidcError("the state does not match this browser's login")
        if args.get("iss") != self.issuer:  # RFC 9207 section 2.4
            raise OidcError("the response does not come from the expected issuer")
        if "error" in args:
            raise OidcError(f"the gateway answered {args['error']!r}")
        code = args.get("code")
        if not code:
            raise OidcError("the response has no code")
        session = self._session()
        try:
            token = session.fetch_token(
                self.discovery()["token_endpoint"], grant_type="authorization_code",
                code=code, code_verifier=pending.code_verifier, timeout=HTTP_TIMEOUT,
            )
        except Exception as exc:  # authlib raises OAuthError, requests its own
            raise OidcError("the token request was refused") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the token response has no ID token")
        header, claims = self.verify_id_token(id_token, pending)
        userinfo = None
        endpoint = self.discovery().get("userinfo_endpoint")
        if isinstance(endpoint, str):
            try:
                response = requests.get(
                    endpoint, headers={"Authorization": "Bearer " + str(token["access_token"])},
                    timeout=HTTP_TIMEOUT,
                )
                if response.ok:
                    data = response.json()
                    # OIDC Core 5.3.2: userinfo about another subject must not be used.
                    if isinstance(data, dict) and data.get("sub") == claims["sub"]:
                        userinfo = data
            except (requests.RequestException, ValueError, KeyError):
                userinfo = None
        shown = {k: v for k, v in token.items() if k not in ("access_token", "refresh_token",
                                                              "id_token")}
        return OidcLogin(id_token, header, claims, userinfo, shown)

    def verify_id_token(
        self, id_token: str, pending: PendingLogin
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            try:
                token = jwt.decode(id_token, self._keys(), algorithms=list(ID_TOKEN_ALGS))
            except (JoseError, ValueError):
                # The gateway may have rotated its keys since we cached them.
                token = jwt.decode(id_token, self._keys(refresh=True),
                                   algorithms=list(ID_TOKEN_ALGS))
            registry = jwt.JWTClaimsRegistry(
                leeway=LEEWAY,
                iss={"essential": True, "value": self.issuer},
                sub={"essential": True},
                aud={"essential": True, "value": CLIENT_ID},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": pending.nonce},
            )
            registry.validate(token.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise OidcError("the ID token did not verify") from exc
        claims = dict(token.claims)
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != CLIENT_ID:
            raise OidcError("the ID token is meant for another client")  # OIDC Core 3.1.3.7 (5)
        reached = Level.from_context_class(str(claims.get("acr", "")))
        if reached is None or reached < pending.level:
            raise OidcError("the ID token does not reach the level asked for")
        return dict(token.header), claims

    def logout_url(self, id_token: str, state: str) -> str:
        endpoint = self.discovery().get("end_session_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError("the gateway offers no logout endpoint")
        query = urlencode({
            "id_token_hint": id_token, "client_id": CLIENT_ID,
            "post_logout_redirect_uri": self.addresses.oidc_logged_out, "state": state,
        })
        return f"{endpoint}?{query}"
