"""The OIDC client registry: who may ask for logins, where answers may go, and how they prove
who they are (OIDC Dynamic Client Registration 1.0 section 2 metadata names; registration is
by the operator's command line only, never dynamic).

Rules enforced at registration, so that the endpoints can compare strings exactly:

- redirect URIs (and post-logout redirect URIs) are absolute `https` URLs without userinfo or
  fragment (RFC 6749 section 3.1.2, RFC 9700 section 4.1.3); plain `http` only for loopback
  hosts (RFC 8252 section 7.3, native apps and local development). Matching is exact string
  comparison (RFC 9700 section 4.1.1): no normalisation, no prefix, no wildcard.
- a confidential client authenticates with `client_secret_basic`, `client_secret_post` or
  `private_key_jwt` (RFC 7523, keys given inline as a JWK Set: the gateway never fetches a
  `jwks_uri`); a public client uses `none` and PKCE.
- the client secret is 256 random bits made by the gateway and stored as
  HMAC-SHA256(derive_key("oidc-client-secret"), secret). Argon2 protects low-entropy
  secrets people choose; a generated 256-bit secret cannot be guessed from its hash whatever
  the hash's cost, and the HMAC keeps the token endpoint fast (one hash per request instead of
  tens of milliseconds of argon2) while a stolen table alone still proves nothing.

Every worker keeps the clients it has read in memory (`ClientCache`, issue 6 "Performance":
the token endpoint then needs no registry query). A change (`register`, `remove_client`)
clears the cache of the process that made it when its transaction commits, and writes a new
random registry version into the shared store; every other worker compares its version with
the store's at most every `REGISTRY_CHECK_SECONDS` and empties its cache when they differ, so
a client removed or changed elsewhere stops working everywhere within that bound (and its
grants and tokens went with the row: the database cascades, which no cache can outlive).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Flask, current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.db import Base, UTCDateTime
from gateway.levels import Level
from gateway.settings import Settings, is_loopback_host

#: Client ids: printable, URL-safe ASCII (they travel in query strings and HTTP Basic).
CLIENT_ID_PATTERN = re.compile(r"\A[A-Za-z0-9._~:/@+-]{1,100}\Z")
MAX_URI_LENGTH = 2000
MAX_URIS = 20
#: 32 random bytes: 256 bits, base64url.
SECRET_BYTES = 32
SECRET_PURPOSE = "oidc-client-secret"  # noqa: S105 - a key-derivation label
SIGNING_ALGS = ("RS256", "ES256")
#: Algorithms a client may sign its private_key_jwt assertion with (asymmetric only: an HMAC
#: "key" would be the shared secret we refuse to keep in clear, and alg=none is never allowed).
ASSERTION_ALGS = ("RS256", "PS256", "ES256")
#: JWE for ID tokens (issue 6 item 4, as DigiD's OIDC interface does).
ENCRYPTION_ALG = "RSA-OAEP-256"
ENCRYPTION_ENC = "A256GCM"
#: Largest inline JWK Set accepted (a handful of public keys).
MAX_JWKS_BYTES = 16 * 1024
#: A worker asks the shared store whether the registry changed at most this often: the
#: longest a client removed or changed by another process goes on working as it was.
REGISTRY_CHECK_SECONDS = 1.0
#: Shared-store key of the registry version (a random value, new at every change).
REGISTRY_VERSION_KEY = "oidc:registry-version"
#: The version lives "for ever" (a store that forgets it only makes workers reload once).
REGISTRY_VERSION_TTL = timedelta(days=3650)
#: Clients one worker keeps; more are read from the database each time (ids that are not
#: registered are never cached, so unknown ids cannot fill memory).
MAX_CACHED_CLIENTS = 1000
CACHE_KEY = "gateway.oidc.clients"
_CHANGED = "gateway.oidc.registry_changed"


class AuthMethod(StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name
    PRIVATE_KEY_JWT = "private_key_jwt"
    NONE = "none"


CONFIDENTIAL_METHODS = (
    AuthMethod.CLIENT_SECRET_BASIC,
    AuthMethod.CLIENT_SECRET_POST,
    AuthMethod.PRIVATE_KEY_JWT,
)


class ClientError(ValueError):
    """A registration that cannot be accepted; the message names the option."""


class OidcClient(Base):
    __tablename__ = "oidc_clients"

    client_id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    #: HMAC-SHA256 hex of the secret; None for public and private_key_jwt clients.
    secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    public: Mapped[bool] = mapped_column(sa.Boolean)
    token_endpoint_auth_method: Mapped[str] = mapped_column(sa.String(24))
    #: JSON lists of exact URIs.
    redirect_uris: Mapped[str] = mapped_column(sa.Text)
    post_logout_redirect_uris: Mapped[str] = mapped_column(sa.Text, default="[]")
    #: Inline public JWK Set for private_key_jwt.
    jwks: Mapped[str | None] = mapped_column(sa.Text)
    #: Government services registered with --bsn receive the `bsn` claim.
    bsn: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: Numeric gateway.levels.Level; every login for this client reaches at least this.
    min_level: Mapped[int] = mapped_column(sa.Integer)
    #: Pairwise `sub` is computed per sector; fixed at registration so subjects never move.
    sector_identifier: Mapped[str] = mapped_column(sa.String(200))
    id_token_signed_response_alg: Mapped[str] = mapped_column(sa.String(8), default="RS256")
    #: Public RSA JWK for RSA-OAEP-256/A256GCM ID-token encryption, or None.
    id_token_encryption_jwk: Mapped[str | None] = mapped_column(sa.Text)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(sa.String(MAX_URI_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: JSON list of the attribute claims it may receive (gateway.idp.oidc.release; --claims).
    claims: Mapped[str] = mapped_column(sa.Text, default="[]", server_default="[]")


@dataclass(frozen=True)
class Client:
    """A registered client, detached from any database session; also authlib's ClientMixin."""

    client_id: str
    secret_hash: str | None
    secret_key: bytes
    public: bool
    token_endpoint_auth_method: AuthMethod
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    jwks: dict[str, Any] | None
    bsn: bool
    min_level: Level
    sector_identifier: str
    id_token_signed_response_alg: str
    id_token_encryption_jwk: dict[str, Any] | None
    backchannel_logout_uri: str | None
    #: Attribute claims the operator registered it for (gateway.idp.oidc.release).
    claims: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: OidcClient, settings: Settings) -> Client:
        return cls(
            client_id=row.client_id,
            secret_hash=row.secret_hash,
            secret_key=settings.derive_key(SECRET_PURPOSE),
            public=row.public,
            token_endpoint_auth_method=AuthMethod(row.token_endpoint_auth_method),
            redirect_uris=tuple(json.loads(row.redirect_uris)),
            post_logout_redirect_uris=tuple(json.loads(row.post_logout_redirect_uris or "[]")),
            jwks=json.loads(row.jwks) if row.jwks else None,
            bsn=row.bsn,
            min_level=Level(row.min_level),
            sector_identifier=row.sector_identifier,
            id_token_signed_response_alg=row.id_token_signed_response_alg,
            id_token_encryption_jwk=(
                json.loads(row.id_token_encryption_jwk) if row.id_token_encryption_jwk else None
            ),
            backchannel_logout_uri=row.backchannel_logout_uri,
            claims=tuple(json.loads(row.claims or "[]")),
        )

    def __repr__(self) -> str:
        return f"Client({self.client_id!r})"

    # --- authlib ClientMixin ----------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # OIDC Core 3.1.2.1: redirect_uri is required; never guess one.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        # OIDC Core 3.1.2.1: scope values that are not understood are ignored.
        # Attribute scopes only for a client registered for some of their claims.
        from gateway.idp.oidc.provider import SCOPES_SUPPORTED
        from gateway.idp.oidc.release import SCOPE_CLAIMS, allowed_scopes

        requested = (scope or "").split()
        allowed = allowed_scopes(self.claims)
        return " ".join(
            s for s in SCOPES_SUPPORTED
            if s in requested and (s not in SCOPE_CLAIMS or s in allowed)
        )

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return isinstance(redirect_uri, str) and redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None or not isinstance(client_secret, str):
            return False
        return hmac.compare_digest(hash_secret(self.secret_key, client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method == self.token_endpoint_auth_method.value

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


def hash_secret(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


# --- registration rules -------------------------------------------------------------------




def check_uri(uri: str, option: str) -> str:
    """An exact-match redirect target: absolute https (http for loopback), no userinfo, no
    fragment, printable ASCII only."""
    if not isinstance(uri, str) or not 0 < len(uri) <= MAX_URI_LENGTH:
        raise ClientError(f"{option}: must be a URL of at most {MAX_URI_LENGTH} characters")
    if not uri.isascii() or any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        raise ClientError(f"{option}: must be printable ASCII without spaces: {uri}")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ClientError(f"{option}: not a URL: {uri}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ClientError(f"{option}: must be an absolute https:// URL: {uri}")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ClientError(f"{option}: plain http is only allowed for loopback hosts: {uri}")
    if "@" in parts.netloc:
        raise ClientError(f"{option}: must not contain a user or password: {uri}")
    if "#" in uri:
        raise ClientError(f"{option}: must not contain a fragment: {uri}")
    return uri


def _check_uris(uris: Iterable[str], option: str, *, required: bool) -> list[str]:
    checked: list[str] = []
    for uri in uris:
        checked.append(check_uri(uri, option))
    if required and not checked:
        raise ClientError(f"{option}: at least one is required")
    if len(checked) > MAX_URIS:
        raise ClientError(f"{option}: at most {MAX_URIS}")
    return list(dict.fromkeys(checked))


def _check_public_jwk(jwk: Any, option: str, *, kty: str | None = None) -> dict[str, Any]:
    from joserfc.errors import JoseError
    from joserfc.jwk import JWKRegistry

    if not isinstance(jwk, dict):
        raise ClientError(f"{option}: must be a JSON object (a JWK)")
    if any(member in jwk for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise ClientError(f"{option}: contains private key material; give the public key only")
    if kty is not None and jwk.get("kty") != kty:
        raise ClientError(f"{option}: must be an {kty} key")
    if jwk.get("kty") not in ("RSA", "EC"):
        raise ClientError(f"{option}: only RSA and EC keys are accepted")
    try:
        key = JWKRegistry.import_key(jwk)
    except (JoseError, ValueError, TypeError):
        raise ClientError(f"{option}: not a valid public JWK") from None
    if jwk.get("kty") == "RSA" and getattr(key.raw_value, "key_size", 0) < 2048:
        raise ClientError(f"{option}: RSA keys must have at least 2048 bits")
    return dict(jwk)


def parse_jwks(text: str, option: str = "--jwks") -> dict[str, Any]:
    if len(text.encode()) > MAX_JWKS_BYTES:
        raise ClientError(f"{option}: larger than {MAX_JWKS_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError:
        raise ClientError(f"{option}: not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ClientError(f"{option}: must be a JWK Set with at least one key")
    return {"keys": [_check_public_jwk(k, option) for k in data["keys"]]}


def parse_encryption_jwk(text: str, option: str = "--encryption-jwk") -> dict[str, Any]:
    if len(text.encode()) > MAX_JWKS_BYTES:
        raise ClientError(f"{option}: larger than {MAX_JWKS_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError:
        raise ClientError(f"{option}: not JSON") from None
    jwk = _check_public_jwk(data, option, kty="RSA")
    if jwk.get("use", "enc") != "enc":
        raise ClientError(f"{option}: the key's use must be enc")
    if jwk.get("alg", ENCRYPTION_ALG) != ENCRYPTION_ALG:
        raise ClientError(f"{option}: the key's alg must be {ENCRYPTION_ALG}")
    return jwk


@dataclass(frozen=True)
class Registration:
    client: Client
    #: The client secret in clear, shown once; None for public and private_key_jwt clients.
    client_secret: str | None


def register(
    db: Session,
    settings: Settings,
    *,
    client_id: str,
    redirect_uris: Sequence[str],
    public: bool = False,
    bsn: bool = False,
    auth_method: str | None = None,
    post_logout_redirect_uris: Sequence[str] = (),
    jwks: dict[str, Any] | None = None,
    min_level: Level = Level.BASIS,
    sector_identifier: str | None = None,
    id_token_alg: str = "RS256",  # noqa: S107 - an algorithm name
    encryption_jwk: dict[str, Any] | None = None,
    backchannel_logout_uri: str | None = None,
    claims: Sequence[str] = (),
) -> Registration:
    """Register a client (in the caller's transaction). Raises ClientError."""
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.match(client_id):
        raise ClientError(
            "--client-id: 1 to 100 characters of letters, digits and . _ ~ : / @ + -"
        )
    uris = _check_uris(redirect_uris, "--redirect-uri", required=True)
    logout_uris = _check_uris(post_logout_redirect_uris, "--post-logout-redirect-uri",
                              required=False)
    if backchannel_logout_uri is not None:
        backchannel_logout_uri = check_uri(backchannel_logout_uri, "--backchannel-logout-uri")
    method = AuthMethod(auth_method) if auth_method else (
        AuthMethod.NONE if public else AuthMethod.CLIENT_SECRET_BASIC
    )
    if public and method is not AuthMethod.NONE:
        raise ClientError("--auth-method: a public client authenticates with none")
    if not public and method is AuthMethod.NONE:
        raise ClientError("--auth-method: none is for public clients (--public)")
    if method is AuthMethod.PRIVATE_KEY_JWT and jwks is None:
        raise ClientError("--jwks: private_key_jwt needs the client's public keys")
    if jwks is not None and method is not AuthMethod.PRIVATE_KEY_JWT:
        raise ClientError("--jwks: only for --auth-method private_key_jwt")
    if id_token_alg not in SIGNING_ALGS:
        raise ClientError(f"--id-token-alg: must be one of {', '.join(SIGNING_ALGS)}")
    sector = sector_identifier or client_id
    if not CLIENT_ID_PATTERN.match(sector) or len(sector) > 200:
        raise ClientError("--sector-identifier: letters, digits and . _ ~ : / @ + - only")
    if db.get(OidcClient, client_id) is not None:
        raise ClientError(f"--client-id: {client_id} is already registered")
    from gateway.idp.oidc.release import PolicyError, parse_policy

    try:
        claim_policy = parse_policy(claims)
    except PolicyError as exc:
        raise ClientError(str(exc)) from None

    secret: str | None = None
    secret_hash: str | None = None
    if method in (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST):
        secret = secrets.token_urlsafe(SECRET_BYTES)
        secret_hash = hash_secret(settings.derive_key(SECRET_PURPOSE), secret)
    row = OidcClient(
        client_id=client_id,
        secret_hash=secret_hash,
        public=public,
        token_endpoint_auth_method=method.value,
        redirect_uris=json.dumps(uris),
        post_logout_redirect_uris=json.dumps(logout_uris),
        jwks=json.dumps(jwks) if jwks is not None else None,
        bsn=bsn,
        min_level=int(min_level),
        sector_identifier=sector,
        id_token_signed_response_alg=id_token_alg,
        id_token_encryption_jwk=json.dumps(encryption_jwk) if encryption_jwk else None,
        backchannel_logout_uri=backchannel_logout_uri,
        created_at=clock.now(),
        claims=json.dumps(list(claim_policy)),
    )
    db.add(row)
    db.flush()
    _mark_changed(db, settings)
    return Registration(Client.from_row(row, settings), secret)


def get_client(db: Session, settings: Settings, client_id: object) -> Client | None:
    """The registered client, or None (also for ids no client could have); from this
    worker's `ClientCache` when the app has one."""
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.match(client_id):
        return None
    cache: ClientCache | None = (
        current_app.extensions.get(CACHE_KEY) if has_app_context() else None
    )
    if cache is not None:
        return cache.get(db, settings, client_id)
    return _load_client(db, settings, client_id)


def _load_client(db: Session, settings: Settings, client_id: str) -> Client | None:
    row = db.get(OidcClient, client_id)
    return Client.from_row(row, settings) if row is not None else None


class ClientCache:
    """Registered clients of one worker process, emptied when the registry changes (see the
    module docstring). Safe to share between the threads of a worker."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._version: bytes | None = None
        self._checked = float("-inf")
        #: The clock of the check interval (tests replace it).
        self.monotonic = time.monotonic

    def clear(self) -> None:
        with self._lock:
            self._clients = {}
            self._checked = float("-inf")

    def _fresh(self) -> bool:
        """Compare with the shared store's version (at most every REGISTRY_CHECK_SECONDS);
        False when the store cannot say (then nothing is served from or kept in memory)."""
        now = self.monotonic()
        if now - self._checked < REGISTRY_CHECK_SECONDS:
            return True
        from gateway.store import StoreUnavailable

        try:
            version = self._store.get(REGISTRY_VERSION_KEY)
        except StoreUnavailable:
            self.clear()
            return False
        with self._lock:
            if version != self._version:
                self._clients = {}
                self._version = version
            self._checked = now
        return True

    def get(self, db: Session, settings: Settings, client_id: str) -> Client | None:
        if not self._fresh():
            return _load_client(db, settings, client_id)
        client = self._clients.get(client_id)
        if client is not None:
            return client
        client = _load_client(db, settings, client_id)
        if client is not None:
            with self._lock:
                if len(self._clients) < MAX_CACHED_CLIENTS:
                    self._clients[client_id] = client
        return client


def _mark_changed(db: Session, settings: Settings | None) -> None:
    """The registry changes when `db` commits (see `_after_commit`)."""
    if settings is None and has_app_context():
        from gateway.app import get_settings

        settings = get_settings()
    db.info[_CHANGED] = settings or True


@event.listens_for(Session, "after_commit")
def _after_commit(db: Session) -> None:
    changed: Settings | bool | None = db.info.pop(_CHANGED, None)
    if changed is None:
        return
    from gateway.store import StoreUnavailable, get_store, make_store

    if has_app_context():
        cache = current_app.extensions.get(CACHE_KEY)
        if cache is not None:
            cache.clear()
    try:
        if has_app_context():
            store = get_store()
        elif isinstance(changed, Settings):
            store = make_store(changed)
        else:
            return
        store.set(REGISTRY_VERSION_KEY, secrets.token_bytes(16), REGISTRY_VERSION_TTL)
    except StoreUnavailable:
        # Other workers then see the change only when they next reach the store; they serve
        # nothing from memory while they cannot (ClientCache._fresh).
        pass


@event.listens_for(Session, "after_rollback")
def _after_rollback(db: Session) -> None:
    db.info.pop(_CHANGED, None)


def init_app(app: Flask) -> None:
    from gateway.store import get_store

    app.extensions[CACHE_KEY] = ClientCache(get_store(app))


def list_clients(db: Session) -> list[OidcClient]:
    return list(db.scalars(sa.select(OidcClient).order_by(OidcClient.client_id)))


def remove_client(db: Session, client_id: str) -> bool:
    """Delete a client and (by cascade) its grants and tokens; False when unknown."""
    from gateway.idp.oidc.tokens import revoke_client

    row = db.get(OidcClient, client_id)
    if row is None:
        return False
    revoke_client(db, client_id)
    db.delete(row)
    db.flush()
    _mark_changed(db, None)
    return True
