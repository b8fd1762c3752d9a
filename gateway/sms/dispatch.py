"""Failover between SMS/voice providers, with an idempotency key (issue 3, item 4).

`Dispatcher.send` does, in this order:

1. records the message as `queued` and commits, BEFORE any provider is called: a crash or a
   timeout always leaves a row, and a concurrent call with the same idempotency key finds it;
2. tries the providers that support the channel, in the configured order; an error or a timeout
   moves on to the next. Every provider gets the SAME `OutgoingMessage`: the same text (so the
   same code) and the same idempotency key. A provider that timed out but did deliver therefore
   delivered the very code the next provider delivers: a person never holds two codes;
3. records the outcome: `sent` with the provider (and its message id), or `failed` with the last
   reason, and raises `DeliveryFailed` (its `user_message` is what a person can be shown).

`queue` + `deliver` split `send` in two for a caller that must commit something of its own
with the queued row (`gateway.sms.service` commits the code and its message in one
transaction): `queue` adds the row to the caller's transaction, the caller commits, `deliver`
calls the providers and records the outcome.

A second call with an idempotency key that already succeeded returns the recorded message and
sends nothing. A retry of a failed key reuses its row, and must carry the same text: the row keeps
an HMAC of the text, and another text under the same key is refused (ValueError), because it
would be a second code. The text itself is never stored, nor logged.

Transactions: `send` keeps its rows in short transactions of its own, on the database of the
session it is given (committed after step 1 and after each attempt), and holds none open while a
provider is called, so a slow provider never holds a database lock. The caller's session and
its transaction are left alone; the message returned is detached from any session. Do not call
`send` while holding an uncommitted write on SQLite: our own transaction would wait for it.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import phonenumbers
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from gateway import clock
from gateway import metrics as prometheus
from gateway.db import Prepared, UTCDateTime, as_loaded, transaction_connection
from gateway.i18n import lazy_gettext
from gateway.settings import Settings
from gateway.sms.keyed import keyed_hmac
from gateway.sms.messages import segments
from gateway.sms.models import ALLOWED, SmsMessage, Status, key_hash, phone_hmac
from gateway.sms.providers.base import (
    CHANNELS,
    E164,
    OutgoingMessage,
    Provider,
    ProviderError,
    ProviderTimeout,
    Timeouts,
    build_providers,
)

log = logging.getLogger(__name__)

EXTENSION = "gateway.sms.dispatcher"

#: A `queued` row younger than this is being sent by another worker right now: a second call
#: with its key waits for that outcome instead of sending too. Longer than the worst case of
#: one send (connect + read timeout for each of up to three providers).
IN_FLIGHT_LEASE = timedelta(seconds=30)

MAX_KEY_LENGTH = 200
MAX_TEXT_LENGTH = 1600  # ten concatenated GSM-7 parts; a code message is one or two
TEXT_KEY_PURPOSE = "sms-text"
_PURPOSE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,39}")

PROVIDER_SENDS = prometheus.counter(
    "sms_provider_sends_total",
    "Calls to SMS/voice providers, by provider, country, channel and outcome"
    " (accepted, error, timeout).",
    ("provider", "country", "channel", "outcome"),
)
DELIVERY_FAILURES = prometheus.counter(
    "sms_delivery_failures_total",
    "Messages that no provider accepted, by country and channel.",
    ("country", "channel"),
)
DELIVERY_REPORTS = prometheus.counter(
    "sms_delivery_reports_total",
    "Delivery reports received, by provider and resulting status (or 'ignored', 'forged').",
    ("provider", "status"),
)


class DeliveryFailed(ProviderError):
    """No provider accepted the message; the row is `failed`. `reasons` holds one fixed phrase
    per provider tried ("kannel: timeout"); `user_message` is for the person."""

    def __init__(self, message_id: str, reasons: Sequence[str]) -> None:
        super().__init__("every provider failed" if reasons else "no provider for this channel")
        self.message_id = message_id
        self.reasons = tuple(reasons)

    @property
    def user_message(self) -> Any:
        return lazy_gettext(
            "We could not send the message just now. Please try again in a few minutes."
        )


def country_of(e164: str) -> str:
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return "ZZ"
    return str(region) if region and len(region) == 2 else "ZZ"


@dataclass(frozen=True)
class Queued:
    """A message `Dispatcher.queue` added: its row, and the number and idempotency key that
    the row keeps only as hashes (`deliver` needs them)."""

    row: SmsMessage
    to: str
    idempotency_key: str

    def __repr__(self) -> str:  # no number in logs or tracebacks
        return f"Queued(row={self.row!r})"


class Dispatcher:
    """Sends through `providers` in order; see the module docstring."""

    def __init__(self, providers: Sequence[Provider], *, settings: Settings) -> None:
        self.providers: tuple[Provider, ...] = tuple(providers)
        self.settings = settings
        self._text_key = keyed_hmac(settings.derive_key(TEXT_KEY_PURPOSE))

    def provider(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    def _text_hmac(self, idempotency_key: str, text: str) -> str:
        data = idempotency_key.encode() + b"\x00" + text.encode()
        return self._text_key.hexdigest(data)

    def send(
        self,
        session: Session,
        *,
        to: str,
        channel: str,
        text: str,
        purpose: str,
        idempotency_key: str,
    ) -> SmsMessage:
        channel = _check_send(to=to, channel=channel, text=text, purpose=purpose,
                              idempotency_key=idempotency_key)
        # Bookkeeping in a session of our own on the same database, committed step by step:
        # the caller's transaction stays as it is, and none is open while a provider is called.
        with Session(bind=session.get_bind(), expire_on_commit=False) as own:
            row, claimed = self._claim(own, to=to, channel=channel, text=text, purpose=purpose,
                                       idempotency_key=idempotency_key)
            if not claimed:
                return row
            return self._deliver(own, Queued(row, to, idempotency_key), text)

    def queue(
        self,
        session: Session | sa.Connection,
        *,
        to: str,
        channel: str,
        text: str,
        purpose: str,
        idempotency_key: str,
        country: str | None = None,
    ) -> Queued:
        """Add a new `queued` row to the caller's transaction (not committed); the caller
        commits, then calls `deliver`. For a fresh idempotency key only: a key that was used
        before raises ValueError (use `send` to retry). `country`: the number's region when
        the caller parsed it already (`gateway.sms.phone.Phone.region`), else read here."""
        channel = _check_send(to=to, channel=channel, text=text, purpose=purpose,
                              idempotency_key=idempotency_key)
        values = self._new_values(to=to, channel=channel, text=text, purpose=purpose,
                                  idempotency_key=idempotency_key, country=country)
        if not self._insert(session, values):
            raise ValueError("idempotency key already used for another message")
        return Queued(as_loaded(SmsMessage, values), to, idempotency_key)

    def deliver(self, bind: Any, queued: Queued, text: str) -> SmsMessage:
        """Send what `queue` added and the caller committed (on the database `bind`, an
        engine); returns the row with its outcome, or raises DeliveryFailed."""
        expected = self._text_hmac(queued.idempotency_key, text)
        if not hmac.compare_digest(expected, queued.row.text_hmac):
            raise ValueError("deliver takes the text the message was queued with")
        # A plain connection: the bookkeeping below is a few Core statements.
        with bind.connect() as own:
            return self._deliver(own, queued, text)

    def _deliver(self, session: Session | sa.Connection, queued: Queued, text: str) -> SmsMessage:
        row = queued.row
        msg = OutgoingMessage(
            message_id=row.id, to=queued.to, channel=row.channel, text=text,
            idempotency_key=queued.idempotency_key, purpose=row.purpose,
        )
        channel = row.channel
        reasons: list[str] = []
        for provider in (p for p in self.providers if channel in p.channels):
            try:
                receipt = provider.send(msg)
            except ProviderError as exc:
                outcome = "timeout" if isinstance(exc, ProviderTimeout) else "error"
                reason = f"{provider.name}: {exc.reason}"
            except Exception as exc:  # a bug in one provider must not stop failover
                outcome = "error"
                reason = f"{provider.name}: internal error ({type(exc).__name__})"
                # The type only: an exception's message might quote the text or the number.
                log.error("sms provider %s raised %s (message %s)",
                          provider.name, type(exc).__name__, row.id)
            else:
                self._record_sent(session, row, provider.name, receipt.provider_message_id)
                PROVIDER_SENDS.labels(
                    provider=provider.name, country=row.country, channel=channel, outcome="accepted"
                ).inc()
                log.info("sms message %s accepted by %s", row.id, provider.name)
                return row
            reasons.append(reason)
            PROVIDER_SENDS.labels(
                provider=provider.name, country=row.country, channel=channel, outcome=outcome
            ).inc()
            log.warning("sms message %s not accepted: %s", row.id, reason)
            self._record_attempt(session, row, provider.name, reason)

        self._set_status(session, row.id, Status.FAILED, error=reasons[-1] if reasons else
                         f"no provider for {channel}")
        session.commit()
        DELIVERY_FAILURES.labels(country=row.country, channel=channel).inc()
        raise DeliveryFailed(row.id, reasons)

    # --- bookkeeping ---------------------------------------------------------------------

    def _find(self, session: Session, idempotency_hash: str) -> SmsMessage | None:
        return session.scalars(
            sa.select(SmsMessage).where(SmsMessage.idempotency_hash == idempotency_hash)
        ).one_or_none()

    def _new_values(
        self, *, to: str, channel: str, text: str, purpose: str, idempotency_key: str,
        country: str | None = None,
    ) -> dict[str, Any]:
        """The columns of a new `queued` row, every one set (for `_insert`, then `as_loaded`:
        a row not in any session)."""
        now = clock.now()
        return {
            "id": str(uuid.uuid4()),
            "to_hmac": phone_hmac(self.settings, to),
            "to_last2": to[-2:],
            "country": country if country is not None else country_of(to),
            "channel": channel,
            "purpose": purpose,
            "segments": 1 if channel == "voice" else segments(text).count,
            "idempotency_hash": key_hash(idempotency_key),
            "text_hmac": self._text_hmac(idempotency_key, text),
            "status": Status.QUEUED.value,
            "provider": None,
            "provider_message_id": None,
            "attempts": 0,
            "error": None,
            "created_at": now,
            "updated_at": now,
        }

    def _insert(self, session: Session | sa.Connection, values: dict[str, Any]) -> bool:
        """INSERT the row of `values` (`_new_values`) unless its idempotency key exists (one
        statement, no savepoint: a lost race for the key changes nothing in the caller's
        transaction). True when new."""
        conn = transaction_connection(session)
        return _INSERT[conn.dialect.name == "postgresql"].execute(conn, values).first() is not None

    def _claim(
        self, session: Session, *, to: str, channel: str, text: str, purpose: str,
        idempotency_key: str,
    ) -> tuple[SmsMessage, bool]:
        """(the row, committed; True when this call must send it, False when the row is to be
        returned as it is)."""
        now = clock.now()
        khash = key_hash(idempotency_key)
        text_hmac = self._text_hmac(idempotency_key, text)
        to_hmac = phone_hmac(self.settings, to)
        values = self._new_values(to=to, channel=channel, text=text, purpose=purpose,
                                  idempotency_key=idempotency_key)
        if self._insert(session, values):
            session.commit()
            return as_loaded(SmsMessage, values), True
        existing = self._find(session, khash)
        if existing is None:  # pragma: no cover - the key's row exists: the INSERT said so
            raise RuntimeError("sms message row vanished")
        if not (
            hmac.compare_digest(existing.text_hmac, text_hmac)
            and hmac.compare_digest(existing.to_hmac, to_hmac)
            and existing.channel == channel
        ):
            raise ValueError("idempotency key already used for another message")
        if existing.status == Status.FAILED:
            claimed = self._set_status(session, existing.id, Status.QUEUED)
        elif existing.status == Status.QUEUED and now - existing.updated_at >= IN_FLIGHT_LEASE:
            # Abandoned by a worker that died mid-send: take it over, once.
            claimed = _rowcount(session.execute(
                sa.update(SmsMessage)
                .where(SmsMessage.id == existing.id, SmsMessage.status == Status.QUEUED.value,
                       SmsMessage.updated_at == existing.updated_at)
                .values(updated_at=now)
            )) == 1
        else:
            claimed = False  # sent, delivered or undeliverable; or in flight elsewhere
        session.commit()
        session.refresh(existing)
        return existing, claimed

    def _set_status(
        self, session: Session | sa.Connection, message_id: str, new: Status, **values: Any
    ) -> bool:
        """Move to `new` only from a status it may replace (models.ALLOWED); True when moved."""
        result = session.execute(
            sa.update(SmsMessage)
            .where(SmsMessage.id == message_id,
                   SmsMessage.status.in_([s.value for s in ALLOWED[new]]))
            .values(status=new.value, updated_at=clock.now(), **values)
        )
        return _rowcount(result) == 1

    def _record_attempt(
        self, session: Session | sa.Connection, row: SmsMessage, provider: str, reason: str
    ) -> None:
        session.execute(
            sa.update(SmsMessage)
            .where(SmsMessage.id == row.id)
            .values(attempts=SmsMessage.attempts + 1, provider=provider, error=reason[:200],
                    updated_at=clock.now())
        )
        session.commit()

    def _record_sent(self, session: Session | sa.Connection, row: SmsMessage, provider: str,
                     provider_message_id: str | None) -> None:
        """One UPDATE records the provider and moves the status to `sent`, and `row` (not in
        any session) takes the values the database now holds."""
        now = clock.now()
        conn = transaction_connection(session)
        stored = _RECORD_SENT.execute(conn, {
            "b_id": row.id, "b_provider": provider,
            "b_provider_message_id": provider_message_id, "b_now": now,
        }).one_or_none()
        if stored is None:  # pragma: no cover - the row was committed before the send
            raise RuntimeError("sms message row vanished")
        session.commit()
        for name, value in (
            ("status", stored.status), ("attempts", stored.attempts), ("error", stored.error),
            ("provider", provider), ("provider_message_id", provider_message_id),
            ("updated_at", now),
        ):
            set_committed_value(row, name, value)

    # --- delivery reports ----------------------------------------------------------------

    def apply_report(
        self, session: Session, message_id: str, status: Status, provider: str
    ) -> bool:
        """Record a delivery report; False (and nothing changed) when the message is unknown or
        the report would move it backwards. The caller commits."""
        moved = self._set_status(session, message_id, status)
        outcome = status.value if moved else "ignored"
        DELIVERY_REPORTS.labels(provider=provider, status=outcome).inc()
        return moved


_TABLE: sa.Table = SmsMessage.__table__  # type: ignore[assignment]
_COLUMNS = tuple(_TABLE.columns)

# The statements of every send, built and compiled once (building and caching them per call
# costs more CPU than the database spends on them) and sent to the driver in the caller's
# transaction (gateway.db.Prepared).
#: A new row unless its idempotency key exists; by `postgresql` (True) or SQLite (False).
_INSERT: dict[bool, Prepared] = {
    pg: Prepared(
        (postgresql.insert if pg else sqlite.insert)(_TABLE)
        .values({column.key: sa.bindparam(column.key) for column in _COLUMNS})
        .on_conflict_do_nothing(index_elements=["idempotency_hash"])
        .returning(_TABLE.c.id)
    )
    for pg in (True, False)
}
#: A delivery report may already have arrived (Kannel's come within milliseconds): `sent`
#: never overwrites `delivered`.
_RECORD_SENT = Prepared(
    sa.update(_TABLE)
    .where(_TABLE.c.id == sa.bindparam("b_id"))
    .values(
        attempts=_TABLE.c.attempts + 1,
        provider=sa.bindparam("b_provider"),
        provider_message_id=sa.bindparam("b_provider_message_id"),
        updated_at=sa.bindparam("b_now", type_=UTCDateTime()),
        status=sa.case(
            # Comparisons, not IN (...): a list would be rendered at every execution.
            (sa.or_(*(_TABLE.c.status == s.value for s in sorted(ALLOWED[Status.SENT]))),
             Status.SENT.value),
            else_=_TABLE.c.status,
        ),
    )
    .returning(_TABLE.c.status, _TABLE.c.attempts, _TABLE.c.error)
)
def _check_send(
    *, to: str, channel: str, text: str, purpose: str, idempotency_key: str
) -> str:
    channel = str(getattr(channel, "value", channel))
    if channel not in CHANNELS:
        raise ValueError("channel must be 'sms' or 'voice'")
    if not isinstance(to, str) or not E164.fullmatch(to):
        raise ValueError("to must be an E.164 number")
    if not _PURPOSE.fullmatch(purpose):
        raise ValueError("purpose must be a short machine name")
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
        raise ValueError(f"idempotency_key must be 1 to {MAX_KEY_LENGTH} characters")
    if not text or len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"text must be 1 to {MAX_TEXT_LENGTH} characters")
    return channel


def _rowcount(result: sa.Result[Any]) -> int:
    count: int = result.rowcount  # type: ignore[attr-defined]  # a CursorResult for UPDATE
    return count


def init_app(app: Flask, settings: Settings, timeouts: Timeouts | None = None) -> Dispatcher:
    """Build the providers (parsing their variables: SettingsError stops start-up) and the
    app's dispatcher."""
    dispatcher = Dispatcher(build_providers(settings, timeouts), settings=settings)
    app.extensions[EXTENSION] = dispatcher
    return dispatcher


def get_dispatcher(app: Flask | None = None) -> Dispatcher:
    dispatcher: Dispatcher = (app or current_app).extensions[EXTENSION]
    return dispatcher
