"""Grants, authorization codes, access and refresh tokens, and ID tokens.

One `OidcGrant` row is one login handed to one client: it carries the authorization code's
binding (client, redirect URI, PKCE challenge, nonce; RFC 6749 section 4.1.2, RFC 7636) and the
login's result, and it is the *family* of every token issued from it. Revoking the grant
revokes them all at once, which is how the two reuse rules are kept:

- a code is single use and valid `CODE_LIFETIME`; a second use revokes what the first use
  issued (RFC 6749 section 4.1.2, RFC 9700 section 4.2.4 "MUST ... SHOULD revoke");
- refresh tokens rotate on every use; presenting a used one revokes the family (RFC 9700
  section 4.14.2), and no token outlives the family's absolute lifetime.

Codes, access tokens and refresh tokens are 256-bit random strings stored only as
HMAC-SHA256 under their own derived keys, so a copy of the tables yields nothing usable.
Consuming a code or a refresh token is one conditional UPDATE (`WHERE used_at IS NULL`):
two parallel requests can never both win.

ID tokens (OIDC Core 1.0 section 2) are signed RS256 (the default) or ES256 with the active
key of `gateway.keys`, and encrypted RSA-OAEP-256/A256GCM (RFC 7516, nested JWT with
`cty: JWT`) when the client registered an encryption key. `alg=none` is never produced and
never accepted: every decode names its algorithms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from joserfc import jwe, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.db import Base, Prepared, UTCDateTime, as_loaded, delete_due
from gateway.flows.types import AuthnResult
from gateway.idp.oidc.clients import ENCRYPTION_ALG, ENCRYPTION_ENC, SIGNING_ALGS, Client
from gateway.keys import KeyStore, SigningKey
from gateway.levels import Level
from gateway.settings import Settings

#: RFC 9700 section 4.2.4 / issue 6: an authorization code is valid at most 60 seconds.
CODE_LIFETIME = timedelta(seconds=60)
#: Access tokens only reach the userinfo endpoint: five minutes is enough to call it and short
#: enough that a leaked token is soon worthless.
ACCESS_TOKEN_LIFETIME = timedelta(minutes=5)
#: The ID token proves a login that just happened; relying parties check it at once.
ID_TOKEN_LIFETIME = timedelta(minutes=5)
#: One refresh token lives at most this long unused (it rotates at every use) ...
REFRESH_TOKEN_LIFETIME = timedelta(minutes=30)
#: ... and no token of a family outlives this, however often it was refreshed: the SSO
#: session's own absolute limit is of the same order (OWASP "Absolute Timeout").
FAMILY_LIFETIME = timedelta(hours=8)
#: 32 random bytes, base64url (43 characters).
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 100
#: Largest ID token accepted back as id_token_hint (ours are about 1 kB signed).
MAX_HINT_LENGTH = 8 * 1024

CODE_PURPOSE = "oidc-code"
ACCESS_PURPOSE = "oidc-access-token"
REFRESH_PURPOSE = "oidc-refresh-token"
SID_PURPOSE = "oidc-sid"


class OidcGrant(Base):
    """One login given to one client: the code's binding and the family of its tokens."""

    __tablename__ = "oidc_grants"
    __table_args__ = (
        # Logout revokes the grants of one SSO session.
        sa.Index("ix_oidc_grants_sso_session_id", "sso_session_id"),
        sa.Index("ix_oidc_grants_client_id", "client_id"),
        sa.Index("ix_oidc_grants_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    #: HMAC of the authorization code; the token endpoint's lookup.
    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    client_id: Mapped[str] = mapped_column(
        sa.ForeignKey("oidc_clients.client_id", ondelete="CASCADE")
    )
    redirect_uri: Mapped[str] = mapped_column(sa.String(2000))
    code_challenge: Mapped[str] = mapped_column(sa.String(128))
    nonce: Mapped[str | None] = mapped_column(sa.String(512))
    scope: Mapped[str] = mapped_column(sa.String(200))
    #: The pairwise subject for this client.
    sub: Mapped[str] = mapped_column(sa.String(64))
    account_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE")
    )
    level: Mapped[int] = mapped_column(sa.Integer)
    #: JSON list of RFC 8176 values.
    amr: Mapped[str] = mapped_column(sa.String(100))
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime())
    sso_session_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    code_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    code_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The family's absolute end.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The attribute claims released to this client for this login, sealed
    #: (gateway.idp.oidc.release); None when there are none.
    claims_sealed: Mapped[str | None] = mapped_column(sa.Text, default=None)

    @property
    def level_value(self) -> Level:
        return Level(self.level)

    @property
    def amr_values(self) -> list[str]:
        return list(json.loads(self.amr))

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


