"""Back-channel logout to relying parties (OpenID Connect Back-Channel Logout 1.0).

When an SSO session ends because the person logged out (the OIDC end-session endpoint or the
login flow's own `/logout`), because another person logged in in the same browser, or because
the account can no longer be used, every client that received a login from that session and
registered a `backchannel_logout_uri` gets a logout token (section 2.4): a JWT signed like the
client's ID tokens (and encrypted when it registered an ID-token encryption key), with `iss`,
`aud`, `iat`, a two-minute `exp` (section 4: "preferably at most two minutes"), `jti`, the
back-channel logout `events` member, `sid` and `sub`, explicitly typed `logout+jwt`
(section 2.4, RFC 8725 3.11), and never a `nonce` (section 2.4: it must not be confused with
an ID token). The session's grants are revoked in the same transaction.

How the end of a session is noticed: the login flow owns SSO sessions and knows nothing of
protocols (shared/ARCHITECTURE.md), so instead of a call from the flow, a `before_flush`
listener on the app's session factory sees an `SsoSession` row whose `ended_at` goes from
empty to set, with one of `ENDING_REASONS`. Idle and absolute time-outs are left out: they are
noticed lazily (at the next visit), and a relying party's own session lives on its own terms.
`sessions.end_all_sessions` (password change, recovery, block) ends its rows through the ORM
for this reason, so they are seen like any other.

Delivery (section 2.5): after the transaction commits, an HTTP POST with the form-encoded
`logout_token`, on a small thread pool so the person's logout page never waits for a relying
party; short timeouts, no redirects followed (section 2.5 leaves them out; a redirect could
send the token elsewhere), https only except to loopback hosts, one attempt. Failures are
logged with the client id and the kind of failure only: no subject, no session, no token.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.db import get_db
from gateway.flows.sessions import EndReason, SsoSession
from gateway.idp.oidc import clients as registry
from gateway.idp.oidc import tokens
from gateway.keys import KeyStore, get_keys
from gateway.settings import Settings

log = logging.getLogger(__name__)

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: Section 4: logout tokens should expire "at most two minutes in the future".
LOGOUT_TOKEN_LIFETIME = timedelta(minutes=2)
#: Seconds to connect and to wait for the answer: a relying party that cannot answer this fast
#: is down, and waiting longer only ties up a worker.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
WORKERS = 4
#: Deliveries waiting at most; beyond this (a relying party hanging during a logout storm)
#: new ones are dropped and logged rather than piling up in memory.
MAX_PENDING = 1000
ENDING_REASONS = frozenset({EndReason.LOGOUT, EndReason.REPLACED, EndReason.ACCOUNT})
_INFO_KEY = "gateway.oidc.backchannel"


@dataclass(frozen=True)
class Recipient:
    """One client to tell that one SSO session ended."""

    client: registry.Client
    sub: str
    sid: str | None


@dataclass(frozen=True)
class Notice:
    """A signed logout token and where it goes."""

    client_id: str
    uri: str
    logout_token: str


def recipients(db: Session, settings: Settings, sso_session_id: str) -> list[Recipient]:
    """Clients that exchanged a code from this SSO session and want back-channel logout."""
    rows = db.execute(
        sa.select(tokens.OidcGrant.client_id, tokens.OidcGrant.sub,
                  registry.OidcClient.backchannel_logout_uri)
        .join(registry.OidcClient, registry.OidcClient.client_id == tokens.OidcGrant.client_id)
        .where(
            tokens.OidcGrant.sso_session_id == sso_session_id,
            tokens.OidcGrant.code_used_at.is_not(None),
            registry.OidcClient.backchannel_logout_uri.is_not(None),
        )
        .order_by(tokens.OidcGrant.created_at)
    ).all()
    sid = tokens.session_id(settings, sso_session_id)
    found: dict[str, Recipient] = {}
    for client_id, sub, _uri in rows:
        if client_id in found:
            continue
        client = registry.get_client(db, settings, client_id)
        if client is not None and client.backchannel_logout_uri is not None:
            found[client_id] = Recipient(client, sub, sid)
    return list(found.values())


def logout_token(
    settings: Settings, keys: KeyStore, client: registry.Client, sub: str, sid: str | None
) -> str:
    """A logout token (section 2.4) for `client`, signed (and encrypted) like its ID tokens."""
    now = clock.now()
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": client.client_id,
        "iat": int(now.timestamp()),
        "exp": int((now + LOGOUT_TOKEN_LIFETIME).timestamp()),
        "jti": secrets.token_urlsafe(24),
        "events": {LOGOUT_EVENT: {}},
        "sub": sub,
    }
    if sid is not None:
        claims["sid"] = sid
    signed = tokens.sign(keys, claims, client.id_token_signed_response_alg, typ="logout+jwt")
    if client.id_token_encryption_jwk is not None:
        return tokens.encrypt_for(client, signed)
    return signed


def notices(settings: Settings, keys: KeyStore, found: Iterable[Recipient]) -> list[Notice]:
    """Sign one logout token per recipient."""
    out: list[Notice] = []
    for recipient in found:
        client = recipient.client
        assert client.backchannel_logout_uri is not None
        token = logout_token(settings, keys, client, recipient.sub, recipient.sid)
        out.append(Notice(client.client_id, client.backchannel_logout_uri, token))
    return out


def deliver(notice: Notice) -> bool:
    """POST one logout token (section 2.5); True when the relying party answered 2xx."""
    try:
        registry.check_uri(notice.uri, "backchannel_logout_uri")
    except registry.ClientError:
        log.warning("back-channel logout to client %s skipped: unsafe URI", notice.client_id)
        return False
    try:
        response = requests.post(
            notice.uri,
            data={"logout_token": notice.logout_token},
            headers={"Cache-Control": "no-store", "Accept": "application/json"},
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            allow_redirects=False,
        )
        response.close()
    except requests.RequestException as exc:
        log.warning("back-channel logout to client %s failed: %s", notice.client_id,
                    type(exc).__name__)
        return False
    if not 200 <= response.status_code < 300:
        log.warning("back-channel logout to client %s answered HTTP %d", notice.client_id,
                    response.status_code)
        return False
    log.info("back-channel logout delivered to client %s", notice.client_id)
    return True


class Dispatcher:
    """Delivers notices on worker threads, so a slow relying party never holds up a page."""

    def __init__(self, workers: int = WORKERS, max_pending: int = MAX_PENDING) -> None:
        self._workers = workers
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future[bool]] = set()

    def submit(self, notice: Notice) -> None:
        with self._lock:
            if len(self._pending) >= self._max_pending:
                log.warning("back-channel logout to client %s dropped: queue full",
                            notice.client_id)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="backchannel")
            future = self._pool.submit(deliver, notice)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait for the deliveries under way (tests; an orderly shutdown)."""
        with self._lock:
            pending = set(self._pending)
        wait(pending, timeout=timeout)


