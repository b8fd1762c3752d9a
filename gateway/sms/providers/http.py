"""A generic JSON webhook provider, for commercial SMS and voice APIs.

One POST of a JSON object per message; the provider's answer gives its message id; delivery
reports come back to `/sms/dlr/http`. Everything provider-specific is configuration:

- GATEWAY_SMS_HTTP_URL (required): the API endpoint; https:// in production.
- GATEWAY_SMS_HTTP_AUTH_HEADER (required): one header `Name: value`, e.g.
  `Authorization: Bearer ...`.
- GATEWAY_SMS_HTTP_CHANNELS: `sms` (default), `voice` or `sms,voice`.
- GATEWAY_SMS_HTTP_FIELDS: JSON object, our field -> the provider's field (default below).
- GATEWAY_SMS_HTTP_EXTRA: JSON object of constant fields sent with every message (`{}`).
- GATEWAY_SMS_HTTP_ID_FIELD: where the provider's message id sits in its answer (`id`);
  empty when the provider gives none.
- GATEWAY_SMS_HTTP_DLR_STATUS_FIELD: where the status sits in a delivery report (`status`).
- GATEWAY_SMS_HTTP_DLR_STATUSES: JSON object, the provider's status -> ours (default: our
  own words map to themselves).

Our fields are `to` (E.164), `text`, `channel` (`sms`/`voice`), `idempotency_key`,
`message_id` (our id), `purpose` and `dlr_url`; `to` and `text` must be mapped. The default
mapping is `{"to": "to", "text": "text", "channel": "channel", "idempotency_key":
"idempotency_key", "message_id": "reference", "dlr_url": "callback_url"}`. A field name may be a
dotted path (`message.body` builds `{"message": {"body": ...}}`); in the answer a path may use
list indexes (`messages.0.id`). The idempotency key also goes in an `Idempotency-Key` header
(IETF draft-ietf-httpapi-idempotency-key-header), so a provider that honours it never sends one
message twice.

Delivery reports: the provider calls the `dlr_url` we gave it (which carries our message id and
an HMAC token), GET or POST; the status is read from the query string, a JSON body or a form
body at GATEWAY_SMS_HTTP_DLR_STATUS_FIELD and mapped through GATEWAY_SMS_HTTP_DLR_STATUSES onto
`sent`, `delivered`, `undeliverable` or `failed`. Example for a provider that says
`{"state": "DELIVRD"}`: `GATEWAY_SMS_HTTP_DLR_STATUS_FIELD=state`,
`GATEWAY_SMS_HTTP_DLR_STATUSES={"DELIVRD": "delivered", "UNDELIV": "undeliverable"}`.

Answers: 2xx is accepted (with a JSON answer holding the id, unless the id field is empty); a
2xx whose answer is not what was promised is an error, so the dispatcher tries the next provider
(with the same text and key: at worst one code arrives twice, never two codes). 408, 429 and 5xx
are retryable errors; other statuses are not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.settings import Settings, SettingsError
from gateway.sms.providers.base import (
    CHANNELS,
    DlrUrls,
    OutgoingMessage,
    ProviderError,
    ProviderReceipt,
    Timeouts,
    call,
    check_message,
    http_session,
)

OUR_FIELDS = ("to", "text", "channel", "idempotency_key", "message_id", "purpose", "dlr_url")
DEFAULT_FIELDS: dict[str, str] = {
    "to": "to",
    "text": "text",
    "channel": "channel",
    "idempotency_key": "idempotency_key",
    "message_id": "reference",
    "dlr_url": "callback_url",
}
#: Statuses a delivery report may set (gateway.sms.models.Status values).
REPORT_STATUSES = ("sent", "delivered", "undeliverable", "failed")

MAX_PROVIDER_ID = 128
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,4096}")


def _path(name: str, value: object, *, max_depth: int = 5) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise SettingsError(f"{name}: field names must be strings")
    parts = tuple(value.split("."))
    if len(parts) > max_depth or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise SettingsError(f"{name}: {value!r} is not a field name or dotted path")
    return parts


def _json_object(environ: Mapping[str, str], name: str, default: dict[str, Any]) -> dict[str, Any]:
    raw = environ.get(name, "").strip()
    if not raw:
        return dict(default)
    try:
        value = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{name}: not valid JSON") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name}: must be a JSON object")
    return value


def _put(target: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        nxt = target.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ProviderError("field mapping conflict", retryable=False)
        target = nxt
    target[path[-1]] = value


def dig(document: object, path: tuple[str, ...]) -> object:
    """The value at `path` (keys, or list indexes for lists), None when absent."""
    for key in path:
        if isinstance(document, dict):
            document = document.get(key)
        elif isinstance(document, list) and key.isdigit() and int(key) < len(document):
            document = document[int(key)]
        else:
            return None
    return document


class HttpProvider:
    name = "http"

    def __init__(
        self,
        *,
        url: str,
        auth_header: tuple[str, str],
        channels: frozenset[str],
        fields: Mapping[str, tuple[str, ...]],
        extra: Mapping[str, Any],
        id_field: tuple[str, ...] | None,
        dlr_status_field: tuple[str, ...],
        dlr_statuses: Mapping[str, str],
        dlr: DlrUrls,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.url = url
        self._auth_header = auth_header
        self.channels = channels
        self.fields = dict(fields)
        self.extra = dict(extra)
        self.id_field = id_field
        self.dlr_status_field = dlr_status_field
        self.dlr_statuses = dict(dlr_statuses)
        self.dlr = dlr
        self.timeouts = timeouts or Timeouts()
        self._http = http_session()

    def __repr__(self) -> str:
        return f"HttpProvider(url={self.url!r}, channels={sorted(self.channels)!r})"

    @classmethod
    def from_settings(cls, settings: Settings, dlr: DlrUrls, timeouts: Timeouts) -> HttpProvider:
        env = settings.environ
        url = env.get("GATEWAY_SMS_HTTP_URL", "").strip()
        if not url:
            raise SettingsError(
                "GATEWAY_SMS_HTTP_URL: required when GATEWAY_SMS_PROVIDER includes http"
            )
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise SettingsError("GATEWAY_SMS_HTTP_URL: the port is not a number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise SettingsError("GATEWAY_SMS_HTTP_URL: must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise SettingsError(
                "GATEWAY_SMS_HTTP_URL: credentials go in GATEWAY_SMS_HTTP_AUTH_HEADER"
            )
        if not settings.dev and parts.scheme != "https":
            raise SettingsError("GATEWAY_SMS_HTTP_URL: must be https:// in production")

        header = env.get("GATEWAY_SMS_HTTP_AUTH_HEADER", "")
        name, sep, value = header.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise SettingsError(
                "GATEWAY_SMS_HTTP_AUTH_HEADER: required, as one header 'Name: value'"
                " (printable ASCII)"
            )

        raw_channels = env.get("GATEWAY_SMS_HTTP_CHANNELS", "sms")
        channels = frozenset(c.strip() for c in raw_channels.split(",") if c.strip())
        if not channels or not channels <= CHANNELS:
            raise SettingsError("GATEWAY_SMS_HTTP_CHANNELS: 'sms', 'voice' or 'sms,voice'")

        raw_fields = _json_object(env, "GATEWAY_SMS_HTTP_FIELDS", DEFAULT_FIELDS)
        fields: dict[str, tuple[str, ...]] = {}
        for ours, theirs in raw_fields.items():
            if ours not in OUR_FIELDS:
                raise SettingsError(
                    f"GATEWAY_SMS_HTTP_FIELDS: unknown field {ours!r}"
                    f" (known: {', '.join(OUR_FIELDS)})"
                )
            if theirs is not None:
                fields[ours] = _path("GATEWAY_SMS_HTTP_FIELDS", theirs)
        if "to" not in fields or "text" not in fields:
            raise SettingsError("GATEWAY_SMS_HTTP_FIELDS: 'to' and 'text' must be mapped")
        if len(set(fields.values())) != len(fields):
            raise SettingsError("GATEWAY_SMS_HTTP_FIELDS: two fields map to the same name")
        paths = list(fields.values())
        if any(a != b and a[: len(b)] == b for a in paths for b in paths):
            raise SettingsError("GATEWAY_SMS_HTTP_FIELDS: one field path lies inside another")

        extra = _json_object(env, "GATEWAY_SMS_HTTP_EXTRA", {})
        clash = sorted(set(extra) & {p[0] for p in fields.values()})
        if clash:
            raise SettingsError(f"GATEWAY_SMS_HTTP_EXTRA: {clash[0]!r} is also a mapped field")

        raw_id = env.get("GATEWAY_SMS_HTTP_ID_FIELD", "id").strip()
        id_field = _path("GATEWAY_SMS_HTTP_ID_FIELD", raw_id) if raw_id else None
        status_field = _path(
            "GATEWAY_SMS_HTTP_DLR_STATUS_FIELD",
            env.get("GATEWAY_SMS_HTTP_DLR_STATUS_FIELD", "status").strip() or "status",
        )
        statuses = _json_object(
            env, "GATEWAY_SMS_HTTP_DLR_STATUSES", {s: s for s in REPORT_STATUSES}
        )
        for theirs, ours in statuses.items():
            if ours not in REPORT_STATUSES:
                raise SettingsError(
                    f"GATEWAY_SMS_HTTP_DLR_STATUSES: {theirs!r} maps to {ours!r};"
                    f" use one of {', '.join(REPORT_STATUSES)}"
                )
        return cls(
            url=url,
            auth_header=(name, value),
            channels=channels,
            fields=fields,
            extra=extra,
            id_field=id_field,
            dlr_status_field=status_field,
            dlr_statuses=statuses,
            dlr=dlr,
            timeouts=timeouts,
        )

    def payload(self, msg: OutgoingMessage) -> dict[str, Any]:
        values: dict[str, object] = {
            "to": msg.to,
            "text": msg.text,
            "channel": msg.channel,
            "idempotency_key": msg.idempotency_key,
            "message_id": msg.message_id,
            "purpose": msg.purpose,
            "dlr_url": self.dlr.url(self.name, msg.message_id),
        }
        body: dict[str, Any] = json.loads(json.dumps(self.extra))  # a deep copy
        for ours, path in self.fields.items():
            _put(body, path, values[ours])
        return body

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        check_message(self, msg)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": msg.idempotency_key,
            self._auth_header[0]: self._auth_header[1],
        }
        answer = call(
            self._http, "POST", self.url, timeouts=self.timeouts, headers=headers,
            data=json.dumps(self.payload(msg), ensure_ascii=False).encode("utf-8"),
        )
        if not 200 <= answer.status < 300:
            retryable = answer.status in (408, 429) or answer.status >= 500
            raise ProviderError(f"HTTP {answer.status}", retryable=retryable)
        if self.id_field is None:
            return ProviderReceipt(provider_message_id=None)
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise ProviderError("malformed answer") from None
        found = dig(document, self.id_field)
        if isinstance(found, bool) or not isinstance(found, str | int) or not str(found).strip():
            raise ProviderError("answer without message id")
        provider_id = str(found).strip()
        if len(provider_id) > MAX_PROVIDER_ID or not provider_id.isprintable():
            raise ProviderError("malformed answer")
        return ProviderReceipt(provider_message_id=provider_id)

    def report_status(self, query: Mapping[str, str], body: object) -> str | None:
        """Our status for a delivery report (query string first, then the body); None when
        the report carries no status we know."""
        raw: object = query.get(".".join(self.dlr_status_field))
        if raw is None:
            raw = dig(body, self.dlr_status_field)
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            return None
        return self.dlr_statuses.get(str(raw))
