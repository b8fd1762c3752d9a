"""Identity routes as plugins: where a login flow gets its proof of identity (issue 8, item 1;
ARCHITECTURE.md, "routes" and habit 2).

An `IdentityRoute` names itself, says which assurance levels it can reach and of which kind it
is, and checks its own block of `policies/routes.yaml`. Routes are found through the entry
points of the group `gateway.routes` (pyproject.toml) and offered when `routes.yaml` enables
them; `init_app(app, settings, policies)` builds the app's `RouteRegistry` at start-up (an
unknown name or a bad field stops start-up with a line naming routes.yaml and the field) and
keeps it in `app.extensions`. A route never sees the relying party or its protocol.

Two kinds:
- "account": the flow's own password and second-factor pages (`gateway.flows.views`). The one
  such route is `desk_account`, the DigiD-style account a desk enrolled: password for basis;
  password plus a second factor for midden, where the factor is an SMS code to a mobile, a
  spoken code by voice call to a landline (the account's verified phone, its `phone_channel`
  says which), or a TOTP authenticator app when one is confirmed (NIST SP 800-63B 5.1.3.3
  asks for an alternative to SMS). It cannot reach substantieel or hoog.
- "external": the route sends the browser elsewhere (`start`) and comes back through its own
  blueprint, which ends the flow with `gateway.flows.login.complete_external` or
  `fail_external` (eIDAS: `gateway.routes.eidas`).

Which routes a flow offers (`routes_for`): enabled routes that can reach a level the request
accepts, at or above the flow's level; the gateway's own "self" relying party (/account)
offers "account" routes only. `route_level` is the level an external route must ask its
identity provider for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy.orm import Session

from gateway.accounts.models import Account
from gateway.i18n import lazy_gettext
from gateway.levels import Level
from gateway.policy import PolicyError
from gateway.settings import Settings

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.wrappers import Response as BaseResponse

    from gateway.flows.login import LoginFlow
    from gateway.flows.types import RpRequest
    from gateway.policy import Policies

log = logging.getLogger(__name__)

#: The entry point group routes register under (its names are the routes' names).
ENTRY_POINT_GROUP = "gateway.routes"
#: Where the app keeps its registry.
EXTENSION_KEY = "gateway.routes"
#: The policy file that enables routes (named in start-up errors).
POLICY_FILE = "routes.yaml"

KIND_ACCOUNT = "account"
KIND_EXTERNAL = "external"
KINDS = frozenset({KIND_ACCOUNT, KIND_EXTERNAL})


class RouteInputError(Exception):
    """A route refuses what the person chose on the choose-route page (an unknown country,
    say) or cannot start now; `message` (a lazy_gettext string or str) is shown there and
    the flow goes back to choose_route."""

    def __init__(self, message: Any) -> None:
        super().__init__(str(message))
        self.message = message


class RouteConfigError(PolicyError):
    """routes.yaml names an unknown route or a route refuses its block; str() is one line
    naming the file and the field (like gateway.policy.PolicyError)."""


class IdentityRoute(Protocol):
    """One way to prove who you are.

    Example (what `desk_account` declares)::

        class DeskAccountRoute:
            name = "desk_account"
            label = lazy_gettext("Username and password")
            levels = frozenset({Level.BASIS, Level.MIDDEN})
            kind = "account"
            choice_template = None

            def configure(self, settings, config):   # its routes.yaml block, minus `enabled`
                if config:
                    raise ValueError(f"{next(iter(config))}: not a setting of this route")

            def init_app(self, app):                 # only when enabled; once
                pass

    An external route also has `start(flow, form) -> Response` (`ExternalRoute`).
    """

    @property
    def name(self) -> str:
        """The entry point name; also stored in flow and SSO rows (<= 40 characters)."""
        ...

    @property
    def label(self) -> Any:
        """A lazy_gettext string for the choose-route page."""
        ...

    @property
    def levels(self) -> frozenset[Level]: ...

    @property
    def kind(self) -> str:
        """"account" or "external"."""
        ...

    @property
    def choice_template(self) -> str | None:
        """A template included inside the route's form on the choose-route page (eIDAS: the
        country select), or None for a plain button. It sees `flow`, `route`, `errors`."""
        ...

    def configure(self, settings: Settings, config: Mapping[str, Any]) -> None:
        """Take the route's block of routes.yaml (without `enabled`); called at start-up for
        enabled routes before `init_app`. Raise ValueError("field: reason") when it is bad."""
        ...

    def init_app(self, app: Flask) -> None:
        """Register the route's blueprints; called once per app, only when enabled."""
        ...


class ExternalRoute(IdentityRoute, Protocol):
    def start(self, flow: LoginFlow, form: Mapping[str, str]) -> BaseResponse:
        """Called by the choose-route POST after the flow moved choose_route -> external
        (flow.route set, committed); returns the response that sends the browser on. May
        raise RouteInputError. What it adds to the database session is committed after it
        returns (rolled back when it raises)."""
        ...


