"""SMS/voice providers, failover and delivery reports (issue 3, items 4 and 6).

The HTTP provider talks to a real HTTP server on loopback; Kannel end to end is in
tests/test_sms_kannel.py (the contract test below also runs against it when installed).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from gateway import clock
from gateway.app import create_app
from gateway.cli import main
from gateway.db import Base, get_db, make_engine
from gateway.settings import Settings, SettingsError
from gateway.sms.dispatch import DeliveryFailed, Dispatcher, get_dispatcher
from gateway.sms.models import SmsMessage, Status, phone_hmac
from gateway.sms.providers import (
    OutgoingMessage,
    ProviderError,
    ProviderTimeout,
    SmsProvider,
    Timeouts,
    build_providers,
)
from gateway.sms.providers.base import DlrUrls, dlr_token
from gateway.sms.providers.http import HttpProvider
from gateway.sms.providers.kannel import KannelProvider
from gateway.sms.providers.outbox import OutboxProvider
from tests.kannel_harness import KannelHarness

NUMBER = "+31612345678"
CODE_TEXT = "Uw code is 482913. Deel deze code met niemand.\n\n@127.0.0.1:8000 #482913"
FAST = Timeouts(connect=0.5, read=0.3)


# --- a fake provider API on loopback ---------------------------------------------------------


class FakeApi:
    """A provider's HTTP API: records every request; `mode` decides the answer."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                api.requests.append({"headers": dict(self.headers), "body": body})
                if api.mode == "slow":
                    time.sleep(1.0)
                status, answer = {
                    "ok": (202, b'{"id": "prov-1", "messages": [{"id": "nested-7"}]}'),
                    "slow": (202, b'{"id": "late"}'),
                    "5xx": (503, b'{"error": "busy"}'),
                    "4xx": (400, b'{"error": "bad"}'),
                    "malformed": (200, b"<html>not json"),
                    "no-id": (200, b'{"ok": true}'),
                    "redirect": (302, b""),
                }[api.mode]
                try:
                    self.send_response(status)
                    if status == 302:
                        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/messages"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    yield server
    server.close()


def with_env(settings: Settings, **env: str) -> Settings:
    return Settings.from_env({**settings.environ, **env})


def http_env(api: FakeApi, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_SMS_HTTP_URL": api.url,
        "GATEWAY_SMS_HTTP_AUTH_HEADER": "Authorization: Bearer test-token-123",
        **extra,
    }


def outgoing(text: str = CODE_TEXT, key: str = "otp:1", channel: str = "sms") -> OutgoingMessage:
    return OutgoingMessage(
        message_id="0b9d4f4e-3c1a-4d47-9a59-0e7c3f1b2a10", to=NUMBER, channel=channel, text=text,
        idempotency_key=key, purpose="login",
    )


def http_provider(settings: Settings, api: FakeApi, **extra: str) -> HttpProvider:
    s = with_env(settings, GATEWAY_SMS_PROVIDER="http", **http_env(api, **extra))
    (provider,) = build_providers(s, FAST)
    assert isinstance(provider, HttpProvider)
    return provider


# --- outbox ----------------------------------------------------------------------------------


