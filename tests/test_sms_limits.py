"""Abuse limits (gateway.sms.limits): each limit refuses, refusals cost nothing, fail closed.

The SQLite run keeps counters in the database store, the PostgreSQL run in Redis (when
GATEWAY_TEST_REDIS is set). Windows are moved with the frozen clock: bucket keys follow
`gateway.clock`, so this works on Redis too, whose own expiry runs on real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from gateway import clock
from gateway.settings import Settings
from gateway.sms.limits import (
    AbuseLimiter,
    LimitExceeded,
    LimitReason,
    SendingUnavailable,
    _retry_after,
)
from gateway.sms.policy import SmsPolicy
from gateway.store import SharedStore, StoreUnavailable, make_store

#: 00:10 UTC: an hour bucket has just begun, the day bucket too.
T0 = datetime(2031, 3, 4, 0, 10, tzinfo=UTC)

NUMBER = "+31612345678"


class Recorder:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, str]] = []
        self.trips: list[tuple[str, str]] = []

    def blocked(self, reason: str, country: str) -> None:
        self.blocks.append((str(reason), country))

    def circuit_opened(self, country: str, window: str) -> None:
        self.trips.append((country, window))


class KeySpy:
    """A store wrapper that remembers every key used."""

    def __init__(self, inner: SharedStore) -> None:
        self.inner = inner
        self.keys: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def wrapped(key: Any, *args: Any, **kwargs: Any) -> Any:
            if name == "run":
                self.keys.extend(op.key for op in key)
            else:
                self.keys.append(key)
            return method(key, *args, **kwargs)

        return wrapped


class CallCounter:
    """A store wrapper that counts the calls (each is a round trip, or a transaction)."""

    def __init__(self, inner: SharedStore) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.inner, name)


class DownStore:
    """Every call fails, after `healthy` calls have worked (a store that goes away mid-way)."""

    def __init__(self, inner: SharedStore, healthy: int = 0) -> None:
        self.inner = inner
        self.healthy = healthy

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.healthy <= 0:
                raise StoreUnavailable("down")
            self.healthy -= 1
            return method(*args, **kwargs)

        return wrapped


@pytest.fixture
def store(settings: Settings) -> Iterator[SharedStore]:
    s = make_store(settings)
    yield s
    s.close()


@pytest.fixture
def clock_t0() -> Iterator[None]:
    with clock.frozen(T0):
        yield


Make = Callable[..., tuple[AbuseLimiter, Recorder]]


@pytest.fixture
def make(store: SharedStore, settings: Settings, clock_t0: None) -> Make:
    def factory(store_: SharedStore | None = None, **policy: Any) -> tuple[AbuseLimiter, Recorder]:
        base: dict[str, Any] = {
            "per_number": {"hour": 50, "day": 100},
            "per_account": {"hour": 50, "day": 100},
            "per_ip": {"hour": 50, "day": 100},
            "per_prefix": {"digits_dropped": 2, "window_minutes": 60, "max_distinct_numbers": 50},
            "country_budgets": {"default": {"hour": 500, "day": 1000}},
        }
        base.update(policy)
        recorder = Recorder()
        limiter = AbuseLimiter(store_ or store, SmsPolicy.model_validate(base), settings, recorder)
        return limiter, recorder

    return factory


def send(limiter: AbuseLimiter, e164: str = NUMBER, **kwargs: Any) -> None:
    args: dict[str, Any] = {"region": "NL", "account_id": None, "ip": None, "segments": 1}
    args.update(kwargs)
    limiter.check_and_count(e164=e164, **args)


def refused(limiter: AbuseLimiter, e164: str = NUMBER, **kwargs: Any) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        send(limiter, e164, **kwargs)
    return info.value


def test_per_number(make: Make) -> None:
    limiter, recorder = make(per_number={"hour": 2, "day": 3})
    send(limiter)
    send(limiter)
    exc = refused(limiter)
    assert exc.reason is LimitReason.PER_NUMBER
    # Two sends at 00:10: the next hour bucket starts at 01:00 and the previous one (weighing 2)
    # must fall to 1 by 01:30. The sliding counter errs long (a true rolling hour: 01:10).
    assert exc.retry_after_seconds == 80 * 60
    send(limiter, "+31612345699")  # another number is not affected
    assert recorder.blocks == [("per_number", "NL")]


def test_per_number_day_outlives_the_hour(make: Make) -> None:
    limiter, _ = make(per_number={"hour": 2, "day": 3})
    send(limiter)
    send(limiter)
    clock.advance(timedelta(hours=2))
    send(limiter)
    clock.advance(timedelta(hours=2))
    exc = refused(limiter)
    assert exc.reason is LimitReason.PER_NUMBER
    assert exc.retry_after_seconds > 3600  # the day limit: waiting an hour would not help
    clock.advance(timedelta(days=2))
    send(limiter)


def test_refused_send_consumes_no_other_budget(make: Make) -> None:
    limiter, _ = make(per_number={"hour": 2, "day": 9}, per_account={"hour": 3, "day": 9})
    send(limiter, account_id="acc-1")
    send(limiter, account_id="acc-1")
    assert refused(limiter, account_id="acc-1").reason is LimitReason.PER_NUMBER
    assert refused(limiter, account_id="acc-1").reason is LimitReason.PER_NUMBER
    # Had the refused sends counted for the account, this third one would be its fourth.
    send(limiter, "+31612345699", account_id="acc-1")
    assert refused(limiter, "+31612345600", account_id="acc-1").reason is LimitReason.PER_ACCOUNT


def test_refused_send_consumes_no_country_budget(make: Make) -> None:
    limiter, recorder = make(
        per_ip={"hour": 1, "day": 9}, country_budgets={"default": {"hour": 2, "day": 9}}
    )
    send(limiter, ip="192.0.2.1")
    for _ in range(3):
        assert refused(limiter, ip="192.0.2.1").reason is LimitReason.PER_IP
    send(limiter, ip="192.0.2.2")  # the country's second segment: still within budget
    assert recorder.trips == []


def test_per_account(make: Make) -> None:
    limiter, _ = make(per_account={"hour": 2, "day": 2})
    send(limiter, "+31612345601", account_id=42)
    send(limiter, "+31612345602", account_id=42)
    assert refused(limiter, "+31612345603", account_id=42).reason is LimitReason.PER_ACCOUNT
    send(limiter, "+31612345603", account_id=43)
    send(limiter, "+31612345604", account_id=None)


def test_per_ip_counts_an_ipv6_slash_64_once(make: Make) -> None:
    limiter, _ = make(per_ip={"hour": 2, "day": 5})
    send(limiter, "+31612345601", ip="2001:db8:1:2::1")
    send(limiter, "+31612345602", ip="2001:db8:1:2:ffff::9")
    exc = refused(limiter, "+31612345603", ip="2001:db8:1:2:abcd::1")
    assert exc.reason is LimitReason.PER_IP
    send(limiter, "+31612345603", ip="2001:db8:1:3::1")  # another /64
    send(limiter, "+31612345604", ip="192.0.2.7")
    send(limiter, "+31612345605", ip="::ffff:192.0.2.7")  # the same IPv4 address, mapped
    assert refused(limiter, "+31612345606", ip="192.0.2.7").reason is LimitReason.PER_IP


def test_window_slides_instead_of_resetting_at_the_hour(make: Make) -> None:
    limiter, _ = make(per_number={"hour": 2, "day": 9})
    clock.advance(timedelta(minutes=49))  # 00:59
    send(limiter)
    send(limiter)
    clock.advance(timedelta(minutes=1, seconds=30))  # 01:00:30, a new hour bucket
    exc = refused(limiter)  # a fixed window would allow two more here
    assert exc.reason is LimitReason.PER_NUMBER
    clock.advance(timedelta(seconds=exc.retry_after_seconds))
    send(limiter)


def test_resend_too_soon(make: Make) -> None:
    limiter, _ = make(resend_min_interval_seconds=1)
    send(limiter, flow_key="login|flow-1")
    exc = refused(limiter, flow_key="login|flow-1")
    assert exc.reason is LimitReason.RESEND_TOO_SOON
    assert exc.retry_after_seconds == 1
    send(limiter, flow_key="login|flow-2")
    # Both clocks move: the database store expires on gateway.clock, Redis on real time.
    clock.advance(timedelta(seconds=1))
    time.sleep(1.05)
    send(limiter, flow_key="login|flow-1")


def test_resend_retry_after_counts_down(make: Make) -> None:
    limiter, _ = make(resend_min_interval_seconds=60)
    send(limiter, flow_key="login|f")
    clock.advance(timedelta(seconds=20))
    assert refused(limiter, flow_key="login|f").retry_after_seconds == 40


def test_number_range_velocity(make: Make) -> None:
    limiter, recorder = make(
        per_prefix={"digits_dropped": 2, "window_minutes": 60, "max_distinct_numbers": 3}
    )
    for last in ("00", "01", "02"):
        send(limiter, "+316123456" + last)
    exc = refused(limiter, "+31612345603")
    assert exc.reason is LimitReason.NUMBER_RANGE_VELOCITY
    assert refused(limiter, "+31612345699").reason is LimitReason.NUMBER_RANGE_VELOCITY
    send(limiter, "+31612345601")  # already counted: a resend to a known number still works
    send(limiter, "+31612345700")  # another block of 100
    assert recorder.blocks.count(("number_range_velocity", "NL")) == 2
    clock.advance(timedelta(hours=2))
    send(limiter, "+31612345603")


def test_country_budget_trips_the_breaker(make: Make) -> None:
    limiter, recorder = make(
        country_budgets={
            "default": {"hour": 500, "day": 900},
            "overrides": {"NG": {"hour": 5, "day": 50}},
        }
    )
    send(limiter, "+2348031234501", region="NG", segments=2)
    send(limiter, "+2348031234602", region="NG", segments=2)
    exc = refused(limiter, "+2348031234703", region="NG", segments=2)  # 6 > 5
    assert exc.reason is LimitReason.COUNTRY_BUDGET
    assert exc.retry_after_seconds == 50 * 60  # the rest of the hour (frozen at 00:10)
    # One segment would still fit the budget, but the breaker is open until the hour ends.
    exc = refused(limiter, "+2348031234804", region="NG", segments=1)
    assert exc.reason is LimitReason.COUNTRY_BUDGET
    send(limiter, "+4915112345678", region="DE", segments=3)  # other countries are unaffected
    assert recorder.trips == [("NG", "hour")]
    assert recorder.blocks == [("country_budget", "NG"), ("country_budget", "NG")]
    clock.advance(timedelta(minutes=51))
    send(limiter, "+2348031234804", region="NG", segments=1)


def test_country_budget_day_breaker(make: Make) -> None:
    limiter, recorder = make(country_budgets={"default": {"hour": 4, "day": 6}})
    for i in range(4):
        send(limiter, f"+3361234{i:04d}", region="FR")
    clock.advance(timedelta(hours=2))
    send(limiter, "+33612349001", region="FR")
    send(limiter, "+33612349002", region="FR")
    exc = refused(limiter, "+33612349003", region="FR")
    assert exc.reason is LimitReason.COUNTRY_BUDGET
    assert recorder.trips == [("FR", "day")]
    clock.advance(timedelta(hours=3))  # a new hour, the same day: still closed
    assert refused(limiter, "+33612349004", region="FR").reason is LimitReason.COUNTRY_BUDGET


def test_country_budget_counts_in_prometheus(
    store: SharedStore, settings: Settings, clock_t0: None
) -> None:
    from prometheus_client import REGISTRY

    policy = SmsPolicy.model_validate(
        {"country_budgets": {"overrides": {"KE": {"hour": 1, "day": 9}}}}
    )
    limiter = AbuseLimiter(store, policy, settings)  # the default metrics: Prometheus
    labels = {"reason": "country_budget", "country": "KE"}

    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    blocked_before = sample("sms_blocked_total", labels)
    trips_before = sample("sms_country_circuit_trips_total", {"country": "KE", "window": "hour"})
    send(limiter, "+254712345678", region="KE")
    refused(limiter, "+254712345679", region="KE")
    refused(limiter, "+254712345670", region="KE")
    assert sample("sms_blocked_total", labels) == blocked_before + 2
    trips = sample("sms_country_circuit_trips_total", {"country": "KE", "window": "hour"})
    assert trips == trips_before + 1


def test_store_down_refuses(make: Make, store: SharedStore) -> None:
    limiter, recorder = make(DownStore(store, healthy=0))
    with pytest.raises(SendingUnavailable):
        send(limiter, account_id="a", ip="192.0.2.1", flow_key="login|f")
    assert recorder.blocks == [("store_unavailable", "NL")]
    # Nothing was counted: with the store back, the whole budget is there.
    healthy, _ = make(per_number={"hour": 1, "day": 1})
    send(healthy, account_id="a", ip="192.0.2.1", flow_key="login|f")


def test_store_lost_while_undoing_still_refuses(make: Make, store: SharedStore) -> None:
    """The counting step works, a limit refuses, the undo step finds the store gone: the send
    is still refused, and what stays counted errs on the safe side."""
    limits = {"per_number": {"hour": 1, "day": 1}}
    send(make(**limits)[0])
    limiter, recorder = make(DownStore(store, healthy=1), **limits)
    assert refused(limiter).reason is LimitReason.PER_NUMBER
    assert recorder.blocks == [("per_number", "NL")]


def test_one_store_step_per_send(make: Make, store: SharedStore) -> None:
    """Every limit is counted and read in one store step (one round trip or transaction);
    a refusal costs one more, to undo."""
    counter = CallCounter(store)
    limiter, _ = make(counter, per_number={"hour": 1, "day": 1})
    send(limiter, account_id="a", ip="192.0.2.1", flow_key="login|f")
    assert counter.calls == ["run"]
    counter.calls.clear()
    refused(limiter, account_id="a", ip="192.0.2.1", flow_key="login|g")
    assert counter.calls == ["run", "run"]


@pytest.mark.parametrize(
    "override",
    [{"redis_url": "redis://127.0.0.1:1/0"}, {"database_url": "postgresql://gw@127.0.0.1:1/none"}],
)
def test_unreachable_store_refuses(
    make: Make, settings: Settings, override: dict[str, str]
) -> None:
    if "database_url" in override:
        override = {**override, "redis_url": None}
    dead = make_store(settings.with_overrides(**override))
    limiter, _ = make(dead)
    with pytest.raises(SendingUnavailable) as info:
        send(limiter)
    assert "limits store" in str(info.value)  # the reason, no address or number


def test_messages_in_both_languages(app: Flask) -> None:
    cases = [
        (LimitExceeded(LimitReason.PER_NUMBER, 1800), "30 minutes", "30 minuten"),
        (LimitExceeded(LimitReason.PER_IP, 30), "1 minute.", "1 minuut"),
        (LimitExceeded(LimitReason.PER_ACCOUNT, 5 * 3600), "5 hours", "5 uur"),
        (LimitExceeded(LimitReason.RESEND_TOO_SOON, 25), "25 seconds", "25 seconden"),
        (LimitExceeded(LimitReason.COUNTRY_BUDGET, 600), "this country", "dit land"),
    ]
    for exc, english, dutch in cases:
        with app.test_request_context("/?lang=en"):
            assert english in str(exc.message)
        with app.test_request_context("/?lang=nl"):
            assert dutch in str(exc.message)
    with app.test_request_context("/?lang=en"):
        assert "try again in a few minutes" in str(SendingUnavailable().message)
    with app.test_request_context("/?lang=nl"):
        assert "over een paar minuten" in str(SendingUnavailable().message)


def test_exception_text_is_the_reason_only(make: Make) -> None:
    limiter, _ = make(per_number={"hour": 1, "day": 1})
    send(limiter, account_id="acc-secret", ip="198.51.100.23")
    exc = refused(limiter, account_id="acc-secret", ip="198.51.100.23")
    assert str(exc) == "per_number"
    assert NUMBER not in repr(exc.args)


def test_no_number_ip_or_account_in_store_keys(make: Make, store: SharedStore) -> None:
    spy = KeySpy(store)
    limiter, _ = make(spy, per_number={"hour": 1, "day": 1})
    send(limiter, account_id="acc-7781", ip="198.51.100.23", flow_key="login|flow-abc")
    refused(limiter, account_id="acc-7781", ip="198.51.100.23")
    send(limiter, "+31612345699", ip="2001:db8:77::5")
    assert spy.keys
    for key in spy.keys:
        for secret in ("612345", "acc-7781", "198.51.100", "2001:db8", "flow-abc"):
            assert secret not in key, key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"region": ""},
        {"region": "nl-NL"},
        {"region": "\u0000"},
        {"ip": "not-an-ip"},
        {"ip": "x" * 5000},
        {"ip": "fe80::1%eth0"},
        {"account_id": "\u202e" * 300},
        {"e164": "+1"},
        {"flow_key": "k" * 10_000},
    ],
)
def test_hostile_arguments_are_counted_not_crashing(make: Make, kwargs: dict[str, Any]) -> None:
    limiter, _ = make()
    e164 = kwargs.pop("e164", NUMBER)
    send(limiter, e164, **kwargs)


def test_segments_must_be_positive(make: Make) -> None:
    limiter, _ = make()
    for bad in (0, -3):
        with pytest.raises(ValueError):
            send(limiter, segments=bad)


def test_parallel_sends_never_exceed_a_limit(make: Make) -> None:
    limiter, _ = make(per_number={"hour": 3, "day": 9}, per_account={"hour": 4, "day": 9})
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def worker() -> None:
        barrier.wait()
        try:
            send(limiter, account_id="acc")
            outcomes.append("sent")
        except LimitExceeded as exc:
            outcomes.append(exc.reason.value)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count("sent") <= 3
    assert len(outcomes) == 10
    sent = outcomes.count("sent")
    # Every refusal was undone: the account has room for exactly 4 - sent more.
    for i in range(4 - sent):
        send(limiter, f"+3161234570{i}", account_id="acc")
    assert refused(limiter, "+31612345799", account_id="acc").reason is LimitReason.PER_ACCOUNT


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # previous bucket 4, nothing yet in this one, limit 4, at 10 %: weight must fall to 3/4.
        ((4, 0, 1, 4, 0.10, 3600.0), (0.25 - 0.10) * 3600),
        # nothing before, this bucket full: wait for the next bucket, then until it weighs 2/3.
        ((0, 3, 1, 3, 0.50, 3600.0), 0.5 * 3600 + (1 - 2 / 3) * 3600),
        # more than the limit at once never fits: the rest of this bucket and one more.
        ((0, 0, 5, 4, 0.25, 100.0), 75.0 + 100.0),
    ],
)
def test_retry_after(args: tuple[int, int, int, int, float, float], expected: float) -> None:
    assert _retry_after(*args) == pytest.approx(expected)
