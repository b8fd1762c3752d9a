"""What every SMS and voice provider looks like, its errors, and the factory that builds them.

Issue 3, item 4: providers sit behind the `SmsProvider` / `VoiceProvider` protocols and are
chosen and ordered by GATEWAY_SMS_PROVIDER (`Settings.sms_providers`, failover order). Each
implementation reads its own variables from `Settings.environ` when it is built, which happens
in `create_app`, so a bad value stops start-up with a `SettingsError` naming the variable.

Three implementations (the pypi/warehouse habit: a real one and a dev one behind one interface):

- `outbox` (`gateway.sms.providers.outbox`): development; appends JSON lines to a file;
- `kannel` (`gateway.sms.providers.kannel`): Kannel's sendsms interface, SMS only;
- `http` (`gateway.sms.providers.http`): a generic JSON webhook for commercial SMS/voice APIs.

Rules every implementation keeps:

- one call, one attempt: no retries inside a provider; failover is the dispatcher's job;
- short, bounded timeouts (`CONNECT_TIMEOUT`, `READ_TIMEOUT`), no redirects, TLS verified;
- an error never carries the text (it holds a code) or the number: `ProviderError` is built from
  fixed phrases, and errors of the HTTP library (whose messages contain URLs) are dropped.

Delivery reports come back to `/sms/dlr/<provider>?id=<message id>&token=<HMAC>`: the token is
an HMAC of our message id under a key of its own (`dlr_token`), so nobody can forge a report for
a message they did not send.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlencode, urlsplit

import requests

from gateway.settings import Settings, SettingsError

#: Seconds to open a TCP (and TLS) connection to a provider: a healthy one answers in
#: milliseconds, and a login is waiting.
CONNECT_TIMEOUT = 2.0
#: Seconds for the provider's answer, as a whole (not per read): bounds the wait a person sees
#: before the dispatcher moves on to the next provider.
READ_TIMEOUT = 5.0
#: A provider's answer is a short status; more than this is refused rather than buffered.
MAX_ANSWER_BYTES = 64 * 1024

CHANNELS = frozenset({"sms", "voice"})
#: ITU-T E.164: a plus, then at most 15 digits. Also keeps CR/LF out of provider headers.
E164 = re.compile(r"\+[1-9][0-9]{6,14}")

#: The key purpose for delivery-report tokens (`Settings.derive_key`).
DLR_KEY_PURPOSE = "sms-dlr"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message as handed to a provider. The dispatcher hands the SAME object (same text,
    so the same code, and the same idempotency key) to every provider it tries."""

    message_id: str
    to: str
    channel: str
    text: str
    idempotency_key: str
    purpose: str

    def __repr__(self) -> str:
        # Never the text (it holds a code) nor the number, even in a debugger or a log line.
        return (
            f"OutgoingMessage(message_id={self.message_id!r}, channel={self.channel!r}, "
            f"purpose={self.purpose!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ProviderReceipt:
    """A provider accepted the message; its own id when it gave one (Kannel does not)."""

    provider_message_id: str | None


class ProviderError(Exception):
    """A provider did not accept the message.

    `reason` is a fixed phrase (`"HTTP 503"`, `"timeout"`, `"malformed answer"`): never the text
    or the number. `retryable` says whether trying the same provider again later may help
    (5xx, timeouts) or not (rejected credentials, a refused request); the dispatcher moves on
    to the next provider either way.
    """

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable

    def __str__(self) -> str:
        return self.reason


class ProviderTimeout(ProviderError):
    """The provider did not answer in time. It may still deliver: hence the same text and
    idempotency key go to the next provider, so a person never holds two different codes."""

    def __init__(self, reason: str = "timeout") -> None:
        super().__init__(reason, retryable=True)


@runtime_checkable
class SmsProvider(Protocol):
    name: str
    channels: frozenset[str]

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        """Hand `msg` over; return a receipt or raise ProviderError / ProviderTimeout."""
        ...


@runtime_checkable
class VoiceProvider(Protocol):
    """The same shape as SmsProvider; a provider is a voice provider when "voice" is in its
    `channels` (the text is then spoken, as the provider's API does)."""

    name: str
    channels: frozenset[str]

    def send(self, msg: OutgoingMessage) -> ProviderReceipt: ...


Provider = SmsProvider | VoiceProvider


def check_message(provider: Provider, msg: OutgoingMessage) -> None:
    """What every provider checks before calling out: a channel it has, an E.164 number."""
    if msg.channel not in provider.channels:
        raise ProviderError("channel not supported", retryable=False)
    if not E164.fullmatch(msg.to):
        raise ProviderError("number not in E.164 form", retryable=False)


# --- delivery-report tokens ------------------------------------------------------------------


def dlr_token(key: bytes, message_id: str) -> str:
    """The token that proves a delivery report is about a message we sent through that URL."""
    return hmac.new(key, b"dlr:" + message_id.encode(), hashlib.sha256).hexdigest()


def check_dlr_token(key: bytes, message_id: str, token: str) -> bool:
    expected = dlr_token(key, message_id).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class DlrUrls:
    """Builds the delivery-report URL a provider calls back for one message.

    The base is GATEWAY_SMS_DLR_BASE_URL when set (Kannel often reaches the gateway on an
    internal address), else GATEWAY_ISSUER.
    """

    base_url: str
    key: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> DlrUrls:
        base = (settings.environ.get("GATEWAY_SMS_DLR_BASE_URL") or settings.issuer).strip()
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise SettingsError("GATEWAY_SMS_DLR_BASE_URL: must be an http:// or https:// URL")
        return cls(base.rstrip("/"), settings.derive_key(DLR_KEY_PURPOSE))

    def url(self, provider: str, message_id: str, extra: Mapping[str, str] | None = None) -> str:
        query = {"id": message_id, **(extra or {}), "token": dlr_token(self.key, message_id)}
        # Kannel substitutes %d with the status; urlencode would escape the percent sign.
        return f"{self.base_url}/sms/dlr/{provider}?" + urlencode(query, safe="%")


# --- HTTP with hard limits ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


def http_session() -> requests.Session:
    s = requests.Session()
    # No proxies, netrc credentials or CA bundles from the environment: the provider is reached
    # exactly as configured, and TLS is checked against certifi's CA bundle.
    s.trust_env = False
    return s


def call(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeouts: Timeouts,
    headers: Mapping[str, str],
    data: bytes | None = None,
) -> Answer:
    """One HTTP request with a total deadline and a size limit; errors as ProviderError.

    The exceptions of requests carry the URL (which may hold credentials) in their message:
    they are never chained or logged, only turned into fixed phrases.
    """
    deadline = time.monotonic() + timeouts.connect + timeouts.read
    try:
        response = session.request(
            method,
            url,
            headers=dict(headers),
            data=data,
            timeout=(timeouts.connect, timeouts.read),
            allow_redirects=False,
            verify=True,
            stream=True,
        )
    except requests.exceptions.ConnectTimeout:
        raise ProviderTimeout("connect timeout") from None
    except requests.exceptions.Timeout:
        raise ProviderTimeout("timeout") from None
    except requests.exceptions.SSLError:
        raise ProviderError("TLS error") from None
    except requests.exceptions.ConnectionError:
        raise ProviderError("connection failed") from None
    except requests.exceptions.RequestException:
        raise ProviderError("request failed") from None
    try:
        body = _read_limited(response, deadline)
    finally:
        response.close()
    return Answer(response.status_code, body)


def _read_limited(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        # The read timeout applies to each socket read; the deadline bounds the whole answer,
        # so a provider that trickles bytes cannot hold a login.
        for chunk in response.iter_content(chunk_size=4096):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise ProviderError("answer too large")
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise ProviderTimeout("timeout")
    except requests.exceptions.RequestException:
        raise ProviderTimeout("timeout") from None
    return b"".join(chunks)


# --- the factory ----------------------------------------------------------------------------

Builder = Callable[[Settings, DlrUrls, Timeouts], Provider]


def _builders() -> dict[str, Builder]:
    from gateway.sms.providers import http, kannel, outbox

    return {
        "outbox": outbox.OutboxProvider.from_settings,
        "kannel": kannel.KannelProvider.from_settings,
        "http": http.HttpProvider.from_settings,
    }


def build_providers(settings: Settings, timeouts: Timeouts | None = None) -> list[Provider]:
    """The configured providers in failover order; SettingsError names a bad variable."""
    builders = _builders()
    dlr = DlrUrls.from_settings(settings)
    found: list[Provider] = []
    for name in settings.sms_providers:
        builder = builders.get(name)
        if builder is None:
            raise SettingsError(f"GATEWAY_SMS_PROVIDER: unknown provider {name!r}")
        found.append(builder(settings, dlr, timeouts or Timeouts()))
    return found
