"""authlib glue: the authorization request's checks and the token endpoint's grants.

Only the authorization-code flow exists (RFC 9700 section 2.1.1: no implicit, no hybrid, no
password grant), with PKCE S256 required of every client (RFC 9700 section 2.1.1, RFC 7636
section 4.2: no `plain`, no missing challenge, no verifier without challenge).

Authorization endpoint (RFC 6749 section 4.1.1, OIDC Core 1.0 section 3.1.2):
authlib's `get_consent_grant` checks the client, the exact redirect URI, the response type,
duplicated parameters and (through `S256CodeChallenge`) the PKCE challenge; `check_oidc`
adds OIDC's own parameters. An error raised before the client and its redirect URI are known
to be good carries no `redirect_uri`, and the view shows an error page instead of
redirecting (RFC 6749 section 4.1.2.1, RFC 9700 section 4.11.2); any later error redirects
with `error`, `state` and `iss` (RFC 9207).

Token endpoint (RFC 6749 section 4.1.3, 6; OIDC Core 1.0 section 3.1.3): authlib
authenticates the client (client_secret_basic, client_secret_post, private_key_jwt per
RFC 7523 with a `jti` replay cache in the shared store, `none` for public clients), then the
grants below consume the code or rotate the refresh token in `tokens`. The everyday request
(an authorization code for a `client_secret_basic` client) is answered by
`plain_code_exchange` with authlib's own checks and errors but without its generic request
machinery (issue 6, "Performance"); every other request goes through authlib.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway import clock
from gateway.app import get_settings
from gateway.db import session as db_session
from gateway.idp.oidc import clients as registry
from gateway.idp.oidc import tokens
from gateway.idp.oidc.clients import ASSERTION_ALGS, AuthMethod, Client
from gateway.keys import get_keys
from gateway.levels import Level
from gateway.store import get_store

log = logging.getLogger(__name__)

#: profile and address release eID attributes to clients registered for them
#: (gateway.idp.oidc.release).
SCOPES_SUPPORTED = ("openid", "profile", "address")
RESPONSE_MODES = ("query", "form_post")
#: Lengths above which a parameter is refused (RFC 6749 leaves them open; these are far
#: above what any client sends and keep hostile input out of rows and pages).
MAX_STATE = 2000
MAX_NONCE = 512
MAX_CLAIMS = 4000
MAX_ACR_VALUES = 1000
MAX_ASSERTION = 8 * 1024
#: A private_key_jwt assertion may be valid this long at most: it bounds the replay cache.
MAX_ASSERTION_LIFETIME = timedelta(minutes=10)
ASSERTION_LEEWAY = 60
_S256 = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")
TOKEN_AUTH_METHODS = [m.value for m in AuthMethod]


class AuthorizationError(Exception):
    """An OIDC error for the authorization response (OIDC Core 3.1.2.6)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class AuthzRequest:
    """A checked authorization request, kept in the login flow's `RpRequest.state`."""

    client_id: str
    redirect_uri: str
    response_mode: str
    state: str | None
    nonce: str | None
    scope: str
    code_challenge: str
    levels: tuple[Level, ...] = ()
    essential: bool = False
    passive: bool = False
    force_authn: bool = False
    max_age: int | None = None
    login_hint: str | None = None
    ui_locale: str | None = None
    hint_sub: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "response_mode": self.response_mode,
            "state": self.state,
            "nonce": self.nonce,
            "scope": self.scope,
            "code_challenge": self.code_challenge,
            "levels": [int(lv) for lv in self.levels],
            "essential": self.essential,
            "passive": self.passive,
            "hint_sub": self.hint_sub,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> AuthzRequest:
        return cls(
            client_id=str(data["client_id"]),
            redirect_uri=str(data["redirect_uri"]),
            response_mode=str(data["response_mode"]),
            state=data.get("state"),
            nonce=data.get("nonce"),
            scope=str(data["scope"]),
            code_challenge=str(data["code_challenge"]),
            levels=tuple(Level(v) for v in data.get("levels") or ()),
            essential=bool(data.get("essential")),
            passive=bool(data.get("passive")),
            hint_sub=data.get("hint_sub"),
        )


