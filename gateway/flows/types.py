"""The neutral pair of types where relying-party protocols and identity routes meet.

ARCHITECTURE.md, "The shape in one picture": a protocol module (`idp/oidc`, `idp/saml`, the
gateway's own "self" pages) turns its protocol request into an `RpRequest`; the login flow
(`gateway.flows.login`) runs an identity route and single sign-on and hands back an
`AuthnResult`, or an `AuthnError` with a neutral `ErrorCode` that the protocol translates
into its own vocabulary (OIDC Core 1.0 section 3.1.2.6 error codes, SAML 2.0 Core section
3.2.2.2 status codes). Protocols never import routes and routes never import protocols.

Both types are frozen and survive a JSON round trip (`to_json`/`from_json`), because the
request is persisted in the login flow's row while the citizen is busy logging in.

Mapping hints for protocol modules (kept here so both sides agree):

============================  ==================================  ===========================
ErrorCode                     OIDC `error`                        SAML second-level status
============================  ==================================  ===========================
login_required                login_required                      NoPassive
level_unavailable             unmet_authentication_requirements   NoAuthnContext
                              (OIDC Core 5.5.1.1)
cancelled                     access_denied                       AuthnFailed
failed                        access_denied                       AuthnFailed
expired                       access_denied                       AuthnFailed
============================  ==================================  ===========================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.levels import Level

#: Longest RP id, login hint or resume URL accepted; they come from protocol messages.
MAX_RP_ID = 200
MAX_LOGIN_HINT = 200
MAX_RESUME_URL = 2000
#: The opaque protocol state is kept in the flow row; a protocol needing more keeps its own.
MAX_STATE_JSON = 16 * 1024

#: Authentication Method Reference values (RFC 8176): password, SMS, telephone call, OTP app,
#: and "mfa" for an external route that vouches for more than one factor without naming them
#: (eIDAS substantial and high).
AMR_VALUES = frozenset({"pwd", "sms", "tel", "otp", "mfa"})
#: Longest subject key (the column width of the flow and SSO rows).
MAX_SUBJECT_KEY = 80
#: Longest attribute name and value an external route may hand over (a formatted address is
#: the longest value in practice).
MAX_ATTRIBUTE_NAME = 40
MAX_ATTRIBUTE_VALUE = 1000
MAX_ATTRIBUTES = 32


class RpProtocol(StrEnum):
    OIDC = "oidc"
    SAML = "saml"
    #: The gateway's own pages (/account): a relying party that is the gateway itself.
    SELF = "self"


class ErrorCode(StrEnum):
    """Why a login ended without a result, in neutral words (see the table above)."""

    #: Passive request (OIDC prompt=none, SAML IsPassive) and no usable SSO session.
    LOGIN_REQUIRED = "login_required"
    #: The level asked for is essential and no available route can reach it.
    LEVEL_UNAVAILABLE = "level_unavailable"
    #: The citizen chose to stop.
    CANCELLED = "cancelled"
    #: Authentication failed for good (the flow cannot continue).
    FAILED = "failed"
    #: The flow took longer than its lifetime.
    EXPIRED = "expired"


class RpRequestError(ValueError):
    """An RpRequest that cannot be honoured as given (a protocol module's bug or bad input)."""


def _level(value: Any) -> Level:
    if isinstance(value, Level):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Level(value)
        except ValueError:
            pass
    if isinstance(value, str):
        try:
            return Level.from_label(value)
        except KeyError:
            pass
    raise RpRequestError(f"not an assurance level: {value!r}")


@dataclass(frozen=True)
class RpRequest:
    """What a relying party asked for.

    `levels` are the acceptable levels in order of preference; `at_least(...)` builds the
    common "this level or higher" request, preferring the lowest (least effort for the
    citizen). `essential` means a level outside `levels` is an error rather than a lower
    login (OIDC `acr` as an essential claim; SAML RequestedAuthnContext with a comparison).

    `resume_url` is where the browser goes when the flow ends, with `flow=<id>` added to its
    query; the protocol module there calls `gateway.flows.login.finish(flow_id)`.
    `state` is opaque to the flow (the protocol's own: redirect_uri, OIDC state and nonce,
    SAML request id and RelayState, ...) and must be JSON-serialisable.
    """

    rp_id: str
    protocol: RpProtocol
    levels: tuple[Level, ...]
    resume_url: str
    essential: bool = False
    force_authn: bool = False
    passive: bool = False
    #: Seconds; a login older than this must be repeated (OIDC max_age).
    max_age: int | None = None
    login_hint: str | None = None
    ui_locale: str | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    #: Where the protocol finally sends the browser when that is another origin than
    #: `resume_url` (an OIDC redirect_uri, a SAML ACS URL): the login pages allow it as
    #: CSP form-action, because browsers apply form-action to the redirects after a form.
    return_origin: str | None = None
    #: The relying party can use a login only with the person's BSN (a DigiD-style SAML
    #: service provider registered with --bsn): a route whose logins may come without one
    #: (a European eID not linked to an account) says so where the person chooses it.
    needs_bsn: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rp_id, str) or not 0 < len(self.rp_id) <= MAX_RP_ID:
            raise RpRequestError("rp_id must be a non-empty string")
        object.__setattr__(self, "protocol", RpProtocol(self.protocol))
        levels = tuple(_level(v) for v in self.levels)
        if not levels or len(set(levels)) != len(levels):
            raise RpRequestError("levels must name at least one level, each once")
        object.__setattr__(self, "levels", levels)
        if not isinstance(self.resume_url, str) or not 0 < len(self.resume_url) <= MAX_RESUME_URL:
            raise RpRequestError("resume_url must be a non-empty URL")
        if self.max_age is not None and (
            isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age < 0
        ):
            raise RpRequestError("max_age must be a number of seconds")
        if self.return_origin is not None:
            parts = urlsplit(self.return_origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
                raise RpRequestError("return_origin must be an http(s) URL")
            object.__setattr__(self, "return_origin", f"{parts.scheme}://{parts.netloc}")
        if self.login_hint is not None and len(self.login_hint) > MAX_LOGIN_HINT:
            object.__setattr__(self, "login_hint", None)  # a hint, never worth an error
        try:
            state_json = json.dumps(dict(self.state), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise RpRequestError("state must be JSON-serialisable") from exc
        if len(state_json) > MAX_STATE_JSON:
            raise RpRequestError("state is too large")
        # A frozen copy: nobody can change the request behind the flow's back.
        object.__setattr__(self, "state", MappingProxyType(json.loads(state_json)))

    @classmethod
    def at_least(cls, minimum: Level, **kwargs: Any) -> RpRequest:
        """A request for `minimum` or any higher level, lowest preferred."""
        return cls(levels=tuple(lv for lv in Level if lv >= minimum), **kwargs)

    @property
    def minimum(self) -> Level:
        return min(self.levels)

    def accepts(self, level: Level) -> bool:
        return level in self.levels

    def target(self, reachable: frozenset[Level]) -> Level | None:
        """The level to log in at, given the levels the routes can reach.

        The first preferred level that is reachable; otherwise, when not essential, the
        highest reachable level (the relying party decides what a lower login is worth);
        None when essential and nothing acceptable is reachable.
        """
        for level in self.levels:
            if level in reachable:
                return level
        if self.essential or not reachable:
            return None
        return max(reachable)

    def to_json(self) -> str:
        return json.dumps(
            {
                "rp_id": self.rp_id,
                "protocol": self.protocol.value,
                "levels": [lv.label for lv in self.levels],
                "resume_url": self.resume_url,
                "essential": self.essential,
                "force_authn": self.force_authn,
                "passive": self.passive,
                "max_age": self.max_age,
                "login_hint": self.login_hint,
                "ui_locale": self.ui_locale,
                "state": dict(self.state),
                "return_origin": self.return_origin,
                "needs_bsn": self.needs_bsn,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> RpRequest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RpRequestError("not JSON") from exc
        if not isinstance(data, dict):
            raise RpRequestError("not a JSON object")
        try:
            return cls(
                rp_id=data["rp_id"],
                protocol=RpProtocol(data["protocol"]),
                levels=tuple(data["levels"]),
                resume_url=data["resume_url"],
                essential=bool(data.get("essential", False)),
                force_authn=bool(data.get("force_authn", False)),
                passive=bool(data.get("passive", False)),
                max_age=data.get("max_age"),
                login_hint=data.get("login_hint"),
                ui_locale=data.get("ui_locale"),
                state=data.get("state") or {},
                return_origin=data.get("return_origin"),
                needs_bsn=bool(data.get("needs_bsn", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RpRequestError(f"malformed request: {type(exc).__name__}") from exc


@dataclass(frozen=True)
class AuthnResult:
    """A successful login, as the protocol module receives it from `finish()`.

    `subject_key` is stable per person and route ("account:<id>"); protocols derive their
    pairwise identifiers from it. `auth_time` is when the person last actually authenticated
    (not when SSO reused it), as OIDC `auth_time` and SAML AuthnInstant require.
    """

    subject_key: str
    account_id: str | None
    route: str
    level: Level
    amr: tuple[str, ...]
    auth_time: datetime
    sso_session_id: str | None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _level(self.level))
        object.__setattr__(self, "amr", tuple(self.amr))
        if any(a not in AMR_VALUES for a in self.amr):
            raise ValueError("amr values must be RFC 8176 values the gateway uses")
        if self.auth_time.tzinfo is None:
            raise ValueError("auth_time must be timezone-aware")
        object.__setattr__(self, "auth_time", self.auth_time.astimezone(UTC))
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def to_json(self) -> str:
        return json.dumps(
            {
                "subject_key": self.subject_key,
                "account_id": self.account_id,
                "route": self.route,
                "level": self.level.label,
                "amr": list(self.amr),
                "auth_time": self.auth_time.isoformat(),
                "sso_session_id": self.sso_session_id,
                "attributes": dict(self.attributes),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> AuthnResult:
        data = json.loads(text)
        return cls(
            subject_key=data["subject_key"],
            account_id=data.get("account_id"),
            route=data["route"],
            level=_level(data["level"]),
            amr=tuple(data.get("amr") or ()),
            auth_time=datetime.fromisoformat(data["auth_time"]),
            sso_session_id=data.get("sso_session_id"),
            attributes=data.get("attributes") or {},
        )


@dataclass(frozen=True)
class AuthnError:
    """A login that ended without a result: what the protocol answers its relying party."""

    code: ErrorCode
    rp_request: RpRequest


@dataclass(frozen=True)
class RouteIdentity:
    """What an external identity route proved, for `gateway.flows.login.complete_external`.

    `subject_key` is stable per person and route (<= 80 characters, for example
    "eidas:<64 hex>"); never a raw national identifier. `attributes` use the neutral names
    of the contract (given_name, family_name, birthdate, birth_name, place_of_birth, address,
    gender, country). `account_id` is the desk account this identity is linked to, if any.
    `auth_time` is when the person authenticated at the identity provider (None: now).

    The constructor checks the shape, so a route's bug fails loudly before anything is stored.
    """

    subject_key: str
    level: Level
    amr: tuple[str, ...]
    attributes: Mapping[str, str]
    account_id: str | None = None
    auth_time: datetime | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.subject_key, str)
            or not 0 < len(self.subject_key) <= MAX_SUBJECT_KEY
            or not self.subject_key.isprintable()
        ):
            raise ValueError(f"subject_key must be 1 to {MAX_SUBJECT_KEY} printable characters")
        object.__setattr__(self, "level", _level(self.level))
        object.__setattr__(self, "amr", tuple(self.amr))
        if any(a not in AMR_VALUES for a in self.amr):
            raise ValueError("amr values must be RFC 8176 values the gateway uses")
        attributes = dict(self.attributes)
        if len(attributes) > MAX_ATTRIBUTES or any(
            not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= MAX_ATTRIBUTE_NAME
            or len(v) > MAX_ATTRIBUTE_VALUE
            for k, v in attributes.items()
        ):
            raise ValueError("attributes must be a small mapping of short strings")
        object.__setattr__(self, "attributes", MappingProxyType(attributes))
        if self.account_id is not None and not isinstance(self.account_id, str):
            raise ValueError("account_id must be a string or None")
        if self.auth_time is not None:
            if self.auth_time.tzinfo is None:
                raise ValueError("auth_time must be timezone-aware")
            object.__setattr__(self, "auth_time", self.auth_time.astimezone(UTC))
