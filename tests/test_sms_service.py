"""SmsService end to end: phone policy -> limits -> code -> text -> providers -> verify.

Issue 3 "Done when": each limit refuses before any provider is called; a provider that times
out (after delivering) followed by a working one leaves exactly one code visible to the person.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway import clock
from gateway.app import get_settings
from gateway.db import get_db
from gateway.sms.codes import OneTimeCode, VerifyOutcome
from gateway.sms.dispatch import Dispatcher
from gateway.sms.limits import LimitExceeded, LimitReason, SendingUnavailable
from gateway.sms.messages import host_of
from gateway.sms.models import SmsMessage
from gateway.sms.phone import Channel, PhoneRejected, parse_phone
from gateway.sms.policy import SmsPolicy
from gateway.sms.providers.base import (
    OutgoingMessage,
    ProviderError,
    ProviderReceipt,
    ProviderTimeout,
    SmsProvider,
    VoiceProvider,
)
from gateway.sms.providers.outbox import OutboxProvider, read_outbox
from gateway.sms.service import SentCode, SmsService, get_sms_service
from gateway.store import StoreUnavailable, get_store

NUMBER = "+31612345678"
WEBOTP = re.compile(r"\n@(?P<host>[^ ]+) #(?P<code>[0-9]{6})\Z")


class RecordingProvider:
    """Accepts every message and remembers it: what reached "the phone"."""

    channels = frozenset({"sms", "voice"})

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.seen: list[OutgoingMessage] = []

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        self.seen.append(msg)
        return ProviderReceipt(provider_message_id=f"r-{len(self.seen)}")


class DeliversThenTimesOut(RecordingProvider):
    """Delivers the message, but its answer never comes back in time."""

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        self.seen.append(msg)
        raise ProviderTimeout()


class Broken(RecordingProvider):
    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        self.seen.append(msg)
        raise ProviderError("HTTP 503")


class DownStore:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("down")

        return fail


class Recorder:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, str]] = []

    def blocked(self, reason: str, country: str) -> None:
        self.blocks.append((str(reason), country))

    def circuit_opened(self, country: str, window: str) -> None:
        pass


MakeService = Callable[..., SmsService]


@pytest.fixture
def make_service(app: Flask) -> MakeService:
    def factory(providers: list[Any], store: Any = None, **policy: Any) -> SmsService:
        settings = get_settings(app)
        return SmsService(
            settings=settings,
            policy=SmsPolicy.model_validate(policy),
            database=get_db(app),
            store=store or get_store(app),
            dispatcher=Dispatcher(providers, settings=settings),
            limit_metrics=Recorder(),
        )

    return factory


def code_rows(app: Flask) -> int:
    with get_db(app).begin() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(OneTimeCode)) or 0)


def code_in(text: str) -> str:
    match = WEBOTP.search(text)
    assert match, "no WebOTP line"
    return match["code"]


def test_end_to_end_through_the_outbox(app: Flask, frozen_clock: None) -> None:
    settings = get_settings(app)
    service = get_sms_service(app)
    sent = service.send_code(
        purpose="login", flow_id="flow-e2e", phone="06 12345678", language="en", ip="192.0.2.1"
    )
    assert isinstance(sent, SentCode)
    assert sent.channel is Channel.SMS
    assert sent.expires_at == clock.now() + timedelta(seconds=service.policy.code_ttl_seconds)

    lines = settings.sms_outbox.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert set(entry) == {"to", "channel", "text", "sent_at"}  # INTERFACE.md, exactly
    assert entry["to"] == NUMBER
    assert entry["channel"] == "sms"
    datetime.fromisoformat(entry["sent_at"])  # RFC 3339
    match = WEBOTP.search(entry["text"])
    assert match and match["host"] == host_of(settings.issuer)
    code = match["code"]
    assert "never" in entry["text"].lower()  # the English text, with its warning

    with get_db(app).begin() as s:
        message = s.get(SmsMessage, sent.message_id)
        assert message is not None and message.status == "sent" and message.provider == "outbox"

    assert (
        service.verify_code(
            purpose="login", flow_id="flow-e2e", code="000000" if code != "000000" else "111111"
        )
        is VerifyOutcome.WRONG
    )
    assert service.verify_code(purpose="login", flow_id="flow-e2e", code=code) is VerifyOutcome.OK
    assert service.verify_code(purpose="login", flow_id="flow-e2e", code=code) is VerifyOutcome.USED


def test_voice_for_a_fixed_line(app: Flask) -> None:
    settings = get_settings(app)
    sent = get_sms_service(app).send_code(
        purpose="login", flow_id="flow-v", phone="+31 20 794 0000", language="nl"
    )
    assert sent.channel is Channel.VOICE
    (entry,) = list(read_outbox(settings.sms_outbox))
    assert entry["channel"] == "voice" and entry["to"] == "+31207940000"
    spoken = re.search(r"[0-9](?:, [0-9]){5}", entry["text"])
    assert spoken, "the code is read out digit by digit"
    code = spoken.group(0).replace(", ", "")
    assert (
        get_sms_service(app).verify_code(purpose="login", flow_id="flow-v", code=code)
        is VerifyOutcome.OK
    )


def test_language_follows_the_account(app: Flask) -> None:
    service = get_sms_service(app)
    service.send_code(purpose="login", flow_id="f-nl", phone=NUMBER, language="nl")
    service.send_code(purpose="login", flow_id="f-en", phone="+31612345679", language="en-GB")
    dutch, english = (e["text"] for e in read_outbox(get_settings(app).sms_outbox))
    assert dutch != english
    assert "code" in dutch.lower() and "never" in english.lower() and "never" not in dutch.lower()


def test_a_parsed_phone_is_accepted(make_service: MakeService) -> None:
    provider = RecordingProvider()
    service = make_service([provider])
    phone = parse_phone("+44 7400 123456", service.policy)
    sent = service.send_code(purpose="login", flow_id="f", phone=phone, language="en")
    assert sent.channel is Channel.SMS and provider.seen[0].to == "+447400123456"


def test_failover_after_a_timeout_shows_one_code(
    app: Flask, make_service: MakeService, tmp_path: Path
) -> None:
    slow = DeliversThenTimesOut("slow")
    outbox_path = tmp_path / "outbox.jsonl"
    service = make_service([slow, OutboxProvider(outbox_path)])
    sent = service.send_code(purpose="login", flow_id="flow-f", phone=NUMBER, language="en")

    # What reached the phone: the slow provider's message AND the outbox's.
    (outbox_entry,) = list(read_outbox(outbox_path))
    texts = [m.text for m in slow.seen] + [outbox_entry["text"]]
    assert len(texts) == 2
    visible_codes = {code_in(t) for t in texts}
    assert len(visible_codes) == 1  # one code, however many copies
    (code,) = visible_codes
    with get_db(app).begin() as s:
        message = s.get(SmsMessage, sent.message_id)
        assert message is not None
        assert (message.status, message.provider, message.attempts) == ("sent", "outbox", 2)
        assert s.scalar(sa.select(sa.func.count()).select_from(SmsMessage)) == 1
    assert code_rows(app) == 1
    assert service.verify_code(purpose="login", flow_id="flow-f", code=code) is VerifyOutcome.OK


def test_every_provider_failing_is_sending_unavailable(
    app: Flask, make_service: MakeService
) -> None:
    first, second = DeliversThenTimesOut("a"), Broken("b")
    service = make_service([first, second])
    with pytest.raises(SendingUnavailable) as info:
        service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="en")
    assert len(first.seen) == len(second.seen) == 1
    assert first.seen[0].idempotency_key == second.seen[0].idempotency_key
    assert first.seen[0].text == second.seen[0].text
    with app.test_request_context("/?lang=en"):
        assert "try again in a few minutes" in str(info.value.message)
    # The code stays valid: the provider that timed out may well have delivered it.
    assert (
        service.verify_code(purpose="login", flow_id="f", code=code_in(first.seen[0].text))
        is VerifyOutcome.OK
    )


LIMITS: list[tuple[LimitReason, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (reason, policy, first send, second send)
    (
        LimitReason.PER_NUMBER,
        {"per_number": {"hour": 1, "day": 1}},
        {"flow_id": "f1"},
        {"flow_id": "f2"},
    ),
    (
        LimitReason.PER_ACCOUNT,
        {"per_account": {"hour": 1, "day": 1}},
        {"flow_id": "f1", "account_id": 7},
        {"flow_id": "f2", "account_id": 7, "phone": "+31612345600"},
    ),
    (
        LimitReason.PER_IP,
        {"per_ip": {"hour": 1, "day": 1}},
        {"flow_id": "f1", "ip": "203.0.113.9"},
        {"flow_id": "f2", "ip": "203.0.113.9", "phone": "+447400123456"},
    ),
    (
        LimitReason.NUMBER_RANGE_VELOCITY,
        {"per_prefix": {"digits_dropped": 2, "window_minutes": 60, "max_distinct_numbers": 2}},
        {"flow_id": "f1", "phone": "+31612345601"},
        {"flow_id": "f2", "phone": "+31612345602"},
    ),
    (
        LimitReason.COUNTRY_BUDGET,
        {"country_budgets": {"overrides": {"NL": {"hour": 1, "day": 5}}}},
        {"flow_id": "f1"},
        {"flow_id": "f2", "phone": "+31612349999"},
    ),
    (LimitReason.RESEND_TOO_SOON, {}, {"flow_id": "f1"}, {"flow_id": "f1"}),
]


@pytest.mark.parametrize(
    ("reason", "policy", "first", "second"), LIMITS, ids=[r[0].value for r in LIMITS]
)
def test_each_limit_refuses_before_any_provider(
    app: Flask,
    make_service: MakeService,
    reason: LimitReason,
    policy: dict[str, Any],
    first: dict[str, Any],
    second: dict[str, Any],
) -> None:
    provider = RecordingProvider()
    assert isinstance(provider, SmsProvider) and isinstance(provider, VoiceProvider)
    service = make_service([provider], **policy)
    args: dict[str, Any] = {"purpose": "login", "phone": NUMBER, "language": "en"}
    if reason is LimitReason.NUMBER_RANGE_VELOCITY:
        service.send_code(**{**args, "flow_id": "f0", "phone": "+31612345600"})
        provider.seen.clear()
    service.send_code(**{**args, **first})
    assert len(provider.seen) == 1
    rows_before = code_rows(app)
    with pytest.raises(LimitExceeded) as info:
        service.send_code(**{**args, **second})
    assert info.value.reason is reason
    assert len(provider.seen) == 1  # the refused send never reached a provider
    assert code_rows(app) == rows_before  # and issued no code (the previous one still works)
    country = parse_phone(second.get("phone", NUMBER), service.policy).region
    assert service.limiter.metrics.blocks == [(reason.value, country)]  # type: ignore[attr-defined]
    with app.test_request_context("/?lang=nl"):
        assert str(info.value.message)


def test_store_down_refuses_before_any_provider(app: Flask, make_service: MakeService) -> None:
    provider = RecordingProvider()
    service = make_service([provider], store=DownStore())
    with pytest.raises(SendingUnavailable) as info:
        service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="en")
    assert provider.seen == []
    assert code_rows(app) == 0
    with app.test_request_context("/?lang=nl"):
        assert "Probeer het over een paar minuten opnieuw" in str(info.value.message)


@pytest.mark.parametrize(
    "phone", ["+31 900 1234567", "0800 1234567", "+882 1234 5678", "", "bel me", "+31 6" + "1" * 60]
)
def test_rejected_phone_never_reaches_a_provider(
    app: Flask, make_service: MakeService, phone: str
) -> None:
    provider = RecordingProvider()
    service = make_service([provider])
    with pytest.raises(PhoneRejected) as info:
        service.send_code(purpose="login", flow_id="f", phone=phone, language="en")
    assert provider.seen == [] and code_rows(app) == 0
    with app.test_request_context("/?lang=en"):
        assert str(info.value.message)


@pytest.mark.parametrize(
    ("purpose", "flow_id"), [("bogus", "f"), ("login", ""), ("login", "x" * 500)]
)
def test_bad_arguments_cost_nothing(
    app: Flask, make_service: MakeService, purpose: str, flow_id: str
) -> None:
    provider = RecordingProvider()
    service = make_service([provider], per_number={"hour": 1, "day": 1})
    with pytest.raises(ValueError):
        service.send_code(purpose=purpose, flow_id=flow_id, phone=NUMBER, language="en")
    service.send_code(purpose="login", flow_id="good", phone=NUMBER, language="en")  # budget intact
    assert len(provider.seen) == 1


def test_hostile_language_falls_back(make_service: MakeService) -> None:
    provider = RecordingProvider()
    service = make_service([provider])
    service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="\u202e" + "x" * 5000)
    assert code_in(provider.seen[0].text)


def test_resend_gives_a_new_code_and_ends_the_old(make_service: MakeService) -> None:
    provider = RecordingProvider()
    service = make_service([provider], resend_min_interval_seconds=1)
    with clock.frozen():
        service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="en")
        # Both clocks move: the database store expires on gateway.clock, Redis on real time.
        clock.advance(timedelta(seconds=1))
        time.sleep(1.05)
        service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="en")
        old, new = (code_in(m.text) for m in provider.seen)
        if old == new:
            pytest.skip("random collision")
        assert service.verify_code(purpose="login", flow_id="f", code=old) is VerifyOutcome.WRONG
        assert service.verify_code(purpose="login", flow_id="f", code=new) is VerifyOutcome.OK
        assert provider.seen[0].idempotency_key != provider.seen[1].idempotency_key


def test_codes_sent_metric(app: Flask) -> None:
    from prometheus_client import REGISTRY

    labels = {"purpose": "login", "channel": "sms", "country": "NL", "outcome": "sent"}
    before = REGISTRY.get_sample_value("sms_codes_total", labels) or 0.0
    get_sms_service(app).send_code(purpose="login", flow_id="m", phone=NUMBER, language="nl")
    assert REGISTRY.get_sample_value("sms_codes_total", labels) == before + 1


def test_verify_malformed_through_the_service(app: Flask) -> None:
    service = get_sms_service(app)
    service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="nl")
    for raw in (None, "", "12", "x" * 10_000, 123456):
        assert (
            service.verify_code(purpose="login", flow_id="f", code=raw) is VerifyOutcome.MALFORMED
        )
    assert (
        service.verify_code(purpose="unblock", flow_id="f", code="123456") is VerifyOutcome.NO_CODE
    )


def test_policy_may_lower_the_attempts(make_service: MakeService) -> None:
    provider = RecordingProvider()
    service = make_service([provider], code_max_attempts=1)
    service.send_code(purpose="login", flow_id="f", phone=NUMBER, language="en")
    code = code_in(provider.seen[0].text)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert service.verify_code(purpose="login", flow_id="f", code=wrong) is VerifyOutcome.WRONG
    outcome = service.verify_code(purpose="login", flow_id="f", code=code)
    assert outcome is VerifyOutcome.TOO_MANY_ATTEMPTS


class ChecksTheDatabase(RecordingProvider):
    """When called, looks in the database through a connection of its own: what a crash at
    this moment would leave behind."""

    def __init__(self, app: Flask) -> None:
        super().__init__("checks")
        self.app = app
        self.found: list[tuple[str, int]] = []

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        with get_db(self.app).begin() as s:
            message = s.get(SmsMessage, msg.message_id)
            assert message is not None
            live = s.scalar(
                sa.select(sa.func.count()).select_from(OneTimeCode)
                .where(OneTimeCode.used_at.is_(None), OneTimeCode.superseded_at.is_(None))
            )
            self.found.append((message.status, int(live or 0)))
        return super().send(msg)


def test_code_and_message_are_committed_before_any_provider(
    app: Flask, make_service: MakeService
) -> None:
    provider = ChecksTheDatabase(app)
    service = make_service([provider])
    sent = service.send_code(purpose="login", flow_id="flow-c", phone=NUMBER, language="en")
    assert provider.found == [("queued", 1)]
    with get_db(app).begin() as s:
        message = s.get(SmsMessage, sent.message_id)
        assert message is not None and (message.status, message.attempts) == ("sent", 1)
        assert message.provider == "checks" and message.provider_message_id == "r-1"


def test_queue_and_deliver_refuse_what_would_be_a_second_code(app: Flask) -> None:
    dispatcher = Dispatcher([RecordingProvider()], settings=get_settings(app))
    args: dict[str, Any] = {"to": NUMBER, "channel": "sms", "purpose": "login",
                            "idempotency_key": "otp:q1"}
    with get_db(app).begin() as s:
        queued = dispatcher.queue(s, text="code 111111", **args)
    with pytest.raises(ValueError), get_db(app).begin() as s:
        dispatcher.queue(s, text="code 111111", **args)  # the key is taken
    with pytest.raises(ValueError):
        dispatcher.deliver(get_db(app).engine, queued, "code 222222")  # not the queued text
    assert dispatcher.deliver(get_db(app).engine, queued, "code 111111").status == "sent"