# --- authorization request ----------------------------------------------------------------


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only, and required at the authorization endpoint (RFC 9700 2.1.1)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib's class attribute
    CODE_CHALLENGE_METHODS = {"S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}  # noqa: RUF012

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)
        if not _S256.match(data["code_challenge"]):
            # An S256 challenge is exactly a base64url SHA-256 (RFC 7636 4.2).
            raise InvalidRequestError("Invalid 'code_challenge'.")

    def get_authorization_code_challenge(self, authorization_code: Any) -> str:
        return str(authorization_code.code_challenge)

    def get_authorization_code_challenge_method(self, authorization_code: Any) -> str:
        return "S256"


def _single(data: Any, name: str, limit: int) -> str | None:
    values = data.getlist(name) if hasattr(data, "getlist") else [data.get(name)]
    values = [v for v in values if v is not None]
    if len(values) > 1:
        raise AuthorizationError("invalid_request", f"Multiple '{name}' in request.")
    if not values or values[0] == "":
        return None
    value = values[0]
    if len(value) > limit:
        raise AuthorizationError("invalid_request", f"'{name}' is too long.")
    return str(value)


def _acr_levels(values: list[Any]) -> list[Level]:
    levels: list[Level] = []
    for value in values:
        level = Level.from_context_class(value) if isinstance(value, str) else None
        if level is not None and level not in levels:
            levels.append(level)
    return levels


def requested_levels(
    acr_values: str | None, claims: str | None, minimum: Level
) -> tuple[tuple[Level, ...], bool]:
    """Levels in order of preference and whether they are essential (OIDC Core 5.5.1.1).

    The `claims` parameter's `acr` (id_token or userinfo) wins over `acr_values`; unknown
    values are ignored; levels under the client's minimum are dropped, and when nothing is
    left the request becomes "the minimum or higher", lowest first.
    """
    essential = False
    wanted: list[Level] = []
    asked = False
    if claims is not None:
        try:
            parsed = json.loads(claims)
        except ValueError:
            raise AuthorizationError("invalid_request", "'claims' is not JSON.") from None
        if not isinstance(parsed, dict):
            raise AuthorizationError("invalid_request", "'claims' must be a JSON object.")
        for member in ("id_token", "userinfo"):
            part = parsed.get(member)
            if part is None:
                continue
            if not isinstance(part, dict):
                raise AuthorizationError("invalid_request", f"'claims.{member}' is malformed.")
            acr = part.get("acr")
            if acr is None:
                continue
            if not isinstance(acr, dict):
                raise AuthorizationError("invalid_request", "'claims' acr is malformed.")
            asked = True
            essential = essential or acr.get("essential") is True
            values = acr.get("values")
            if "value" in acr:
                values = [acr["value"]]
            if values is not None and not isinstance(values, list):
                raise AuthorizationError("invalid_request", "'claims' acr values is malformed.")
            wanted.extend(lv for lv in _acr_levels(values or []) if lv not in wanted)
    if not wanted and acr_values is not None:
        wanted = _acr_levels(acr_values.split())
        asked = asked or bool(acr_values.split())
    if essential and asked and not wanted:
        raise AuthorizationError(
            "unmet_authentication_requirements", "No requested acr value is offered."
        )
    levels = [lv for lv in wanted if lv >= minimum]
    if not levels:
        levels = [lv for lv in Level if lv >= minimum]
    return tuple(levels), essential