dispatcher = Dispatcher()


def _just_ended(row: SsoSession) -> bool:
    history = sa.inspect(row).attrs.ended_at.history
    added, deleted = list(history.added or ()), list(history.deleted or ())
    was_open = not deleted or deleted[0] is None
    return bool(added) and added[0] is not None and was_open


def init_app(app: Flask) -> None:
    """Listen for ending SSO sessions on this app's session factory."""
    factory = get_db(app).sessionmaker

    def before_flush(session: Session, _context: Any, _instances: Any) -> None:
        ended = [
            row.id for row in session.dirty
            if isinstance(row, SsoSession) and row.end_reason in ENDING_REASONS
            and _just_ended(row)
        ]
        if not ended:
            return
        from gateway.app import get_settings

        settings = get_settings(app)
        queue: list[Recipient] = session.info.setdefault(_INFO_KEY, [])
        for sso_id in ended:
            # Inside a flush no autoflush happens: these queries see the rows as loaded.
            queue.extend(recipients(session, settings, sso_id))
            tokens.revoke_sso_session(session, sso_id)

    def after_commit(session: Session) -> None:
        found: list[Recipient] = session.info.pop(_INFO_KEY, [])
        if not found:
            return
        from gateway.app import get_settings

        # No SQL here: after a commit the session has no transaction (SQLAlchemy's
        # after_commit); everything needed was read in before_flush.
        try:
            for notice in notices(get_settings(app), get_keys(app), found):
                dispatcher.submit(notice)
        except Exception:
            # The logout itself succeeded; a relying party not told is logged, never shown.
            log.exception("back-channel logout could not be prepared")

    def after_rollback(session: Session) -> None:
        session.info.pop(_INFO_KEY, None)

    sa.event.listen(factory, "before_flush", before_flush)
    sa.event.listen(factory, "after_commit", after_commit)
    sa.event.listen(factory, "after_rollback", after_rollback)