class AccountRoute(IdentityRoute, Protocol):
    """The "account" kind: what the flow's own password and second-factor pages need."""

    @property
    def password_level(self) -> Level: ...

    def subject_key(self, account: Account) -> str: ...

    def factors(
        self, db: Session, settings: Settings, account: Account
    ) -> list[SecondFactor]: ...


class SecondFactor(StrEnum):
    SMS = "sms"
    VOICE = "voice"
    TOTP = "totp"

    @property
    def amr(self) -> str:
        """The RFC 8176 method value."""
        return _AMR[self]


_AMR = {SecondFactor.SMS: "sms", SecondFactor.VOICE: "tel", SecondFactor.TOTP: "otp"}


class DeskAccountRoute:
    """Username and password, then SMS, voice or an authenticator app for midden."""

    name = "desk_account"
    label = lazy_gettext("Username and password")
    levels = frozenset({Level.BASIS, Level.MIDDEN})
    kind = KIND_ACCOUNT
    choice_template: str | None = None
    #: The level a password alone reaches.
    password_level = Level.BASIS

    def configure(self, settings: Settings, config: Mapping[str, Any]) -> None:
        for key in config:
            raise ValueError(f"{key}: not a setting of this route")

    def init_app(self, app: Flask) -> None:
        """Its pages are the login flow's own (gateway.flows.views)."""

    def subject_key(self, account: Account) -> str:
        return f"account:{account.id}"

    def factors(self, db: Session, settings: Settings, account: Account) -> list[SecondFactor]:
        """The second factors this account can use now, SMS/voice first."""
        found: list[SecondFactor] = []
        if account.phone_e164 and account.phone_verified_at is not None:
            found.append(
                SecondFactor.VOICE if account.phone_channel == "voice" else SecondFactor.SMS
            )
        if has_confirmed_totp(db, settings, account):
            found.append(SecondFactor.TOTP)
        return found


def has_confirmed_totp(db: Session, settings: Settings, account: Account) -> bool:
    from gateway.accounts import totp

    return totp.has_totp(account)


def verify_totp(
    db: Session, settings: Settings, policies: Policies, account: Account, code: str
) -> bool:
    """Check an authenticator code (replay-protected, failures counted by
    gateway.accounts.totp); commits."""
    from gateway.accounts import totp

    return totp.verify_totp(db, settings, account, code, policies)


DESK_ACCOUNT = DeskAccountRoute()


# --- the registry -------------------------------------------------------------------------