def check_oidc(client: Client, data: Any, redirect_uri: str) -> AuthzRequest:
    """OIDC's parameters, after authlib checked client, redirect URI, response type and PKCE.

    Raises AuthorizationError (to be sent to `redirect_uri`).
    """
    if data.get("request") is not None:
        raise AuthorizationError("request_not_supported", "Request objects are not supported.")
    if data.get("request_uri") is not None:
        raise AuthorizationError(
            "request_uri_not_supported", "request_uri is not supported."
        )
    if data.get("registration") is not None:
        raise AuthorizationError(
            "registration_not_supported", "Registration is not supported."
        )
    scope = (data.get("scope") or "").split()
    if "openid" not in scope:
        raise AuthorizationError("invalid_scope", "The openid scope is required.")
    state = _single(data, "state", MAX_STATE)
    nonce = _single(data, "nonce", MAX_NONCE)
    prompt = (_single(data, "prompt", 100) or "").split()
    if "none" in prompt and len(prompt) > 1:
        raise AuthorizationError("invalid_request", "prompt=none cannot be combined.")
    max_age_text = _single(data, "max_age", 10)
    max_age: int | None = None
    if max_age_text is not None:
        if not max_age_text.isdigit():
            raise AuthorizationError("invalid_request", "max_age must be a number of seconds.")
        max_age = int(max_age_text)
    levels, essential = requested_levels(
        _single(data, "acr_values", MAX_ACR_VALUES), _single(data, "claims", MAX_CLAIMS),
        client.min_level,
    )
    locale = None
    for tag in (_single(data, "ui_locales", 200) or "").split():
        language = tag.split("-")[0].lower()
        if language in ("nl", "en"):
            locale = language
            break
    hint_sub = None
    hint = _single(data, "id_token_hint", tokens.MAX_HINT_LENGTH)
    if hint is not None:
        claims = tokens.verify_own_token(get_settings(), get_keys(), hint, check_expiry=False)
        if claims is None or tokens.audience(claims) != client.client_id:
            raise AuthorizationError("invalid_request", "id_token_hint is not valid.")
        hint_sub = str(claims["sub"])
    return AuthzRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        response_mode=response_mode(data),
        state=state,
        nonce=nonce,
        scope=client.get_allowed_scope(data.get("scope")),
        code_challenge=str(data.get("code_challenge")),
        levels=levels,
        essential=essential,
        passive="none" in prompt,
        force_authn="login" in prompt,
        max_age=max_age,
        login_hint=_single(data, "login_hint", 200),
        ui_locale=locale,
        hint_sub=hint_sub,
    )


def response_mode(data: Any) -> str:
    """The response mode to answer in; an unsupported one falls back to query (and is
    reported as an error there)."""
    mode = data.get("response_mode")
    return mode if mode in RESPONSE_MODES else "query"


def check_response_mode(data: Any) -> None:
    mode = data.get("response_mode")
    if mode is not None and mode not in RESPONSE_MODES:
        raise AuthorizationError("invalid_request", "Unsupported response_mode.")


# --- token endpoint -----------------------------------------------------------------------


@dataclass(frozen=True)
class _CodeView:
    """What authlib's code grant asks of an authorization code."""

    grant: tokens.OidcGrant

    @property
    def code_challenge(self) -> str:
        return self.grant.code_challenge

    def get_redirect_uri(self) -> str:
        return self.grant.redirect_uri

    def get_scope(self) -> str:
        return self.grant.scope


@dataclass(frozen=True)
class _RefreshView:
    grant: tokens.OidcGrant

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.grant.client_id

    def get_scope(self) -> str:
        return self.grant.scope


def _account_bsn(grant: tokens.OidcGrant, client: Client) -> str | None:
    if not client.bsn or grant.account_id is None:
        return None
    from gateway.accounts.models import Account

    account = db_session().get(Account, grant.account_id)
    return account.bsn if account is not None and account.bsn else None