class OidcToken(Base):
    """An access or refresh token, by its HMAC."""

    __tablename__ = "oidc_tokens"
    __table_args__ = (sa.Index("ix_oidc_tokens_grant_id", "grant_id"),)

    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(sa.ForeignKey("oidc_grants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(8))  # "access" or "refresh"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Refresh tokens: when it was rotated; a second use revokes the family.
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


_GRANTS: sa.Table = OidcGrant.__table__  # type: ignore[assignment]
_TOKENS: sa.Table = OidcToken.__table__  # type: ignore[assignment]
# The token endpoint's statements, built once: Core statements with bound parameters are
# compiled once per process and skip the ORM's per-call statement building (issue 6,
# "Performance"; bench/oidc_compare.py --profile token).
_INSERT_GRANT = sa.insert(_GRANTS)


def _token_row(kind: str) -> sa.Select[Any]:
    prefix = kind[0] + "_"
    c = _TOKENS.c
    return sa.select(
        sa.bindparam(prefix + "hash", type_=c.token_hash.type),
        sa.bindparam("grant_id", type_=c.grant_id.type),
        sa.literal(kind, c.kind.type),
        sa.bindparam("now", type_=c.created_at.type),
        sa.bindparam(prefix + "expires", type_=c.expires_at.type),
        sa.cast(sa.null(), c.used_at.type),
    )


# An access token alone, or an access and a refresh token in one INSERT: one statement and
# one round trip, without the pipeline psycopg runs an executemany in (which cost more CPU
# than the INSERT itself; bench/oidc_compare.py). INSERT ... SELECT rather than a
# multi-row VALUES: SQLAlchemy compiles a multi-row VALUES again at every execution.
_TOKEN_COLUMNS = ["token_hash", "grant_id", "kind", "created_at", "expires_at", "used_at"]
_INSERT_ACCESS = sa.insert(_TOKENS).from_select(_TOKEN_COLUMNS, _token_row("access"))
_INSERT_ACCESS_REFRESH = sa.insert(_TOKENS).from_select(
    _TOKEN_COLUMNS, sa.union_all(_token_row("access"), _token_row("refresh"))
)
# The code's row is found by its unique hash alone; the client binding is checked on that
# row (in SET, and again by the caller on the row returned), never in WHERE. With
# `client_id = :c` in WHERE, PostgreSQL without statistics on the table (never ANALYZEd:
# a new table, autovacuum off or behind) took ix_oidc_grants_client_id, which holds every
# grant of the client, and filtered them row by row for the hash: each exchange read all
# of the client's grants, and the token endpoint slowed down as the table grew (issue 6,
# "Performance"; tests/test_oidc_code_consumption.py pins the plan). A code presented by
# another client is left as it was: its row is written back unchanged.
_CONSUME = (
    sa.update(_GRANTS)
    .where(
        _GRANTS.c.code_hash == sa.bindparam("b_code_hash"),
        _GRANTS.c.code_used_at.is_(None),
        _GRANTS.c.code_expires_at > sa.bindparam("b_now"),
        _GRANTS.c.revoked_at.is_(None),
    )
    .values(
        code_used_at=sa.case(
            (
                _GRANTS.c.client_id == sa.bindparam("b_client_id"),
                sa.bindparam("b_now", type_=_GRANTS.c.code_used_at.type),
            ),
            else_=_GRANTS.c.code_used_at,
        )
    )
    .returning(*_GRANTS.c)
)
# Sent to the driver as compiled (gateway.db.Prepared): these run on every code exchange.
_RUN_INSERT_GRANT = Prepared(_INSERT_GRANT)
_RUN_CONSUME = Prepared(_CONSUME)
_RUN_INSERT_ACCESS = Prepared(_INSERT_ACCESS)
_RUN_INSERT_ACCESS_REFRESH = Prepared(_INSERT_ACCESS_REFRESH)


#: HMACs keyed for one purpose under one secret key, copied for every value: the key is
#: derived and the HMAC keyed once, not at every call (four times per code exchange).
_KEYED: dict[tuple[bytes, str], hmac.HMAC] = {}


def _mac(settings: Settings, purpose: str, value: str) -> str:
    slot = (settings.secret_key, purpose)
    keyed = _KEYED.get(slot)
    if keyed is None:
        if len(_KEYED) > 64:  # secret keys change rarely; never let the cache grow
            _KEYED.clear()
        keyed = _KEYED[slot] = hmac.new(settings.derive_key(purpose), digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(value.encode())
    return mac.hexdigest()


def _well_formed(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_LENGTH and value.isascii()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


# --- codes --------------------------------------------------------------------------------


def create_grant(
    db: Session,
    settings: Settings,
    client: Client,
    *,
    redirect_uri: str,
    code_challenge: str,
    nonce: str | None,
    scope: str,
    sub: str,
    result: AuthnResult,
    claims_sealed: str | None = None,
) -> str:
    """Record a finished login for `client`; returns the authorization code (in clear, once).
    `claims_sealed`: the attribute claims released (gateway.idp.oidc.release.seal_claims)."""
    now = clock.now()
    code = new_token()
    # One Core INSERT on the session's connection, in the caller's transaction: nothing reads
    # the row back in this request (and the ORM's execution layer would cost more CPU than
    # the INSERT).
    _RUN_INSERT_GRANT.execute(
        db.connection(),
        {
            "id": str(uuid.uuid4()),
            "code_hash": _mac(settings, CODE_PURPOSE, code),
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": code_challenge,
            "nonce": nonce,
            "scope": scope,
            "sub": sub,
            "account_id": result.account_id,
            "level": int(result.level),
            "amr": json.dumps(list(result.amr)),
            "auth_time": result.auth_time,
            "sso_session_id": result.sso_session_id,
            "created_at": now,
            "code_expires_at": now + CODE_LIFETIME,
            "code_used_at": None,
            "revoked_at": None,
            "expires_at": now + FAMILY_LIFETIME,
            "claims_sealed": claims_sealed,
        }
    )
    return code


def consume_code(
    db: Session, settings: Settings, code: object, client_id: str, *, commit_win: bool = True
) -> OidcGrant | None:
    """The grant of a valid, unused code of this client, now marked used; None otherwise.

    A code presented a second time revokes its grant, and so every token the first use
    issued. Commits the revocation (it must stick even though the request then fails).
    With `commit_win=False` a won code is left in the caller's transaction, which then
    holds the row lock: the token endpoint commits it with the tokens it issues (one commit
    instead of two), or on any later refusal (provider.CodeGrant), so a code stays used.
    """
    if not _well_formed(code):
        return None
    assert isinstance(code, str)
    code_hash = _mac(settings, CODE_PURPOSE, code)
    now = clock.now()
    # RETURNING hands back the row the UPDATE won: one round trip instead of two on the
    # token endpoint's hot path (bench/oidc_compare.py).
    won = _RUN_CONSUME.execute(
        db.connection(), {"b_code_hash": code_hash, "b_client_id": client_id, "b_now": now}
    ).one_or_none()
    if won is not None and won.client_id == client_id and won.code_used_at is not None:
        if commit_win:
            db.commit()
        # A detached copy of the row (nothing writes to it through the ORM).
        return as_loaded(OidcGrant, won._asdict())
    # Replay (or a code of another client): revoke the family the first use started.
    db.execute(
        sa.update(OidcGrant)
        .where(
            OidcGrant.code_hash == code_hash,
            OidcGrant.code_used_at.is_not(None),
            OidcGrant.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    return None


# --- access and refresh tokens ------------------------------------------------------------


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str | None


def issue_tokens(
    db: Session, settings: Settings, grant: OidcGrant, *, refresh: bool
) -> IssuedTokens:
    """A new access token (and refresh token) for `grant`, in the caller's transaction."""
    now = clock.now()
    access = new_token()
    access_expires = min(now + ACCESS_TOKEN_LIFETIME, grant.expires_at)
    values: dict[str, Any] = {
        "grant_id": grant.id, "now": now,
        "a_hash": _mac(settings, ACCESS_PURPOSE, access), "a_expires": access_expires,
    }
    refresh_token: str | None = None
    if refresh:
        refresh_token = new_token()
        values["r_hash"] = _mac(settings, REFRESH_PURPOSE, refresh_token)
        values["r_expires"] = min(now + REFRESH_TOKEN_LIFETIME, grant.expires_at)
    (_RUN_INSERT_ACCESS_REFRESH if refresh else _RUN_INSERT_ACCESS).execute(db.connection(), values)
    return IssuedTokens(
        access_token=access,
        expires_in=max(1, int((access_expires - now).total_seconds())),
        refresh_token=refresh_token,
    )


def rotate_refresh_token(
    db: Session, settings: Settings, token: object, client_id: str
) -> OidcGrant | None:
    """The grant of a valid refresh token of this client, the token now used; else None.

    A used refresh token presented again revokes its whole family (RFC 9700 4.14.2).
    Commits.
    """
    if not _well_formed(token):
        return None
    assert isinstance(token, str)
    token_hash = _mac(settings, REFRESH_PURPOSE, token)
    now = clock.now()
    row = db.get(OidcToken, token_hash)
    if row is None or row.kind != "refresh":
        return None
    grant = db.get(OidcGrant, row.grant_id)
    if grant is None or grant.client_id != client_id:
        return None
    won = db.execute(
        sa.update(OidcToken)
        .where(OidcToken.token_hash == token_hash, OidcToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        revoke_grant(db, grant.id)
        db.commit()
        return None
    db.commit()
    if not grant.active(now) or now >= row.expires_at:
        return None
    return grant


def grant_for_access_token(db: Session, settings: Settings, token: object) -> OidcGrant | None:
    """The live grant behind a live access token, or None."""
    if not _well_formed(token):
        return None
    assert isinstance(token, str)
    now = clock.now()
    row = db.get(OidcToken, _mac(settings, ACCESS_PURPOSE, token))
    if row is None or row.kind != "access" or now >= row.expires_at:
        return None
    grant = db.get(OidcGrant, row.grant_id)
    if grant is None or not grant.active(now):
        return None
    return grant


def revoke_grant(db: Session, grant_id: str) -> None:
    db.execute(
        sa.update(OidcGrant)
        .where(OidcGrant.id == grant_id, OidcGrant.revoked_at.is_(None))
        .values(revoked_at=clock.now())
        .execution_options(synchronize_session=False)
    )


def revoke_client(db: Session, client_id: str) -> None:
    db.execute(
        sa.update(OidcGrant)
        .where(OidcGrant.client_id == client_id, OidcGrant.revoked_at.is_(None))
        .values(revoked_at=clock.now())
        .execution_options(synchronize_session=False)
    )


def revoke_sso_session(db: Session, sso_session_id: str) -> list[OidcGrant]:
    """Revoke every grant of one SSO session (logout); returns them (for back-channel logout)."""
    grants = list(
        db.scalars(
            sa.select(OidcGrant).where(
                OidcGrant.sso_session_id == sso_session_id, OidcGrant.revoked_at.is_(None)
            )
        )
    )
    now = clock.now()
    for grant in grants:
        grant.revoked_at = now
    return grants


def purge(db: Session, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete grants (and by cascade their tokens) that ended more than `older_than` ago.
    `gateway purge` (gateway.purge) does the same from cron, in batches, tokens first."""
    from gateway import purge as purging  # gateway.purge imports this module

    return delete_due(db, OidcGrant.id, purging.oidc_grants_due(clock.now(), older_than))


# --- ID tokens ----------------------------------------------------------------------------

_imported: dict[str, RSAKey | ECKey] = {}


def _private_jwk(key: SigningKey) -> RSAKey | ECKey:
    found = _imported.get(key.kid)
    if found is None:
        if key.alg == "RS256":
            found = RSAKey.import_key(key.private_key)  # type: ignore[arg-type]
        else:
            found = ECKey.import_key(key.private_key)  # type: ignore[arg-type]
        _imported[key.kid] = found
    return found


def session_id(settings: Settings, sso_session_id: str | None) -> str | None:
    """The `sid` claim (OIDC Front/Back-Channel Logout): an HMAC of the SSO session's id, so
    that no relying party ever holds the session's own identifier."""
    if sso_session_id is None:
        return None
    return _mac(settings, SID_PURPOSE, sso_session_id)[:43]


def _half_hash(value: str, alg: str) -> str:
    # OIDC Core 3.1.3.6: left half of the hash that matches the signing algorithm (SHA-256).
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def id_token_claims(
    settings: Settings,
    client: Client,
    grant: OidcGrant,
    *,
    access_token: str | None,
    include_nonce: bool,
    bsn: str | None,
) -> dict[str, Any]:
    now = clock.now()
    alg = client.id_token_signed_response_alg
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": grant.sub,
        "aud": client.client_id,
        "iat": int(now.timestamp()),
        "exp": int((now + ID_TOKEN_LIFETIME).timestamp()),
        "auth_time": int(grant.auth_time.timestamp()),
        "acr": grant.level_value.context_class,
    }
    # OIDC Core 2: amr is OPTIONAL; an empty list says nothing (an eIDAS "low" login).
    if grant.amr_values:
        claims["amr"] = grant.amr_values
    if include_nonce and grant.nonce is not None:
        claims["nonce"] = grant.nonce
    sid = session_id(settings, grant.sso_session_id)
    if sid is not None:
        claims["sid"] = sid
    if access_token is not None:
        claims["at_hash"] = _half_hash(access_token, alg)
    if bsn is not None and client.bsn:
        claims["bsn"] = bsn
    return claims


def sign(keys: KeyStore, claims: dict[str, Any], alg: str, typ: str = "JWT") -> str:
    if alg not in SIGNING_ALGS:
        raise ValueError(f"not a signing algorithm the gateway uses: {alg}")
    key = keys.active(alg)
    return jwt.encode(
        {"alg": alg, "kid": key.kid, "typ": typ}, claims, _private_jwk(key), algorithms=[alg]
    )


def encrypt_for(client: Client, signed: str) -> str:
    """Nest a signed ID token in a JWE for the client's registered key (RFC 7519 5.2)."""
    assert client.id_token_encryption_jwk is not None
    public = RSAKey.import_key(client.id_token_encryption_jwk)
    header: dict[str, Any] = {"alg": ENCRYPTION_ALG, "enc": ENCRYPTION_ENC, "cty": "JWT"}
    if "kid" in client.id_token_encryption_jwk:
        header["kid"] = client.id_token_encryption_jwk["kid"]
    return jwe.encrypt_compact(header, signed, public, algorithms=[ENCRYPTION_ALG, ENCRYPTION_ENC])


def make_id_token(keys: KeyStore, client: Client, claims: dict[str, Any]) -> str:
    signed = sign(keys, claims, client.id_token_signed_response_alg)
    if client.id_token_encryption_jwk is not None:
        return encrypt_for(client, signed)
    return signed


def verify_own_token(
    settings: Settings, keys: KeyStore, token: object, *, check_expiry: bool
) -> dict[str, Any] | None:
    """Claims of an ID token this gateway signed (any published key), or None.

    Used for id_token_hint, where an expired token is still a valid hint (OIDC RP-Initiated
    Logout 1.0 section 2), so `check_expiry` may be off. Never raises on hostile input.
    """
    if not isinstance(token, str) or not 0 < len(token) <= MAX_HINT_LENGTH:
        return None
    if token.count(".") != 2:  # a JWE (or garbage): we cannot read an encrypted hint
        return None
    try:
        key_set = KeySet.import_key_set(keys.jwks())  # type: ignore[arg-type]
        decoded = jwt.decode(token, key_set, algorithms=list(SIGNING_ALGS))
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    claims = decoded.claims
    if claims.get("iss") != settings.issuer or not isinstance(claims.get("sub"), str):
        return None
    aud = claims.get("aud")
    if not (isinstance(aud, str) or (isinstance(aud, list) and aud)):
        return None
    if check_expiry:
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= clock.now().timestamp():
            return None
    return claims


def audience(claims: dict[str, Any]) -> str | None:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return aud
    if isinstance(aud, list) and len(aud) == 1 and isinstance(aud[0], str):
        return aud[0]
    return None