def test_outbox_line_format_is_exact(tmp_path: Path, frozen_clock: None) -> None:
    path = tmp_path / "out" / "sms.jsonl"
    provider = OutboxProvider(path)
    with clock.frozen(datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)):
        receipt = provider.send(outgoing())
        provider.send(outgoing(text="Gesproken code: 1 2 3", channel="voice"))
    assert receipt.provider_message_id is None
    raw = path.read_bytes().decode("utf-8")
    lines = raw.split("\n")
    assert lines[-1] == "" and len(lines) == 3  # one line per message, newline-terminated
    first = json.loads(lines[0])
    assert list(first) == ["to", "channel", "text", "sent_at"]
    assert first == {"to": NUMBER, "channel": "sms", "text": CODE_TEXT,
                     "sent_at": "2025-03-04T05:06:07Z"}
    assert json.loads(lines[1])["channel"] == "voice"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_outbox_concurrent_writers_never_mix_lines(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    long_text = "x" * 5000  # longer than a pipe buffer: an unlocked write could interleave

    def writer(n: int) -> None:
        provider = OutboxProvider(path)
        for i in range(20):
            provider.send(outgoing(text=f"{n}-{i}-{long_text}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(entries) == 120
    expected = {f"{n}-{i}" for n in range(6) for i in range(20)}
    assert {e["text"].split("-x")[0] for e in entries} == expected


def test_outbox_unwritable_is_a_provider_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ProviderError) as info:
        OutboxProvider(blocker / "sms.jsonl").send(outgoing())
    assert NUMBER not in str(info.value) and "482913" not in str(info.value)


# --- HTTP provider ---------------------------------------------------------------------------


def test_http_provider_success_default_mapping(settings: Settings, api: FakeApi) -> None:
    provider = http_provider(settings, api)
    receipt = provider.send(outgoing())
    assert receipt.provider_message_id == "prov-1"
    (request,) = api.requests
    assert request["headers"]["Authorization"] == "Bearer test-token-123"
    assert request["headers"]["Idempotency-Key"] == "otp:1"
    body = json.loads(request["body"])
    assert body["to"] == NUMBER and body["text"] == CODE_TEXT and body["channel"] == "sms"
    assert body["idempotency_key"] == "otp:1"
    assert body["reference"] == outgoing().message_id
    assert body["callback_url"].startswith(settings.issuer + "/sms/dlr/http?id=")
    assert set(body) == {"to", "text", "channel", "idempotency_key", "reference", "callback_url"}


def test_http_provider_custom_mapping(settings: Settings, api: FakeApi) -> None:
    provider = http_provider(
        settings, api,
        GATEWAY_SMS_HTTP_FIELDS=json.dumps(
            {"to": "message.recipient", "text": "message.body", "idempotency_key": "ref"}
        ),
        GATEWAY_SMS_HTTP_EXTRA=json.dumps({"sender": "Gateway", "options": {"flash": False}}),
        GATEWAY_SMS_HTTP_ID_FIELD="messages.0.id",
        GATEWAY_SMS_HTTP_CHANNELS="sms,voice",
    )
    assert provider.send(outgoing(channel="voice")).provider_message_id == "nested-7"
    assert api.bodies() == [{
        "sender": "Gateway", "options": {"flash": False},
        "message": {"recipient": NUMBER, "body": CODE_TEXT}, "ref": "otp:1",
    }]


@pytest.mark.parametrize(
    ("mode", "reason", "retryable"),
    [
        ("5xx", "HTTP 503", True),
        ("4xx", "HTTP 400", False),
        ("malformed", "malformed answer", True),
        ("no-id", "answer without message id", True),
        ("redirect", "HTTP 302", False),
    ],
)
def test_http_provider_errors(
    settings: Settings, api: FakeApi, mode: str, reason: str, retryable: bool
) -> None:
    api.mode = mode
    provider = http_provider(settings, api)
    with pytest.raises(ProviderError) as info:
        provider.send(outgoing())
    assert not isinstance(info.value, ProviderTimeout)
    assert str(info.value) == reason and info.value.retryable is retryable
    assert len(api.requests) == 1  # one attempt, no redirect followed, no retry inside


def test_http_provider_timeout(settings: Settings, api: FakeApi) -> None:
    api.mode = "slow"
    provider = http_provider(settings, api)
    with pytest.raises(ProviderTimeout) as info:
        provider.send(outgoing())
    assert str(info.value) == "timeout" and info.value.retryable


def test_http_provider_connection_refused(settings: Settings, api: FakeApi) -> None:
    provider = http_provider(settings, api)
    api.close()
    with pytest.raises(ProviderError) as info:
        provider.send(outgoing())
    # requests' own message would carry the URL; ours is a fixed phrase.
    assert str(info.value) == "connection failed"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_http_provider_refuses_unsupported_channel(settings: Settings, api: FakeApi) -> None:
    provider = http_provider(settings, api)  # default channels: sms
    with pytest.raises(ProviderError):
        provider.send(outgoing(channel="voice"))
    assert api.requests == []


# --- settings: checked at start-up, one line naming the variable -----------------------------

BAD_SETTINGS: list[tuple[str, dict[str, str], str]] = [
    ("kannel", {}, "GATEWAY_KANNEL_URL"),
    ("kannel", {"GATEWAY_KANNEL_URL": "ftp://x/cgi-bin/sendsms"}, "GATEWAY_KANNEL_URL"),
    ("kannel", {"GATEWAY_KANNEL_URL": "http://127.0.0.1:port/x"}, "GATEWAY_KANNEL_URL"),
    ("kannel", {"GATEWAY_KANNEL_URL": "http://u:p@127.0.0.1/x"}, "GATEWAY_KANNEL_URL"),
    ("kannel", {"GATEWAY_KANNEL_URL": "http://127.0.0.1/x"}, "GATEWAY_KANNEL_USERNAME"),
    ("kannel", {"GATEWAY_KANNEL_URL": "http://127.0.0.1/x", "GATEWAY_KANNEL_USERNAME": "u",
                "GATEWAY_KANNEL_PASSWORD": "has space"}, "GATEWAY_KANNEL_PASSWORD"),
    ("kannel", {"GATEWAY_KANNEL_URL": "http://127.0.0.1/x", "GATEWAY_KANNEL_USERNAME": "u",
                "GATEWAY_KANNEL_PASSWORD": "p", "GATEWAY_KANNEL_FROM": "TwelveLetters"},
     "GATEWAY_KANNEL_FROM"),
    ("kannel", {"GATEWAY_KANNEL_URL": "http://127.0.0.1/x", "GATEWAY_KANNEL_USERNAME": "u",
                "GATEWAY_KANNEL_PASSWORD": "p", "GATEWAY_KANNEL_FROM": "Gateway",
                "GATEWAY_KANNEL_SMSC": "a b\r\nX-Evil: 1"}, "GATEWAY_KANNEL_SMSC"),
    ("http", {}, "GATEWAY_SMS_HTTP_URL"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/"}, "GATEWAY_SMS_HTTP_AUTH_HEADER"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "Authorization: a\r\nX: y"},
     "GATEWAY_SMS_HTTP_AUTH_HEADER"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "X-Key: k", "GATEWAY_SMS_HTTP_CHANNELS": "fax"},
     "GATEWAY_SMS_HTTP_CHANNELS"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "X-Key: k", "GATEWAY_SMS_HTTP_FIELDS": "{nope"},
     "GATEWAY_SMS_HTTP_FIELDS"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "X-Key: k",
              "GATEWAY_SMS_HTTP_FIELDS": '{"to": "a", "text": "a.b"}'},
     "GATEWAY_SMS_HTTP_FIELDS"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "X-Key: k",
              "GATEWAY_SMS_HTTP_FIELDS": '{"to": "to", "password": "p"}'},
     "GATEWAY_SMS_HTTP_FIELDS"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "X-Key: k", "GATEWAY_SMS_HTTP_ID_FIELD": "a..b"},
     "GATEWAY_SMS_HTTP_ID_FIELD"),
    ("http", {"GATEWAY_SMS_HTTP_URL": "https://api.example/",
              "GATEWAY_SMS_HTTP_AUTH_HEADER": "X-Key: k",
              "GATEWAY_SMS_HTTP_DLR_STATUSES": '{"DELIVRD": "read"}'},
     "GATEWAY_SMS_HTTP_DLR_STATUSES"),
    ("outbox", {"GATEWAY_SMS_DLR_BASE_URL": "javascript:alert(1)"}, "GATEWAY_SMS_DLR_BASE_URL"),
]


