"""End to end through a real Kannel (issue 3, "Done when"): a code sent through
bearerbox + smsbox reaches the fake SMSC with its exact text, and the delivery reports come back
over HTTP to the gateway (served on a loopback port) and mark the message delivered.

Needs the Debian packages `kannel` and `kannel-extras` (tests/kannel_harness.py): skipped when
missing, failed when missing under CI=true.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.db import get_db
from gateway.settings import Settings
from gateway.sms.dispatch import Dispatcher, get_dispatcher
from gateway.sms.messages import code_message
from gateway.sms.models import SmsMessage, Status
from gateway.sms.phone import Channel
from gateway.sms.providers import ProviderError, Timeouts, build_providers
from gateway.sms.providers.base import dlr_token
from tests.kannel_harness import KannelHarness

pytestmark = pytest.mark.kannel


class LoopbackServer:
    """The gateway's WSGI app on a free loopback port, in a thread (werkzeug make_server).
    The port is known before the app exists, so the app's settings can name it."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None
        return self.app.wsgi_app(environ, start_response)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


@pytest.fixture
def kannel_app(
    make_app: Callable[..., Flask], settings: Settings, kannel: KannelHarness,
    server: LoopbackServer,
) -> Flask:
    environ = {**settings.environ, **kannel.environ(GATEWAY_SMS_DLR_BASE_URL=server.base_url)}
    app = make_app(sms_providers=("kannel",), environ=environ)
    server.app = app
    return app


def unique_number() -> str:
    # A number of its own per test, so messages of other tests never match at fakesmsc.
    return "+3162" + str(time.monotonic_ns() // 1000 % 10**7).zfill(7)


def wait_for_status(app: Flask, message_id: str, wanted: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with get_db(app).begin() as s:
            status = s.scalar(sa.select(SmsMessage.status).where(SmsMessage.id == message_id))
        if status == wanted or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.05)


def test_code_reaches_fakesmsc_and_the_report_marks_it_delivered(
    kannel_app: Flask, kannel: KannelHarness, server: LoopbackServer
) -> None:
    to = unique_number()
    text = code_message(code="482913", purpose="login", language="nl",
                        issuer_host="login.example.org", channel=Channel.SMS, ttl_minutes=5)
    assert "\n" in text and text.endswith("#482913")  # the WebOTP line, on its own line
    with get_db(kannel_app).begin() as s:
        message = get_dispatcher(kannel_app).send(
            s, to=to, channel="sms", text=text, purpose="login", idempotency_key="otp:kannel-1"
        )
    assert message.provider == "kannel" and message.attempts == 1

    arrived = kannel.wait_for(lambda m: m.to == to)
    assert arrived.text == text and arrived.sender == "Gateway"
    assert [m.text for m in kannel.received() if m.to == to] == [text]  # exactly once

    # Kannel reports 8 (accepted by the SMSC) and then 1 (delivered) to /sms/dlr/kannel.
    assert wait_for_status(kannel_app, message.id, Status.DELIVERED) == Status.DELIVERED

    # A forged report (wrong token) is refused and changes nothing.
    forged = f"{server.base_url}/sms/dlr/kannel?id={message.id}&status=16&token={'0' * 64}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=5)
    assert refused.value.code == 403
    assert wait_for_status(kannel_app, message.id, Status.DELIVERED, 0) == Status.DELIVERED


def test_unicode_text_arrives_exactly(kannel_app: Flask, kannel: KannelHarness) -> None:
    to = unique_number()
    text = code_message(code="135790", purpose="login", language="en",
                        issuer_host="login.example.org", channel=Channel.SMS, ttl_minutes=5)
    text = "Łódź → " + text  # not GSM-7: goes as UCS-2 (coding 2), nothing replaced by "?"
    with get_db(kannel_app).begin() as s:
        message = get_dispatcher(kannel_app).send(
            s, to=to, channel="sms", text=text, purpose="login", idempotency_key="otp:kannel-2"
        )
    assert kannel.wait_for(lambda m: m.to == to).text == text
    assert wait_for_status(kannel_app, message.id, Status.DELIVERED) == Status.DELIVERED


def test_failover_from_a_dead_provider_to_kannel(
    kannel_app: Flask, kannel: KannelHarness, settings: Settings
) -> None:
    dead = Settings.from_env({
        **settings.environ, "GATEWAY_SMS_PROVIDER": "http",
        "GATEWAY_SMS_HTTP_URL": "http://127.0.0.1:9/never", "GATEWAY_SMS_HTTP_AUTH_HEADER": "X: y",
    })
    (first,) = build_providers(dead, Timeouts(connect=0.3, read=0.3))
    app_dispatcher = get_dispatcher(kannel_app)
    dispatcher = Dispatcher([first, *app_dispatcher.providers], settings=app_dispatcher.settings)
    to = unique_number()
    with get_db(kannel_app).begin() as s:
        message = dispatcher.send(s, to=to, channel="sms", text="Uw code is 246810",
                                  purpose="login", idempotency_key="otp:kannel-3")
    assert message.provider == "kannel" and message.attempts == 2
    assert message.error == "http: connection failed"
    kannel.wait_for(lambda m: m.to == to)
    assert [m.text for m in kannel.received() if m.to == to] == ["Uw code is 246810"]


def test_wrong_password_is_not_retryable(settings: Settings, kannel: KannelHarness) -> None:
    s = Settings.from_env({**settings.environ,
                           **kannel.environ(GATEWAY_KANNEL_PASSWORD="wrong-password")})
    (provider,) = build_providers(s, Timeouts(connect=1, read=2))
    from gateway.sms.providers import OutgoingMessage

    with pytest.raises(ProviderError) as info:
        provider.send(OutgoingMessage(
            message_id="5c1f0e8a-6f0b-4a8e-9c58-2e0f4a1b3c4d", to=unique_number(),
            channel="sms", text="x", idempotency_key="k", purpose="login",
        ))
    assert not info.value.retryable and str(info.value).startswith("HTTP 403")
    assert "wrong-password" not in str(info.value)


def test_report_token_is_bound_to_the_message(kannel_app: Flask) -> None:
    key = get_dispatcher(kannel_app).settings.derive_key("sms-dlr")
    assert dlr_token(key, "a") != dlr_token(key, "b")
    assert len(dlr_token(key, "a")) == 64
