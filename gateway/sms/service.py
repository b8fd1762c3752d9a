"""Sending and checking one-time codes: the one entry point flows use (issue 3).

`send_code` runs the steps in an order that matters:

1. phone policy (`gateway.sms.phone`): a number that may not receive codes is refused;
2. abuse limits (`gateway.sms.limits`): counted and possibly refused BEFORE any provider is
   called, so a refused request costs nothing;
3. a new code (`gateway.sms.codes`), which ends the previous one;
4. the text (`gateway.sms.messages`) in the person's language, with the WebOTP line;
5. the dispatcher (`gateway.sms.dispatch`): the code and its `queued` message row are committed
   in ONE transaction before any provider is called, then the dispatcher fails over between
   providers. Its idempotency key is derived from the code row, so a retry through another
   provider carries the SAME code: a person never holds two different codes from one request,
   whichever provider delivered.

Errors a caller can show to the person (each has a `.message` in Dutch and English):
`PhoneRejected`, `LimitExceeded`, `SendingUnavailable` (limits store down, or every provider
failed). Anything else is a bug and propagates.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from flask import Flask, current_app
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from gateway import metrics as prometheus
from gateway.db import Database, get_db
from gateway.settings import Settings
from gateway.sms import codes
from gateway.sms.codes import VerifyOutcome
from gateway.sms.dispatch import DeliveryFailed
from gateway.sms.limits import AbuseLimiter, LimitExceeded, LimitMetrics, SendingUnavailable
from gateway.sms.messages import (
    code_message,
    code_message_segments,
    host_of,
    message_language,
    segments,
)
from gateway.sms.phone import Channel, Phone, PhoneRejected, parse_phone
from gateway.sms.policy import SmsPolicy
from gateway.sms.purposes import Purpose
from gateway.store import SharedStore

__all__ = [
    "LimitExceeded",
    "PhoneRejected",
    "SendingUnavailable",
    "SentCode",
    "SmsService",
    "VerifyOutcome",
    "get_sms_service",
    "init_app",
]

log = logging.getLogger(__name__)

EXTENSION = "gateway.sms"

#: A voice call counts as one unit of the country budget (which is in SMS segments).
VOICE_CALL_UNITS = 1

#: Codes handed to the providers, by outcome ("sent" or "failed"); refusals are in
#: sms_blocked_total (gateway.sms.limits).
SMS_CODES = prometheus.counter(
    "sms_codes_total",
    "One-time codes handed to the SMS/voice providers, by outcome.",
    ("purpose", "channel", "country", "outcome"),
)


class Dispatcher(Protocol):
    """What the service and its users need of `gateway.sms.dispatch.Dispatcher`: `queue` adds
    the message to the caller's transaction; after the commit `deliver` sends it, committing
    its own bookkeeping, and raises `DeliveryFailed` when no provider accepted the message."""

    def queue(
        self,
        session: Session | Connection,
        *,
        to: str,
        channel: str,
        text: str,
        purpose: str,
        idempotency_key: str,
        country: str | None = None,
    ) -> Any: ...

    def deliver(self, bind: Any, queued: Any, text: str) -> Any: ...

    def send(
        self,
        session: Session,
        *,
        to: str,
        channel: str,
        text: str,
        purpose: str,
        idempotency_key: str,
    ) -> Any:
        """`queue` and `deliver` in one call, bookkeeping in transactions of its own (for
        messages that are not codes: the desk's application code)."""
        ...


@dataclass(frozen=True)
class SentCode:
    message_id: str
    channel: Channel
    expires_at: datetime


class SmsService:
    """Phone policy, limits, codes and dispatch for one app (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        policy: SmsPolicy,
        database: Database,
        store: SharedStore,
        dispatcher: Dispatcher,
        limit_metrics: LimitMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.database = database
        self.dispatcher = dispatcher
        self.limiter = AbuseLimiter(store, policy, settings, limit_metrics)
        self.issuer_host = host_of(settings.issuer)

    @property
    def code_ttl(self) -> timedelta:
        return timedelta(seconds=self.policy.code_ttl_seconds)

    def send_code(
        self,
        *,
        purpose: Purpose | str,
        flow_id: str,
        phone: Phone | str,
        language: str,
        account_id: str | int | None = None,
        ip: str | None = None,
        session: Session | None = None,
    ) -> SentCode:
        """Send a new code for `purpose` and `flow_id` to `phone`; see the module docstring.

        `session`: the caller's open transaction, which the code and its message row join;
        it is committed, with whatever else the caller wrote in it (a flow's move), before
        any provider is called. When the limits or the phone policy refuse, nothing is
        written and nothing committed: the caller decides. Without it the rows are committed
        in a transaction of their own.

        Raises PhoneRejected, LimitExceeded or SendingUnavailable.
        """
        purpose = Purpose(purpose)
        # A bad flow id is a bug: refuse it before it costs any budget.
        codes.check_binding(purpose.value, flow_id)
        # A Phone parsed earlier is checked again: the policy may have changed since.
        target = parse_phone(phone.e164 if isinstance(phone, Phone) else phone, self.policy)
        language = message_language(language)
        ttl_minutes = math.ceil(self.policy.code_ttl_seconds / 60)

        def text_for(code: str) -> str:
            return code_message(
                code=code,
                purpose=purpose,
                language=language,
                issuer_host=self.issuer_host,
                channel=target.channel,
                ttl_minutes=ttl_minutes,
            )

        # Every code has the same length, so a placeholder gives the billed size before a
        # real code exists.
        units = (
            VOICE_CALL_UNITS
            if target.channel is Channel.VOICE
            else code_message_segments(
                digits=codes.CODE_DIGITS,
                purpose=purpose,
                language=language,
                issuer_host=self.issuer_host,
                channel=target.channel,
                ttl_minutes=ttl_minutes,
            )
        )
        self.limiter.check_and_count(
            e164=target.e164,
            region=target.region,
            account_id=account_id,
            ip=ip,
            segments=units,
            flow_key=f"{purpose.value}|{flow_id}",
        )

        # The code and its message row, committed together before any provider is called: a
        # provider may deliver even when it then times out, and the code it delivered must be
        # the one that verifies; a crash leaves the row to say so. (A plain connection: these
        # are a few Core statements.)
        with contextlib.ExitStack() as stack:
            conn = (
                session.connection() if session is not None
                else stack.enter_context(self.database.engine.begin())
            )
            issued = codes.issue_code(
                conn, self.settings, purpose=purpose.value, flow_id=flow_id, ttl=self.code_ttl
            )
            text = text_for(issued.code)
            queued = self.dispatcher.queue(
                conn,
                to=target.e164,
                channel=target.channel,
                text=text,
                purpose=purpose.value,
                idempotency_key=f"otp:{issued.id}",
                country=target.region,
            )
            if session is not None:
                session.commit()

        labels = {
            "purpose": purpose.value,
            "channel": target.channel.value,
            "country": target.region,
        }
        try:
            message = self.dispatcher.deliver(self.database.engine, queued, text)
            message_id = str(message.id)
        except DISPATCH_FAILURES as exc:
            SMS_CODES.labels(**labels, outcome="failed").inc()
            log.warning("sms code not sent: every provider failed (%s)", type(exc).__name__)
            raise SendingUnavailable("every provider failed") from None
        SMS_CODES.labels(**labels, outcome="sent").inc()
        return SentCode(message_id=message_id, channel=target.channel, expires_at=issued.expires_at)

    def count_message(
        self,
        *,
        phone: Phone,
        text: str,
        account_id: str | int | None = None,
        ip: str | None = None,
    ) -> None:
        """Count a message that is not a one-time code (a desk's activation code, a notice to
        an old number) against the same abuse limits, before it is handed to the dispatcher:
        every paid SMS or call is a pumping target, whoever triggers it.

        Raises LimitExceeded (nothing counted) or SendingUnavailable (limits store down).
        """
        units = VOICE_CALL_UNITS if phone.channel is Channel.VOICE else segments(text).count
        self.limiter.check_and_count(
            e164=phone.e164, region=phone.region, account_id=account_id, ip=ip, segments=units,
        )

    def verify_code(
        self, *, purpose: Purpose | str, flow_id: str, code: object,
        session: Session | None = None,
    ) -> VerifyOutcome:
        """Check a code a person typed. The attempt is committed whatever the outcome: in a
        transaction of its own, or, with `session`, in the caller's open transaction, which
        the caller then MUST commit whatever the outcome (so that what a right code unlocks
        is written in the same transaction that spends it)."""
        purpose = Purpose(purpose)
        if session is not None:
            return codes.verify(
                session.connection(), self.settings, purpose=purpose.value, flow_id=flow_id,
                code=code, max_attempts=self.policy.code_max_attempts,
            )
        with self.database.engine.begin() as conn:
            return codes.verify(
                conn,
                self.settings,
                purpose=purpose.value,
                flow_id=flow_id,
                code=code,
                max_attempts=self.policy.code_max_attempts,
            )


#: Errors of the dispatcher that mean "nothing could be sent".
DISPATCH_FAILURES: tuple[type[Exception], ...] = (DeliveryFailed,)


def init_app(app: Flask, settings: Settings, dispatcher: Dispatcher | None = None) -> SmsService:
    """Build the app's SmsService; needs the database, the store and the dispatcher."""
    from gateway.app import get_policies
    from gateway.store import get_store

    service = SmsService(
        settings=settings,
        policy=get_policies(app).sms,
        database=get_db(app),
        store=get_store(app),
        dispatcher=dispatcher or _app_dispatcher(app),
    )
    app.extensions[EXTENSION] = service
    return service


def get_sms_service(app: Flask | None = None) -> SmsService:
    service: SmsService = (app or current_app).extensions[EXTENSION]
    return service


def _app_dispatcher(app: Flask) -> Dispatcher:
    from gateway.sms.dispatch import get_dispatcher

    return get_dispatcher(app)