@pytest.mark.parametrize(("provider", "env", "variable"), BAD_SETTINGS)
def test_bad_provider_settings_stop_start_up(
    settings: Settings, provider: str, env: dict[str, str], variable: str
) -> None:
    bad = with_env(settings, GATEWAY_SMS_PROVIDER=provider, **env)
    with pytest.raises(SettingsError) as info:
        create_app(bad)
    message = str(info.value)
    assert message.startswith(variable + ":") and "\n" not in message
    assert "X-Evil" not in message and "alert" not in message


def test_production_wants_tls_to_providers(settings: Settings) -> None:
    production = {"GATEWAY_ENV": "production", "GATEWAY_ISSUER": "https://id.example",
                  "GATEWAY_MAIL_URL": "smtp://127.0.0.1:25"}
    kannel = {"GATEWAY_KANNEL_USERNAME": "u", "GATEWAY_KANNEL_PASSWORD": "p",
              "GATEWAY_KANNEL_FROM": "Gateway"}
    remote = with_env(settings, **production, GATEWAY_SMS_PROVIDER="kannel", **kannel,
                      GATEWAY_KANNEL_URL="http://kannel.internal:13013/cgi-bin/sendsms")
    with pytest.raises(SettingsError, match=r"^GATEWAY_KANNEL_URL"):
        build_providers(remote)
    local = with_env(settings, **production, GATEWAY_SMS_PROVIDER="kannel", **kannel,
                     GATEWAY_KANNEL_URL="http://127.0.0.1:13013/cgi-bin/sendsms")
    assert isinstance(build_providers(local)[0], KannelProvider)
    plain_http = with_env(settings, **production, GATEWAY_SMS_PROVIDER="http",
                          GATEWAY_SMS_HTTP_URL="http://api.example/",
                          GATEWAY_SMS_HTTP_AUTH_HEADER="X-Key: k")
    with pytest.raises(SettingsError, match=r"^GATEWAY_SMS_HTTP_URL"):
        build_providers(plain_http)