@dataclass
class RouteRegistry:
    """The enabled routes of one app, by name, in routes.yaml's order."""

    routes: dict[str, IdentityRoute] = field(default_factory=dict)

    def get(self, name: object) -> IdentityRoute | None:
        return self.routes.get(name) if isinstance(name, str) else None

    def __iter__(self) -> Iterator[IdentityRoute]:
        return iter(self.routes.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.routes

    def account_route(self, name: str | None) -> AccountRoute:
        """The account-kind route `name` (desk_account when None): the flow's own pages
        serve it. KeyError when it is not enabled or not of that kind."""
        route = self.routes.get(name or DESK_ACCOUNT.name)
        if route is None or route.kind != KIND_ACCOUNT:
            raise KeyError(name)
        return cast(AccountRoute, route)

    def offered(self, request: RpRequest | None) -> list[IdentityRoute]:
        """Enabled routes this relying party may use (the "self" one: accounts only)."""
        from gateway.flows.types import RpProtocol

        # The "self" pages (/account, rp_id "self") need an account; other pages of the
        # gateway itself (/eidas/link, which needs an eID) choose their routes by level.
        if request is not None and request.protocol is RpProtocol.SELF and (
            request.rp_id == "self"
        ):
            return [r for r in self.routes.values() if r.kind == KIND_ACCOUNT]
        return list(self.routes.values())

    def reachable_levels(self, request: RpRequest | None = None) -> frozenset[Level]:
        levels: set[Level] = set()
        for route in self.offered(request):
            levels |= route.levels
        return frozenset(levels)

    def routes_for(self, request: RpRequest, level: Level) -> list[IdentityRoute]:
        return [r for r in self.offered(request) if _route_level(request, level, r) is not None]


def acceptable(request: RpRequest, flow_level: Level, level: Level) -> bool:
    """May a login at `level` end a flow logging in at `flow_level` for `request`?

    At or above the flow's level, and one the request accepts. The flow's own level always
    counts as accepted: when nothing acceptable is reachable and the request is not
    essential, the flow logs in at the highest reachable level (`RpRequest.target`) and the
    relying party decides what that is worth; a non-essential request takes any higher
    level too.
    """
    if level < flow_level:
        return False
    return level == flow_level or request.accepts(level) or not request.essential


def _route_level(request: RpRequest, flow_level: Level, route: IdentityRoute) -> Level | None:
    wanted = [lv for lv in route.levels if acceptable(request, flow_level, lv)]
    return min(wanted) if wanted else None


def route_level(flow: LoginFlow, route: IdentityRoute) -> Level:
    """The lowest level of `route` at or above the flow's level that the request accepts:
    what the route must ask its identity provider for. ValueError when there is none (the
    route should not have been offered)."""
    level = _route_level(flow.request, flow.level, route)
    if level is None:
        raise ValueError(f"route {route.name} cannot reach level {flow.level.label}")
    return level


def discover() -> dict[str, Any]:
    """Entry points of the group, by name (not loaded)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_route(entry_point: Any) -> IdentityRoute:
    """Load one entry point and check the shape the flow relies on."""
    route = entry_point.load()
    check_route(route, entry_point.name)
    return cast(IdentityRoute, route)


def check_route(route: Any, name: str) -> None:
    """TypeError when `route` does not keep the IdentityRoute contract (the flow relies on
    these at every login, so they are checked once at start-up)."""
    problems: list[str] = []
    if getattr(route, "name", None) != name:
        problems.append(f"name must be {name!r}, the entry point name")
    elif len(name) > 40:
        problems.append("name must be at most 40 characters")
    levels = getattr(route, "levels", None)
    if not isinstance(levels, frozenset) or not levels or not all(
        isinstance(lv, Level) for lv in levels
    ):
        problems.append("levels must be a non-empty frozenset of Level")
    kind = getattr(route, "kind", None)
    if kind not in KINDS:
        problems.append(f"kind must be one of {sorted(KINDS)}")
    if not str(getattr(route, "label", "") or ""):
        problems.append("label must be a non-empty string")
    template = getattr(route, "choice_template", None)
    if template is not None and not isinstance(template, str):
        problems.append("choice_template must be a template path or None")
    needed = ["configure", "init_app"]
    if kind == KIND_EXTERNAL:
        needed.append("start")
    elif kind == KIND_ACCOUNT:
        needed += ["factors", "subject_key"]
    problems += [f"{m}() is missing" for m in needed if not callable(getattr(route, m, None))]
    if problems:
        raise TypeError(f"identity route {name!r}: " + "; ".join(problems))


def build_registry(
    settings: Settings,
    policies: Policies,
    available: Mapping[str, Any] | None = None,
) -> RouteRegistry:
    """The enabled routes, configured; RouteConfigError names routes.yaml and the field.

    `available`: name -> entry point (default: the installed ones). Routes that are disabled
    are neither loaded nor configured, so a route whose package is missing can be switched off.
    """
    path = settings.policies_dir / POLICY_FILE
    found = discover() if available is None else dict(available)
    registry = RouteRegistry()
    for name, block in policies.routes.routes.items():
        where = f"{path}: field routes.{name}"
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise RouteConfigError(f"{where}: no such identity route (installed: {known})")
        if not block.enabled:
            continue
        try:
            route = load_route(found[name])
        except (ImportError, AttributeError, TypeError) as exc:
            raise RouteConfigError(f"{where}: cannot be loaded ({exc})") from None
        try:
            route.configure(settings, block.settings)
        except ValueError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "invalid"
            field_name, sep, reason = detail.partition(": ")
            if sep and field_name and " " not in field_name:
                raise RouteConfigError(f"{where}.{field_name}: {reason}") from None
            raise RouteConfigError(f"{where}: {detail}") from None
        registry.routes[name] = route
    if not registry.routes:
        raise RouteConfigError(f"{path}: field routes: enable at least one route")
    return registry


def init_app(app: Flask, settings: Settings, policies: Policies) -> RouteRegistry:
    """Build the app's registry and let each enabled route register its blueprints."""
    registry = build_registry(settings, policies)
    install(app, registry)
    return registry


def install(app: Flask, registry: RouteRegistry) -> None:
    app.extensions[EXTENSION_KEY] = registry
    for route in registry:
        route.init_app(app)


def get_registry(app: Flask | None = None) -> RouteRegistry:
    """The current app's registry."""
    from flask import current_app

    registry: RouteRegistry = (app or current_app).extensions[EXTENSION_KEY]
    return registry


# --- helpers for callers ------------------------------------------------------------------


def get_route(name: object) -> IdentityRoute | None:
    """An enabled route of the current app, by name."""
    return get_registry().get(name)


def routes_for(request: RpRequest, level: Level) -> list[IdentityRoute]:
    """Enabled routes of the current app that can log `request` in at `level` or above."""
    return get_registry().routes_for(request, level)


def reachable_levels(request: RpRequest | None = None) -> frozenset[Level]:
    """Every level the current app's enabled routes reach (for `request`: the routes that
    relying party may use)."""
    return get_registry().reachable_levels(request)


def names(routes: Iterable[IdentityRoute]) -> list[str]:
    return [r.name for r in routes]
