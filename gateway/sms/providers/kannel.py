"""Kannel's sendsms interface (smsbox), with delivery reports; SMS only.

Variables (read at start-up; a bad one stops it with a line naming the variable):

- GATEWAY_KANNEL_URL: the sendsms URL, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`. In
  production it must be https:// unless the host is a loopback address (the request carries
  the sendsms password).
- GATEWAY_KANNEL_USERNAME, GATEWAY_KANNEL_PASSWORD: a `sendsms-user` group of smsbox.
- GATEWAY_KANNEL_FROM: the sender, alphanumeric (at most 11 characters, GSM 03.40 TP-OA) or a
  number (at most 15 digits, E.164).
- GATEWAY_KANNEL_SMSC (optional): the smsc-id to route through.

The request is a POST with the parameters in `X-Kannel-*` headers and the text as the
`text/plain; charset=UTF-8` body (Kannel user guide, "Sending SMS via HTTP POST"): the number,
the text and the password never sit in a URL, so they cannot end up in a proxy's or Kannel's
URL log. Text that fits GSM-7 goes as coding 0; anything else as coding 2 (UCS-2), so that
Kannel does not replace characters with "?".

Delivery reports: `dlr-mask=31` (delivered 1, undeliverable 2, queued on SMSC 4, accepted by
SMSC 8, rejected by SMSC 16) and a `dlr-url` on `/sms/dlr/kannel` that carries our message id,
`status=%d` (Kannel fills it in) and an HMAC token; `gateway.sms.views` takes them.

Kannel configuration this expects (the operator's side): `max-messages` in the sendsms-user
group high enough for a concatenated code message (3 is plenty), and Kannel's `access-log`
either off or kept as sensitive, since Kannel logs the number and text of every message there.
Kannel gives no message id in its answer (`0: Accepted for delivery`), and it has no
idempotency key: a retry through another provider carries the same text, so the same code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from gateway.settings import Settings, SettingsError, is_loopback_host
from gateway.sms.messages import segments
from gateway.sms.providers.base import (
    DlrUrls,
    OutgoingMessage,
    ProviderError,
    ProviderReceipt,
    Timeouts,
    call,
    check_message,
    http_session,
)

#: Every status Kannel can report (see the module docstring).
DLR_MASK = 31

_ALPHA_SENDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .\-]{0,10}")
_NUMERIC_SENDER = re.compile(r"\+?[0-9]{1,15}")
_SMSC_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SECRET = re.compile(r"[\x21-\x7e]{1,128}")


def _env(environ: Mapping[str, str], name: str, *, required: bool = True) -> str:
    value = environ.get(name, "").strip()
    if required and not value:
        raise SettingsError(f"{name}: required when GATEWAY_SMS_PROVIDER includes kannel")
    return value




class KannelProvider:
    name = "kannel"
    channels = frozenset({"sms"})

    def __init__(
        self,
        *,
        url: str,
        username: str,
        password: str,
        sender: str,
        smsc: str | None,
        dlr: DlrUrls,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.url = url
        self._username = username
        self._password = password
        self.sender = sender
        self.smsc = smsc
        self.dlr = dlr
        self.timeouts = timeouts or Timeouts()
        self._http = http_session()

    def __repr__(self) -> str:
        return f"KannelProvider(url={self.url!r})"

    @classmethod
    def from_settings(cls, settings: Settings, dlr: DlrUrls, timeouts: Timeouts) -> KannelProvider:
        env = settings.environ
        url = _env(env, "GATEWAY_KANNEL_URL")
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise SettingsError("GATEWAY_KANNEL_URL: the port is not a number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError("GATEWAY_KANNEL_URL: must be an http:// or https:// URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise SettingsError(
                "GATEWAY_KANNEL_URL: no user, query or fragment (credentials go in"
                " GATEWAY_KANNEL_USERNAME and GATEWAY_KANNEL_PASSWORD)"
            )
        if not settings.dev and parts.scheme != "https" and not is_loopback_host(parts.hostname):
            raise SettingsError(
                "GATEWAY_KANNEL_URL: must be https:// in production unless on loopback"
            )
        username = _env(env, "GATEWAY_KANNEL_USERNAME")
        password = _env(env, "GATEWAY_KANNEL_PASSWORD")
        for name, value in (
            ("GATEWAY_KANNEL_USERNAME", username),
            ("GATEWAY_KANNEL_PASSWORD", password),
        ):
            if not _SECRET.fullmatch(value):
                raise SettingsError(
                    f"{name}: printable ASCII without spaces, at most 128 characters"
                )
        sender = _env(env, "GATEWAY_KANNEL_FROM")
        if not (_NUMERIC_SENDER.fullmatch(sender) or _ALPHA_SENDER.fullmatch(sender)):
            raise SettingsError(
                "GATEWAY_KANNEL_FROM: at most 11 letters/digits, or a number of at most 15 digits"
            )
        smsc = _env(env, "GATEWAY_KANNEL_SMSC", required=False) or None
        if smsc is not None and not _SMSC_ID.fullmatch(smsc):
            raise SettingsError("GATEWAY_KANNEL_SMSC: letters, digits, '_', '-' or '.' only")
        return cls(
            url=url, username=username, password=password, sender=sender, smsc=smsc, dlr=dlr,
            timeouts=timeouts,
        )

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        check_message(self, msg)
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-Kannel-Username": self._username,
            "X-Kannel-Password": self._password,
            "X-Kannel-From": self.sender,
            "X-Kannel-To": msg.to,
            "X-Kannel-Coding": "0" if segments(msg.text).encoding == "GSM-7" else "2",
            "X-Kannel-DLR-Mask": str(DLR_MASK),
            "X-Kannel-DLR-Url": self.dlr.url(self.name, msg.message_id, {"status": "%d"}),
        }
        if self.smsc:
            headers["X-Kannel-SMSC"] = self.smsc
        answer = call(
            self._http, "POST", self.url, timeouts=self.timeouts, headers=headers,
            data=msg.text.encode("utf-8"),
        )
        # 202 "0: Accepted for delivery" or "3: Queued for later delivery" (smsbox.c).
        if answer.status in (200, 202):
            return ProviderReceipt(provider_message_id=None)
        if answer.status in (401, 403):
            raise ProviderError(f"HTTP {answer.status} (credentials refused)", retryable=False)
        raise ProviderError(f"HTTP {answer.status}", retryable=answer.status >= 500)


__all__ = ["DLR_MASK", "KannelProvider"]