def test_providers_follow_the_configured_order(settings: Settings, api: FakeApi) -> None:
    s = with_env(settings, GATEWAY_SMS_PROVIDER="http,outbox", **http_env(api))
    assert [p.name for p in build_providers(s)] == ["http", "outbox"]
    s = with_env(settings, GATEWAY_SMS_PROVIDER="outbox,http", **http_env(api))
    assert [p.name for p in build_providers(s)] == ["outbox", "http"]


# --- the contract every provider keeps ------------------------------------------------------


def _received_by_far_end(
    name: str, settings: Settings, api: FakeApi, kannel: KannelHarness | None
) -> Callable[[str], list[str]]:
    if name == "outbox":
        return lambda to: [e["text"] for e in map(json.loads, settings.sms_outbox.read_text()
                                                  .splitlines()) if e["to"] == to]
    if name == "http":
        return lambda to: [b["text"] for b in api.bodies() if b["to"] == to]
    assert kannel is not None

    def at_fakesmsc(to: str) -> list[str]:
        kannel.wait_for(lambda m: m.to == to)
        return [m.text for m in kannel.received() if m.to == to]

    return at_fakesmsc


@pytest.mark.parametrize("name", ["outbox", "http", "kannel"])
def test_provider_contract(
    name: str, settings: Settings, api: FakeApi, request: pytest.FixtureRequest
) -> None:
    harness: KannelHarness | None = None
    env: dict[str, str] = {"GATEWAY_SMS_PROVIDER": name}
    if name == "http":
        env.update(http_env(api))
    if name == "kannel":
        harness = request.getfixturevalue("kannel")
        env.update(harness.environ())
    (provider,) = build_providers(with_env(settings, **env), FAST)
    assert isinstance(provider, SmsProvider)
    assert provider.name == name and "sms" in provider.channels
    assert provider.channels <= {"sms", "voice"}

    # A number of its own per run, so messages of other tests at a shared Kannel never match.
    to = "+3161" + str(int(time.time() * 1000) % 10**7).zfill(7)
    text = "Contract ✓ ünïcode\n\n@127.0.0.1:8000 #135790"
    receipt = provider.send(
        OutgoingMessage(message_id="3f1e1d64-7d2a-4b6e-8d0e-1b2c3d4e5f60", to=to, channel="sms",
                        text=text, idempotency_key="contract:1", purpose="login")
    )
    assert receipt.provider_message_id is None or isinstance(receipt.provider_message_id, str)
    assert _received_by_far_end(name, settings, api, harness)(to) == [text]

    # Hostile input is refused before it reaches the far end (header injection, not E.164).
    for bad_to in ("+31612345678\r\nX-Kannel-To: +1", "0612345678", "", "+31612345678 "):
        with pytest.raises(ProviderError) as info:
            provider.send(OutgoingMessage(
                message_id="3f1e1d64-7d2a-4b6e-8d0e-1b2c3d4e5f61", to=bad_to, channel="sms",
                text="x", idempotency_key="contract:2", purpose="login"))
        assert not info.value.retryable
    if "voice" not in provider.channels:
        with pytest.raises(ProviderError) as info:
            provider.send(outgoing(channel="voice"))
        assert not info.value.retryable
    assert _received_by_far_end(name, settings, api, harness)(to) == [text]