def token_response(
    grant: tokens.OidcGrant, client: Client, *, include_nonce: bool
) -> dict[str, Any]:
    """Issue tokens for `grant` and commit; the token endpoint's success body."""
    settings = get_settings()
    db = db_session()
    issued = tokens.issue_tokens(db, settings, grant, refresh=True)
    claims = tokens.id_token_claims(
        settings, client, grant, access_token=issued.access_token, include_nonce=include_nonce,
        bsn=_account_bsn(grant, client),
    )
    id_token = tokens.make_id_token(get_keys(), client, claims)
    db.commit()
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": grant.scope,
        "id_token": id_token,
    }
    if issued.refresh_token is not None:
        body["refresh_token"] = issued.refresh_token
    return body


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def query_authorization_code(self, code: str, client: Client) -> _CodeView | None:
        # The won code stays in this request's transaction and is committed with the tokens
        # (token_response), or below when a later check refuses the request.
        grant = tokens.consume_code(
            db_session(), get_settings(), code, client.client_id, commit_win=False
        )
        return _CodeView(grant) if grant is not None else None

    def validate_token_request(self) -> None:
        try:
            super().validate_token_request()  # with its hooks: PKCE (S256CodeChallenge)
        except OAuth2Error:
            # A code refused after it was consumed (redirect URI, PKCE) stays used.
            db_session().commit()
            raise

    def delete_authorization_code(self, authorization_code: Any) -> None:
        """Nothing to do: consuming marked the code used (a replay must still find it)."""

    def authenticate_user(self, authorization_code: Any) -> Any:
        return authorization_code.grant

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client: Client = self.request.client
        grant: tokens.OidcGrant = self.request.authorization_code.grant
        body = token_response(grant, client, include_nonce=True)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshView | None:
        client: Client = self.request.client
        grant = tokens.rotate_refresh_token(
            db_session(), get_settings(), refresh_token, client.client_id
        )
        return _RefreshView(grant) if grant is not None else None

    def authenticate_user(self, refresh_token: Any) -> Any:
        return refresh_token.grant

    def revoke_old_credential(self, refresh_token: Any) -> None:
        """Nothing to do: rotation marked the old refresh token used."""

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client: Client = self.request.client
        grant: tokens.OidcGrant = self.request.refresh_token.grant
        # OIDC Core 12.2: a refreshed ID token carries no nonce.
        body = token_response(grant, client, include_nonce=False)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 section 2.2 client authentication, as OIDC Core 9 `private_key_jwt`."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __call__(self, query_client: Any, request: Any) -> Any:
        assertion = request.form.get("client_assertion")
        if assertion is not None and (
            not isinstance(assertion, str) or len(assertion) > MAX_ASSERTION
            or not assertion.isascii()
        ):
            raise InvalidClientError(description="Invalid JWT assertion.")
        return super().__call__(query_client, request)

    def get_audiences(self) -> list[str]:
        issuer = get_settings().issuer
        return [issuer, issuer + "/oidc/token"]

    def resolve_client_public_key(self, client: Client) -> KeySet:
        if client.jwks is None:
            raise InvalidClientError(description="The client has no registered keys.")
        return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGS))
        except (JoseError, ValueError, TypeError):
            raise InvalidClientError(description="Invalid JWT assertion.") from None
        exp = token.claims.get("exp")
        now = clock.now().timestamp()
        if isinstance(exp, int | float) and exp > now + MAX_ASSERTION_LIFETIME.total_seconds():
            raise InvalidClientError(description="The assertion is valid for too long.")
        self.verify_claims(token.claims)
        return token.claims

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        if not isinstance(jti, str) or not 0 < len(jti) <= 200:
            return False
        digest = hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()
        ttl = max(1.0, float(claims["exp"]) - clock.now().timestamp() + ASSERTION_LEEWAY)
        return get_store().add_once(
            f"oidc:jti:{hashlib.sha256(str(claims['sub']).encode()).hexdigest()}:{digest}",
            timedelta(seconds=ttl),
        )


class GatewayAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def query_client(self, client_id: str) -> Client | None:
        return registry.get_client(db_session(), get_settings(), client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Tokens are stored by `tokens.issue_tokens` with their grant."""

    def handle_error_response(self, request: Any, error: OAuth2Error) -> Any:
        response = super().handle_error_response(request, error)
        response.headers["Cache-Control"] = "no-store"
        return response


def create_server() -> GatewayAuthorizationServer:
    server = GatewayAuthorizationServer()
    server.register_grant(CodeGrant, [S256CodeChallenge(required=True)])
    server.register_grant(RefreshGrant)
    server.register_client_auth_method(
        "private_key_jwt", PrivateKeyJwt(validate_jti=True, leeway=ASSERTION_LEEWAY)
    )
    server.register_token_generator("default", _unused_generator)
    return server


def _unused_generator(**_kwargs: Any) -> dict[str, Any]:
    # Grants above issue their tokens through `tokens`; authlib must never make its own.
    raise InvalidGrantError()


# --- the token endpoint's plain case, without authlib's generic machinery ----------------

#: The one request shape `plain_code_exchange` answers itself: these form fields, once each.
_PLAIN_FIELDS = frozenset({"grant_type", "code", "redirect_uri", "code_verifier"})
_CODE_VERIFIER = re.compile(r"\A[A-Za-z0-9\-._~]{43,128}\Z")  # RFC 7636 4.1


def plain_code_exchange(server: GatewayAuthorizationServer) -> Any | None:
    """The token endpoint for its everyday request (issue 6, "Performance"): an
    authorization code for a `client_secret_basic` client, exactly the fields `grant_type`,
    `code`, `redirect_uri` and `code_verifier` once each, no query string, over a secure
    transport as authlib sees it.

    Returns None for any other request, and for a code that cannot be consumed, before
    anything was decided: authlib then answers as it always does (the second lookup of a
    spent code finds it revoked already). Once the code is won the checks are authlib's own,
    in its order and with its errors (RFC 6749 4.1.3: the redirect URI is identical; RFC
    7636 4.6: S256 of the verifier is the challenge), and a refused code stays used, as in
    `CodeGrant.validate_token_request`.
    """
    from authlib.common.security import is_secure_transport
    from authlib.oauth2.rfc6749.util import extract_basic_authorization
    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    from flask import request

    form = request.form
    if (
        request.args or request.mimetype != "application/x-www-form-urlencoded"
        or form.keys() != _PLAIN_FIELDS or any(len(form.getlist(k)) != 1 for k in form)
        or form["grant_type"] != "authorization_code"
        # Only the scheme and the host decide (authlib looks at nothing else): without the
        # path and query, which `request.url` would rebuild and re-encode for nothing.
        or not is_secure_transport(f"{request.scheme}://{request.host}/")
    ):
        return None
    client_id, secret = extract_basic_authorization(request.headers)
    if not client_id or not secret:
        return None
    client = server.query_client(client_id)
    if (
        client is None or client.token_endpoint_auth_method is not AuthMethod.CLIENT_SECRET_BASIC
        or not client.check_client_secret(secret)
    ):
        return None  # authlib answers invalid_client
    db = db_session()
    grant = tokens.consume_code(
        db, get_settings(), form["code"], client.client_id, commit_win=False
    )
    if grant is None:
        return None
    try:
        if grant.redirect_uri and form["redirect_uri"] != grant.redirect_uri:
            raise InvalidGrantError("Invalid 'redirect_uri' in request.")
        verifier = form["code_verifier"]
        if not grant.code_challenge:
            raise InvalidRequestError(
                "The authorization request had no 'code_challenge', "
                "but a 'code_verifier' was provided."
            )
        if not verifier:
            raise InvalidRequestError("Missing 'code_verifier'")
        if not _CODE_VERIFIER.match(verifier):
            raise InvalidRequestError("Invalid 'code_verifier'")
        if not hmac.compare_digest(
            create_s256_code_challenge(verifier).encode(), grant.code_challenge.encode()
        ):
            raise InvalidGrantError(description="Code challenge failed.")
    except OAuth2Error as error:
        db.commit()  # the refused code stays used
        return server.handle_error_response(server.create_oauth2_request(None), error)
    body = token_response(grant, client, include_nonce=True)
    return server.handle_response(200, body, CodeGrant.TOKEN_RESPONSE_HEADER)


# --- the authorization endpoint's plain case ----------------------------------------------

#: Parameters authlib reads before it accepts an authorization request.
_AUTHZ_CHECKED = ("response_type", "client_id", "redirect_uri", "code_challenge",
                  "code_challenge_method")


def plain_authorization_request(server: GatewayAuthorizationServer) -> tuple[Client, str] | None:
    """The client and redirect URI of the authorization endpoint's everyday request (issue 6,
    "Performance"), checked without authlib's generic request machinery: a GET with every
    parameter present once, `response_type=code`, a known client, one of its registered
    redirect URIs (exact match) and a PKCE S256 challenge.

    Exactly what `server.get_consent_grant` accepts with the same client and redirect URI
    (RFC 6749 3.1 no repeated parameter, 3.1.2.3 and 4.1.1, RFC 7636 4.3, RFC 9700 2.1.1);
    None for any other request, and authlib then decides and answers as it always does,
    errors included (tests/test_oidc_fast_path.py compares the two). OIDC's own parameters
    are checked afterwards by `check_oidc`, as after authlib.
    """
    from flask import request

    args = request.args
    if request.method != "GET" or server.scopes_supported:
        return None
    if any(len(values) != 1 for values in args.listvalues()):
        return None
    response_type, client_id, redirect_uri, challenge, method = (
        args.get(name) for name in _AUTHZ_CHECKED
    )
    if (
        response_type != "code" or method != "S256" or not client_id or not redirect_uri
        or challenge is None or not _S256.match(challenge)
    ):
        return None
    client = server.query_client(client_id)
    if (
        client is None or not client.check_redirect_uri(redirect_uri)
        or not client.check_response_type(response_type)
    ):
        return None
    return client, redirect_uri
