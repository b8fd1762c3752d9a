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
"sliding window counter"): close to the rolling windows the policy promises, and without the
doubled burst a plain fixed window allows at its edge.

One store step per send: every counter of every limit is incremented, and every previous
bucket and breaker read, in one `SharedStore.run` (one Lua script in Redis, atomic as a whole;
one transaction in the database), and the limits are then decided from its results in the
order above. A send that a limit refuses is undone in one more step.

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
from gateway.sms.keyed import keyed_hmac
from gateway.sms.policy import HourDay, SmsPolicy
from gateway.store import (
    AddOnce,
    Count,
    Delete,
    Get,
    Incr,
    Op,
    Result,
    Set,
    SharedStore,
    StoreUnavailable,
)

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


_HOUR_WINDOW = _Window("hour", HOUR)
_DAY_WINDOW = _Window("day", DAY)
_HOUR_DAY = (_HOUR_WINDOW, _DAY_WINDOW)


class _Refused:
    """A limit's refusal; `window` is set for a country budget (its breaker trips)."""

    def __init__(
        self, reason: LimitReason, retry_after: float, window: _Window | None = None
    ) -> None:
        self.reason = reason
        self.retry_after = retry_after
        self.window = window


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
        self._key = keyed_hmac(settings.derive_key("limits"))

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
        plan = _Plan(now)
        checks = self._plan(plan, e164, country, account_id, ip, segments, flow_key, now)
        try:
            results = self.store.run(plan.ops)
        except StoreUnavailable:
            self.metrics.blocked(STORE_UNAVAILABLE, country)
            raise SendingUnavailable("limits store unavailable") from None
        refused = next((r for r in (check(results) for check in checks) if r is not None), None)
        if refused is None:
            return
        self._undo(plan, results)
        if refused.reason is LimitReason.COUNTRY_BUDGET and refused.window is not None:
            self._trip(country, refused.window, now)
        self.metrics.blocked(refused.reason, country)
        raise LimitExceeded(refused.reason, math.ceil(refused.retry_after)) from None

    # -- the limits --

    def _plan(
        self,
        plan: _Plan,
        e164: str,
        country: str,
        account_id: str | int | None,
        ip: str | None,
        segments: int,
        flow_key: str | None,
        now: datetime,
    ) -> list[_Check]:
        """The store operations of every limit (added to `plan`) and, in the order the limits
        are decided, one check per limit that reads their results."""
        checks = [self._breakers(plan, country, now)]
        if flow_key is not None:
            checks.append(self._resend(plan, flow_key, now))
        p = self.policy
        checks += self._hour_day(plan, LimitReason.PER_NUMBER, "n", e164, p.per_number, now)
        if account_id is not None:
            account = str(account_id)
            checks += self._hour_day(plan, LimitReason.PER_ACCOUNT, "a", account, p.per_account,
                                     now)
        if ip is not None:
            checks += self._hour_day(plan, LimitReason.PER_IP, "i", _ip_block(ip), p.per_ip, now)
        checks.append(self._prefix_velocity(plan, e164, now))
        checks += self._country_budget(plan, country, segments, now)
        return checks

    def _breakers(self, plan: _Plan, country: str, now: datetime) -> _Check:
        windows = _HOUR_DAY
        reads = [plan.add(Count(f"sms:cb:{w.name}:{country}:{plan.at(w)[0]}")) for w in windows]

        def check(results: list[Result]) -> _Refused | None:
            for window, i in zip(windows, reads, strict=True):
                if _int(results[i]) > 0:
                    return _Refused(LimitReason.COUNTRY_BUDGET, window.remaining(now))
            return None

        return check

    def _resend(self, plan: _Plan, flow_key: str, now: datetime) -> _Check:
        interval = timedelta(seconds=self.policy.resend_min_interval_seconds)
        key = f"sms:r:{self._hash(flow_key)}"
        marker = plan.add(AddOnce(key, interval))
        sent_at = plan.add(Get(key + ":at"))
        # Only for telling the person how long to wait; the AddOnce above is the decision.
        plan.add(Set(key + ":at", str(now.timestamp()).encode(), interval, only_if=marker))

        def check(results: list[Result]) -> _Refused | None:
            if results[marker]:
                return None
            sent = results[sent_at]
            try:
                waited = now.timestamp() - float(sent.decode()) if isinstance(sent, bytes) else 0.0
            except ValueError:
                waited = 0.0
            wait = interval.total_seconds() - max(0.0, waited)
            return _Refused(LimitReason.RESEND_TOO_SOON, wait)

        return check

    def _hour_day(
        self,
        plan: _Plan,
        reason: LimitReason,
        kind: str,
        value: str,
        limits: HourDay,
        now: datetime,
    ) -> list[_Check]:
        base = f"sms:{kind}:{self._hash(value)}"
        return [
            self._sliding(plan, reason, base, _HOUR_WINDOW, limits.hour, 1, now),
            self._sliding(plan, reason, base, _DAY_WINDOW, limits.day, 1, now),
        ]

    def _prefix_velocity(self, plan: _Plan, e164: str, now: datetime) -> _Check:
        rule = self.policy.per_prefix
        prefix = e164[: -rule.digits_dropped]
        window = _Window("prefix", timedelta(minutes=rule.window_minutes))
        index, _, ttl = plan.at(window)
        base = f"sms:pv:{self._hash(prefix)}"
        member = f"{base}:m:{self._hash(e164)}:{index}"
        # A number already counted in this window's distinct numbers is not counted again
        # (its counter increment is skipped, and so is the check).
        new_number = plan.add(AddOnce(member, ttl))
        return self._sliding(
            plan, LimitReason.NUMBER_RANGE_VELOCITY, base, window, rule.max_distinct_numbers, 1,
            now, only_if=new_number,
        )

    def _country_budget(
        self, plan: _Plan, country: str, segments: int, now: datetime
    ) -> list[_Check]:
        budget = self.policy.country_budgets.for_region(country)
        checks = []
        for window, limit in ((_HOUR_WINDOW, budget.hour), (_DAY_WINDOW, budget.day)):
            checks.append(self._sliding(
                plan, LimitReason.COUNTRY_BUDGET, f"sms:c:{country}", window, limit, segments,
                now, breaker=True,
            ))
        return checks

    def _trip(self, country: str, window: _Window, now: datetime) -> None:
        index, _ = window.position(now)
        ttl = timedelta(seconds=max(1.0, window.remaining(now)))
        try:
            tripped = self.store.incr(f"sms:cb:{window.name}:{country}:{index}", ttl) == 1
        except StoreUnavailable:
            # The budget's own counters still refuse every send until the window ends.
            log.warning("sms country circuit could not be recorded (store unavailable)")
            return
        if tripped:
            # Alert once per country and window, however many instances see the trip.
            log.warning("sms country circuit open: country=%s window=%s", country, window.name)
            self.metrics.circuit_opened(country, window.name)

    # -- mechanics --

    def _sliding(
        self,
        plan: _Plan,
        reason: LimitReason,
        base: str,
        window: _Window,
        limit: int,
        amount: int,
        now: datetime,
        *,
        only_if: int | None = None,
        breaker: bool = False,
    ) -> _Check:
        index, fraction, ttl = plan.at(window)
        current = plan.add(Incr(f"{base}:{window.name}:{index}", ttl, amount, only_if=only_if))
        previous = plan.add(Count(f"{base}:{window.name}:{index - 1}"))

        def check(results: list[Result]) -> _Refused | None:
            total = results[current]
            if total is None:
                return None  # skipped (see only_if)
            prev = _int(results[previous])
            if prev * (1.0 - fraction) + _int(total) <= limit:
                return None
            if breaker:
                # The breaker opens: the country refuses every send until the window ends.
                return _Refused(reason, window.remaining(now), window)
            seconds = window.length.total_seconds()
            return _Refused(
                reason, _retry_after(prev, _int(total) - amount, amount, limit, fraction, seconds)
            )

        return check

    def _undo(self, plan: _Plan, results: list[Result]) -> None:
        """Take back what this send counted: every increment made, every marker it set (in
        one store step)."""
        undo: list[Op] = []
        for op, result in zip(plan.ops, results, strict=True):
            if isinstance(op, Incr) and result is not None:
                undo.append(Incr(op.key, op.ttl, -op.amount))
            elif isinstance(op, AddOnce) and result:
                undo.append(Delete(op.key))
        try:
            self.store.run(undo)
        except StoreUnavailable:
            # The store went away mid-way: what stays counted errs on the safe side.
            log.warning("sms limits: could not undo a count (store unavailable)")

    def _hash(self, value: str) -> str:
        return self._key.hexdigest(value.encode())[:_KEY_HEX]


class _Plan:
    """The store operations of one check, run as one step (`SharedStore.run`), and where
    `now` falls in each window (computed once per window: every limit shares them)."""

    def __init__(self, now: datetime) -> None:
        self.ops: list[Op] = []
        self.now = now
        self._at: dict[str, tuple[int, float, timedelta]] = {}

    def add(self, op: Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def at(self, window: _Window) -> tuple[int, float, timedelta]:
        """(bucket index, fraction of the bucket past, bucket ttl) of `window` at `now`. By
        name: a name is one window (the bucket keys carry it)."""
        at = self._at.get(window.name)
        if at is None:
            index, fraction = window.position(self.now)
            at = self._at[window.name] = (index, fraction, window.bucket_ttl(self.now))
        return at


#: Reads the results of a plan; returns the refusal of its limit, if any.
_Check = Callable[[list[Result]], "_Refused | None"]


def _int(value: Result) -> int:
    return int(value) if isinstance(value, int) else 0


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