# --- the dispatcher --------------------------------------------------------------------------


def dispatcher_with(
    settings: Settings, providers: list[Any]
) -> Dispatcher:
    return Dispatcher(providers, settings=settings)


def rows(app: Flask) -> list[SmsMessage]:
    with get_db(app).begin() as s:
        return list(s.scalars(sa.select(SmsMessage)))


def test_failover_after_timeout_delivers_one_code_once(app: Flask, api: FakeApi) -> None:
    settings = get_dispatcher(app).settings
    api.mode = "slow"
    slow = http_provider(settings, api)
    outbox = OutboxProvider(settings.sms_outbox)
    dispatcher = dispatcher_with(settings, [slow, outbox])
    with get_db(app).begin() as s:
        message = dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT, purpose="login",
                                  idempotency_key="otp:abc")
    assert message.status == Status.SENT and message.provider == "outbox"
    assert message.attempts == 2 and message.error == "http: timeout"

    # Exactly one message with one code reached the outbox; the provider that timed out got
    # the very same text and key, so even if it delivers late, the person holds one code.
    lines = settings.sms_outbox.read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == [CODE_TEXT]
    (slow_request,) = api.requests
    assert json.loads(slow_request["body"])["text"] == CODE_TEXT
    assert slow_request["headers"]["Idempotency-Key"] == "otp:abc"

    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'outcome="timeout",provider="http"' in metrics
    assert 'outcome="accepted",provider="outbox"' in metrics
    assert "612345678" not in metrics

    # A second call with the same key sends nothing and returns the same message.
    with get_db(app).begin() as s:
        again = dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT, purpose="login",
                                idempotency_key="otp:abc")
    assert again.id == message.id
    assert len(settings.sms_outbox.read_text().splitlines()) == 1 and len(api.requests) == 1


def test_concurrent_sends_with_one_key_send_once(app: Flask) -> None:
    dispatcher = get_dispatcher(app)
    results: list[str] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with get_db(app).begin() as s:
                results.append(dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT,
                                               purpose="login", idempotency_key="otp:race").id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 4
    assert len(dispatcher.settings.sms_outbox.read_text().splitlines()) == 1


