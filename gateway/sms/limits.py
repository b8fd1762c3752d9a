"""Abuse limits on sending codes: SMS pumping and toll fraud (issue 3, item 5).

Every send is checked and counted here BEFORE a provider is called. Limits, from
`policies/sms.yaml` (`gateway.sms.policy.SmsPolicy`):

- resend_too_soon: one code per flow (purpose + flow) per `resend_min_interval_seconds`;
- per_number, per_account, per_ip: messages per hour and per day (an IPv6 address counts by
  its /64, the smallest block one subscriber gets, so an attacker cannot walk one prefix);
- number_range_velocity: distinct numbers that share a prefix (the E.164 number without its last
  `digits_dropped` digits) per `window_minutes`, the pattern of pumping through a number range;
- country_budget: SMS segments per destination country per hour and per day, with a circuit
  breaker: once a budget is spent the country refuses every send until that window ends, and
  `sms_country_circuit_trips_total` rises so an operator is alerted.

Windows. Counts live in the shared store (Redis or the database, `gateway.store`) in buckets
aligned to the window (UTC hours, UTC days, ...). A limit reads the current bucket and the
previous one and weighs the previous by the part of it still inside the rolling window (the
"sliding window counter"): close to the rolling windows the policy promises, with two store
calls per limit, and without the doubled burst a plain fixed window allows at its edge.

Race-free without locks: each limit first INCREMENTS its counter atomically and then compares
the new value with the limit, so two parallel requests can never both see room that only one of
them has. A refusal undoes every increment this request made (atomic decrements), so a refused
send consumes no budget; under heavy contention a request may be refused when a parallel one
that was itself refused is still undoing, never the other way round (fail closed).

Store keys carry no phone number, IP address or account id in clear: those are HMAC-SHA256 with
`settings.derive_key("limits")`. The country (ISO 3166-1 alpha-2) is kept as is: it is an
aggregate, and operators need it. When the store cannot be reached nothing is sent
(`SendingUnavailable`: fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from flask_babel.speaklater import LazyString

from gateway import clock
from gateway import metrics as prometheus
from gateway.i18n import gettext, ngettext
from gateway.settings import Settings
from gateway.sms.policy import HourDay, SmsPolicy
from gateway.store import SharedStore, StoreUnavailable

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: Buckets outlive their window by this much, so clocks a little apart never read a bucket
#: that another instance already let expire.
_GRACE = timedelta(minutes=5)
#: Store keys: "sms:" + kind + ":" + HMAC (hex, 128 bits is plenty to avoid collisions).
_KEY_HEX = 32
#: Prefix length of an IPv6 address that one subscriber controls (RFC 6177 assigns /64 and up).
IPV6_SUBSCRIBER_PREFIX = 64
#: The `reason` label of a send refused because the limits store is down.
STORE_UNAVAILABLE = "store_unavailable"


class LimitReason(StrEnum):
    PER_NUMBER = "per_number"
    PER_ACCOUNT = "per_account"
    PER_IP = "per_ip"
    NUMBER_RANGE_VELOCITY = "number_range_velocity"
    COUNTRY_BUDGET = "country_budget"
    RESEND_TOO_SOON = "resend_too_soon"


class LimitExceeded(Exception):
    """A limit refuses this send. `str()` is the reason only (no personal data in logs)."""

    def __init__(self, reason: LimitReason, retry_after_seconds: int) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.retry_after_seconds = max(1, int(retry_after_seconds))

    @property
    def message(self) -> LazyString:
        """What happened and when to try again, for the person (Dutch or English)."""
        return LazyString(_limit_message, self.reason, self.retry_after_seconds)


class SendingUnavailable(Exception):
    """No code can be sent now: the limits store is down or every provider failed."""

    @property
    def message(self) -> LazyString:
        return LazyString(
            gettext,
            "We cannot send you a code right now. No code was sent. "
            "Please try again in a few minutes.",
        )


def _text(singular: str, plural: str, num: int) -> str:
    return str(ngettext(singular, plural, num))


def _limit_message(reason: LimitReason, seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    hours = math.ceil(seconds / 3600)
    if reason is LimitReason.RESEND_TOO_SOON:
        return _text(
            "A code was sent a moment ago. Wait %(num)d second before you ask for a new one.",
            "A code was sent a moment ago. Wait %(num)d seconds before you ask for a new one.",
            seconds,
        )
    if reason is LimitReason.COUNTRY_BUDGET:
        if minutes <= 90:
            return _text(
                "We cannot send codes to phones in this country for the moment. "
                "Try again in %(num)d minute.",
                "We cannot send codes to phones in this country for the moment. "
                "Try again in %(num)d minutes.",
                minutes,
            )
        return _text(
            "We cannot send codes to phones in this country for the moment. "
            "Try again in %(num)d hour.",
            "We cannot send codes to phones in this country for the moment. "
            "Try again in %(num)d hours.",
            hours,
        )
    # The other limits share one message: which one refused tells an attacker what to vary.
    if minutes <= 90:
        return _text(
            "Too many codes have been asked for. Try again in %(num)d minute.",
            "Too many codes have been asked for. Try again in %(num)d minutes.",
            minutes,
        )
    return _text(
        "Too many codes have been asked for. Try again in %(num)d hour.",
        "Too many codes have been asked for. Try again in %(num)d hours.",
        hours,
    )


class LimitMetrics(Protocol):
    """Where the limiter reports refusals (Prometheus in the app, a recorder in tests)."""

    def blocked(self, reason: str, country: str) -> None:
        """`reason` is a `LimitReason` value or STORE_UNAVAILABLE."""

    def circuit_opened(self, country: str, window: str) -> None: ...


#: Sends refused by a limit, by reason (a LimitReason or STORE_UNAVAILABLE) and country.
SMS_BLOCKED = prometheus.counter(
    "sms_blocked_total", "Code messages refused before sending.", ("reason", "country")
)
#: Alert on any increase: a country's budget is spent and its circuit breaker is open.
SMS_CIRCUIT_TRIPS = prometheus.counter(
    "sms_country_circuit_trips_total",
    "Country SMS budgets spent: the circuit breaker opened for the rest of the window.",
    ("country", "window"),
)


class PrometheusLimitMetrics:
    def blocked(self, reason: str, country: str) -> None:
        SMS_BLOCKED.labels(reason=reason, country=country).inc()

    def circuit_opened(self, country: str, window: str) -> None:
        SMS_CIRCUIT_TRIPS.labels(country=country, window=window).inc()


class NullLimitMetrics:
    def blocked(self, reason: str, country: str) -> None:
        return None

    def circuit_opened(self, country: str, window: str) -> None:
        return None


@dataclass(frozen=True)
class _Window:
    name: str
    length: timedelta

    def position(self, now: datetime) -> tuple[int, float]:
        """(bucket index, fraction of the bucket already past)."""
        seconds = self.length.total_seconds()
        stamp = now.timestamp()
        index = math.floor(stamp / seconds)
        return index, (stamp - index * seconds) / seconds

    def remaining(self, now: datetime) -> float:
        _index, fraction = self.position(now)
        return (1.0 - fraction) * self.length.total_seconds()

    def bucket_ttl(self, now: datetime) -> timedelta:
        # A bucket is read as "previous" during the next window too.
        return timedelta(seconds=self.remaining(now)) + self.length + _GRACE


class _Refused(Exception):
    def __init__(self, reason: LimitReason, retry_after: float) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.retry_after = retry_after


class AbuseLimiter:
    """Check and count one send against every limit, or refuse it without counting it.

    Example::

        limiter = AbuseLimiter(get_store(app), get_policies(app).sms, get_settings(app))
        limiter.check_and_count(e164="+31612345678", region="NL", account_id=None,
                                ip="192.0.2.1", segments=1, flow_key="login|flow-1")
    """

    def __init__(
        self,
        store: SharedStore,
        policy: SmsPolicy,
        settings: Settings,
        metrics: LimitMetrics | None = None,
    ) -> None:
        # `metrics` defaults to Prometheus (`/metrics`); tests pass a recorder.
        self.store = store
        self.policy = policy
        self.metrics: LimitMetrics = metrics or PrometheusLimitMetrics()
        self._key = settings.derive_key("limits")

    # -- public --

    def check_and_count(
        self,
        *,
        e164: str,
        region: str,
        account_id: str | int | None,
        ip: str | None,
        segments: int,
        flow_key: str | None = None,
    ) -> None:
        """Count this send against every limit; raise `LimitExceeded` (nothing counted) or
        `SendingUnavailable` (store down). `segments` is what the message will be billed as;
        `flow_key` (purpose and flow) enables the resend interval."""
        if segments < 1:
            raise ValueError("segments must be at least 1")
        country = (
            region.upper() if len(region) == 2 and region.isascii() and region.isalpha() else "ZZ"
        )
        now = clock.now()
        undo: list[Callable[[], None]] = []
        try:
            self._check_breakers(country, now)
            if flow_key is not None:
                self._resend(flow_key, now, undo)
            p = self.policy
            self._hour_day(LimitReason.PER_NUMBER, "n", e164, p.per_number, 1, now, undo)
            if account_id is not None:
                account = str(account_id)
                self._hour_day(LimitReason.PER_ACCOUNT, "a", account, p.per_account, 1, now, undo)
            if ip is not None:
                self._hour_day(LimitReason.PER_IP, "i", _ip_block(ip), p.per_ip, 1, now, undo)
            self._prefix_velocity(e164, now, undo)
            self._country_budget(country, segments, now, undo)
        except _Refused as refused:
            self._rollback(undo)
            self.metrics.blocked(refused.reason, country)
            raise LimitExceeded(refused.reason, math.ceil(refused.retry_after)) from None
        except StoreUnavailable:
            self._rollback(undo)
            self.metrics.blocked(STORE_UNAVAILABLE, country)
            raise SendingUnavailable("limits store unavailable") from None

    # -- the limits --

    def _check_breakers(self, country: str, now: datetime) -> None:
        for window in (_Window("hour", HOUR), _Window("day", DAY)):
            index, _ = window.position(now)
            if self.store.count(f"sms:cb:{window.name}:{country}:{index}") > 0:
                raise _Refused(LimitReason.COUNTRY_BUDGET, window.remaining(now))

    def _resend(self, flow_key: str, now: datetime, undo: list[Callable[[], None]]) -> None:
        interval = timedelta(seconds=self.policy.resend_min_interval_seconds)
        key = f"sms:r:{self._hash(flow_key)}"
        if not self.store.add_once(key, interval):
            sent = self.store.get(key + ":at")
            try:
                waited = now.timestamp() - float(sent.decode()) if sent else 0.0
            except ValueError:
                waited = 0.0
            raise _Refused(LimitReason.RESEND_TOO_SOON, interval.total_seconds() - max(0.0, waited))
        undo.append(lambda: self.store.delete(key))
        # Only for telling the person how long to wait; the add_once above is the decision.
        self.store.set(key + ":at", str(now.timestamp()).encode(), interval)

    def _hour_day(
        self,
        reason: LimitReason,
        kind: str,
        value: str,
        limits: HourDay,
        amount: int,
        now: datetime,
        undo: list[Callable[[], None]],
    ) -> None:
        base = f"sms:{kind}:{self._hash(value)}"
        self._sliding(reason, base, _Window("hour", HOUR), limits.hour, amount, now, undo)
        self._sliding(reason, base, _Window("day", DAY), limits.day, amount, now, undo)

    def _prefix_velocity(self, e164: str, now: datetime, undo: list[Callable[[], None]]) -> None:
        rule = self.policy.per_prefix
        prefix = e164[: -rule.digits_dropped]
        window = _Window("prefix", timedelta(minutes=rule.window_minutes))
        index, _ = window.position(now)
        base = f"sms:pv:{self._hash(prefix)}"
        member = f"{base}:m:{self._hash(e164)}:{index}"
        if not self.store.add_once(member, window.bucket_ttl(now)):
            return  # this number is already counted in this window's distinct numbers
        undo.append(lambda: self.store.delete(member))
        self._sliding(
            LimitReason.NUMBER_RANGE_VELOCITY, base, window, rule.max_distinct_numbers, 1, now, undo
        )

    def _country_budget(
        self, country: str, segments: int, now: datetime, undo: list[Callable[[], None]]
    ) -> None:
        budget = self.policy.country_budgets.for_region(country)
        for window, limit in (
            (_Window("hour", HOUR), budget.hour),
            (_Window("day", DAY), budget.day),
        ):
            try:
                self._sliding(
                    LimitReason.COUNTRY_BUDGET,
                    f"sms:c:{country}",
                    window,
                    limit,
                    segments,
                    now,
                    undo,
                )
            except _Refused:
                self._trip(country, window, now)
                raise _Refused(LimitReason.COUNTRY_BUDGET, window.remaining(now)) from None

    def _trip(self, country: str, window: _Window, now: datetime) -> None:
        index, _ = window.position(now)
        ttl = timedelta(seconds=max(1.0, window.remaining(now)))
        if self.store.incr(f"sms:cb:{window.name}:{country}:{index}", ttl) == 1:
            # Alert once per country and window, however many instances see the trip.
            log.warning("sms country circuit open: country=%s window=%s", country, window.name)
            self.metrics.circuit_opened(country, window.name)

    # -- mechanics --

    def _sliding(
        self,
        reason: LimitReason,
        base: str,
        window: _Window,
        limit: int,
        amount: int,
        now: datetime,
        undo: list[Callable[[], None]],
    ) -> None:
        index, fraction = window.position(now)
        current = f"{base}:{window.name}:{index}"
        ttl = window.bucket_ttl(now)
        total = self.store.incr(current, ttl, amount)
        undo.append(lambda: _discard(self.store.incr(current, ttl, -amount)))
        previous = self.store.count(f"{base}:{window.name}:{index - 1}")
        if previous * (1.0 - fraction) + total > limit:
            seconds = window.length.total_seconds()
            raise _Refused(
                reason, _retry_after(previous, total - amount, amount, limit, fraction, seconds)
            )

    def _rollback(self, undo: list[Callable[[], None]]) -> None:
        for step in reversed(undo):
            try:
                step()
            except StoreUnavailable:
                # The store went away mid-way: what stays counted errs on the safe side.
                log.warning("sms limits: could not undo a count (store unavailable)")
                return

    def _hash(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:_KEY_HEX]


def _discard(_value: int) -> None:
    return None


def _ip_block(ip: str) -> str:
    """The address, or for IPv6 its /64: what one subscriber can vary freely counts once."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return "raw:" + ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_SUBSCRIBER_PREFIX), strict=False)
        return str(network)
    return str(address)


def _retry_after(
    previous: int, before: int, amount: int, limit: int, fraction: float, seconds: float
) -> float:
    """Seconds until `amount` more fits under `limit` in the sliding window, when nothing else
    is sent meanwhile. `before` is the current bucket's count without this send."""
    room = limit - before - amount
    if room >= 0 and previous > 0:
        # The previous bucket's weight (1 - f) must fall to room / previous.
        needed = 1.0 - room / previous
        return max(1.0, (needed - fraction) * seconds)
    rest_of_bucket = (1.0 - fraction) * seconds
    if limit < amount:
        return rest_of_bucket + seconds  # never fits; ask again after the window has passed
    # Next bucket: this bucket becomes the previous one and must weigh at most limit - amount.
    needed = 1.0 - (limit - amount) / before if before > 0 else 0.0
    return max(1.0, rest_of_bucket + max(0.0, needed) * seconds)