def test_row_keeps_neither_text_nor_number(app: Flask) -> None:
    dispatcher = get_dispatcher(app)
    with get_db(app).begin() as s:
        dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT, purpose="login",
                        idempotency_key="otp:row")
    (row,) = rows(app)
    values = [str(getattr(row, c.key)) for c in SmsMessage.__table__.columns]
    assert not any("482913" in v or "612345678" in v for v in values)
    assert row.to_hmac == phone_hmac(dispatcher.settings, NUMBER) and row.to_last2 == "78"
    assert row.country == "NL" and row.segments == 1 and row.purpose == "login"


def test_all_providers_failing(app: Flask, api: FakeApi) -> None:
    settings = get_dispatcher(app).settings
    api.mode = "5xx"
    blocker = settings.instance_dir / "not-a-dir"
    blocker.write_text("")
    dispatcher = dispatcher_with(settings, [http_provider(settings, api),
                                            OutboxProvider(blocker / "sms.jsonl")])
    with pytest.raises(DeliveryFailed) as info, get_db(app).begin() as s:
        dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT, purpose="login",
                        idempotency_key="otp:fail")
    failed = info.value
    assert failed.reasons == ("http: HTTP 503", "outbox: outbox not writable")
    assert NUMBER not in str(failed) and "482913" not in repr(failed.reasons)
    with app.test_request_context("/?lang=en"):
        assert "try again" in str(failed.user_message)
    with app.test_request_context("/?lang=nl"):
        assert "opnieuw" in str(failed.user_message)
    (row,) = rows(app)
    assert row.id == failed.message_id and row.status == Status.FAILED and row.attempts == 2

    # The same key retried once a provider works again: same row, same text, sent.
    api.mode = "ok"
    with get_db(app).begin() as s:
        retried = dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT, purpose="login",
                                  idempotency_key="otp:fail")
    assert retried.id == row.id and retried.status == Status.SENT and retried.attempts == 3
    assert retried.provider == "http" and retried.provider_message_id == "prov-1"


def test_same_key_with_another_text_is_refused(app: Flask) -> None:
    dispatcher = get_dispatcher(app)
    with get_db(app).begin() as s:
        dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT, purpose="login",
                        idempotency_key="otp:same")
    with pytest.raises(ValueError, match="another message"), get_db(app).begin() as s:
        dispatcher.send(s, to=NUMBER, channel="sms", text=CODE_TEXT.replace("482913", "111111"),
                        purpose="login", idempotency_key="otp:same")
    assert len(dispatcher.settings.sms_outbox.read_text().splitlines()) == 1


def test_no_provider_for_the_channel(app: Flask, api: FakeApi) -> None:
    settings = get_dispatcher(app).settings
    dispatcher = dispatcher_with(settings, [http_provider(settings, api)])  # sms only
    with pytest.raises(DeliveryFailed) as info, get_db(app).begin() as s:
        dispatcher.send(s, to="+31201234567", channel="voice", text="Uw code is 1 2 3",
                        purpose="login", idempotency_key="otp:voice")
    assert info.value.reasons == () and api.requests == []
    assert rows(app)[0].status == Status.FAILED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"to": "0612345678"},
        {"to": "+31612345678\n"},
        {"channel": "fax"},
        {"purpose": "Login Now"},
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 201},
        {"text": ""},
    ],
)
def test_dispatcher_refuses_bad_arguments(app: Flask, kwargs: dict[str, str]) -> None:
    args = {"to": NUMBER, "channel": "sms", "text": CODE_TEXT, "purpose": "login",
            "idempotency_key": "otp:x", **kwargs}
    with pytest.raises(ValueError), get_db(app).begin() as s:
        get_dispatcher(app).send(s, **args)
    assert rows(app) == []


# --- delivery reports ------------------------------------------------------------------------


def sent_message(app: Flask, key: str = "otp:dlr") -> SmsMessage:
    with get_db(app).begin() as s:
        return get_dispatcher(app).send(s, to=NUMBER, channel="sms", text=CODE_TEXT,
                                        purpose="login", idempotency_key=key)


def status_of(app: Flask, message_id: str) -> str:
    with get_db(app).begin() as s:
        row = s.get(SmsMessage, message_id)
        assert row is not None
        return row.status


def token_for(app: Flask, message_id: str) -> str:
    return dlr_token(get_dispatcher(app).settings.derive_key("sms-dlr"), message_id)


def test_kannel_reports_move_forward_only(app: Flask) -> None:
    client = app.test_client()
    message = sent_message(app)
    url = f"/sms/dlr/kannel?id={message.id}&token={token_for(app, message.id)}"
    assert client.get(url + "&status=8").status_code == 200
    assert status_of(app, message.id) == "sent"
    assert client.get(url + "&status=1").status_code == 200
    assert status_of(app, message.id) == "delivered"
    for late in ("8", "4", "16", "2"):
        assert client.get(url + "&status=" + late).status_code == 200
        assert status_of(app, message.id) == "delivered"
    assert client.get(url + "&status=3").status_code == 400
    assert client.get(url + "&status=%d").status_code == 400


def test_kannel_rejected_and_undeliverable(app: Flask) -> None:
    client = app.test_client()
    for key, code, expected in (("otp:r", "16", "failed"), ("otp:u", "2", "undeliverable")):
        message = sent_message(app, key)
        url = f"/sms/dlr/kannel?id={message.id}&token={token_for(app, message.id)}&status={code}"
        assert client.get(url).status_code == 200
        assert status_of(app, message.id) == expected


@pytest.mark.parametrize(
    "query",
    [
        "id={id}&status=2&token=" + "0" * 64,
        "id={id}&status=2&token={other}",
        "id={id}&status=2",
        "id={id}&status=2&token={token}x",
        "id={id}&status=2&token=%00%ff",
        "id=../../etc&status=2&token={token}",
        "status=2&token={token}",
    ],
)
def test_forged_reports_are_refused(app: Flask, query: str) -> None:
    message = sent_message(app)
    other = sent_message(app, "otp:other")
    q = query.format(id=message.id, token=token_for(app, message.id),
                     other=token_for(app, other.id))
    answer = app.test_client().get("/sms/dlr/kannel?" + q)
    assert answer.status_code in (400, 403)
    assert status_of(app, message.id) == "sent"


def test_http_reports_with_a_status_mapping(make_app: Callable[..., Flask], settings: Settings,
                                            api: FakeApi) -> None:
    env = {**settings.environ, "GATEWAY_SMS_PROVIDER": "http", **http_env(api),
           "GATEWAY_SMS_HTTP_DLR_STATUS_FIELD": "report.state",
           "GATEWAY_SMS_HTTP_DLR_STATUSES": '{"DELIVRD": "delivered", "ACCEPTD": "sent"}'}
    app = make_app(sms_providers=("http",), environ=env)
    message = sent_message(app)
    assert message.provider == "http"
    dlr = api.bodies()[0]["callback_url"]
    path = dlr[len(settings.issuer):]
    client = app.test_client()
    # Forged: right shape, wrong token. POST needs no CSRF token (the HMAC authenticates).
    real_token = path.rsplit("token=", 1)[1]
    forged = path.replace(real_token, "0" * 64)
    assert client.post(forged, json={"report": {"state": "DELIVRD"}}).status_code == 403
    assert client.post(path, json={"report": {"state": "WHAT"}}).status_code == 400
    assert status_of(app, message.id) == "sent"
    assert client.post(path, json={"report": {"state": "DELIVRD"}}).status_code == 200
    assert status_of(app, message.id) == "delivered"


def test_dlr_url_carries_the_token(settings: Settings) -> None:
    dlr = DlrUrls.from_settings(with_env(settings, GATEWAY_SMS_DLR_BASE_URL="http://10.0.0.5:8080/"))
    url = dlr.url("kannel", "abc", {"status": "%d"})
    assert url == ("http://10.0.0.5:8080/sms/dlr/kannel?id=abc&status=%d&token="
                   + dlr_token(settings.derive_key("sms-dlr"), "abc"))


# --- command line ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, value in settings.environ.items():
        monkeypatch.setenv(name, value)
    if settings.database_url.startswith("sqlite"):
        engine = make_engine(settings.database_url)
        Base.metadata.create_all(engine)
        engine.dispose()
    return settings


def test_cli_sms_test_and_outbox(cli_env: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["sms", "test", "--to", "06 1234 5678"])
    assert result.exit_code == 0, result.output
    assert "accepted by outbox" in result.output and "612345678" not in result.output
    (entry,) = [json.loads(line) for line in cli_env.sms_outbox.read_text().splitlines()]
    assert entry["to"] == NUMBER and "Test message" in entry["text"]

    shown = runner.invoke(main, ["sms", "outbox"])
    assert shown.exit_code == 0 and NUMBER in shown.output and "Testbericht" in shown.output
    raw = runner.invoke(main, ["sms", "outbox", "--json", "--last", "1"])
    assert json.loads(raw.output) == entry


def test_cli_sms_outbox_empty(cli_env: Settings) -> None:
    result = CliRunner().invoke(main, ["sms", "outbox"])
    assert result.exit_code == 0 and "empty" in result.output


def test_cli_sms_test_refusals_are_one_line(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    bad_number = runner.invoke(main, ["sms", "test", "--to", "+1 900 555 0100"])
    assert bad_number.exit_code == 1
    assert bad_number.output.startswith("gateway: --to:") and bad_number.output.count("\n") == 1

    monkeypatch.setenv("GATEWAY_SMS_PROVIDER", "kannel")
    no_url = runner.invoke(main, ["sms", "test", "--to", NUMBER])
    assert no_url.exit_code == 1
    assert no_url.output.startswith("gateway: GATEWAY_KANNEL_URL:")
    assert no_url.output.count("\n") == 1

    monkeypatch.setenv("GATEWAY_SMS_PROVIDER", "http")
    monkeypatch.setenv("GATEWAY_SMS_HTTP_URL", "http://127.0.0.1:9/never")
    monkeypatch.setenv("GATEWAY_SMS_HTTP_AUTH_HEADER", "X-Key: k")
    down = runner.invoke(main, ["sms", "test", "--to", NUMBER])
    assert down.exit_code == 1
    assert down.output == "gateway: test message not sent (http: connection failed)\n"


# --- the Kannel harness itself ----------------------------------------------------------------


def test_missing_kannel_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import kannel_harness

    monkeypatch.setattr(kannel_harness, "binaries", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required under CI=true"):
        kannel_harness.require_kannel()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        kannel_harness.require_kannel()


def test_fakesmsc_output_parser() -> None:
    from tests.kannel_harness import parse_fakesmsc_output

    log = "\n".join([
        "2026-01-01 [1] [0] DEBUG: Got message 1: <Gateway +31611111111 text Line one>",
        "2026-01-01 [1] [0] DEBUG: Got message 2: <>",
        "2026-01-01 [1] [0] DEBUG: Got message 3: <@login.example.org #123456>",
        "2026-01-01 [1] [0] DEBUG: Got message 4: <Gateway +31622222222 ucs-2 %01A%00+>",
        "2026-01-01 [1] [0] DEBUG: Got message 5: <G +3163 udh %05%00%03%07%02%02 data BB>",
        "2026-01-01 [1] [0] DEBUG: Got message 6: <G +3163 udh %05%00%03%07%02%01 data AA+>",
    ])
    got = [(m.to, m.text) for m in parse_fakesmsc_output(log)]
    assert got == [
        ("+31611111111", "Line one\n\n@login.example.org #123456"),
        ("+31622222222", "Ł "),
        ("+3163", "AA BB"),
    ]
