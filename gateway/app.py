"""The application factory: `create_app(settings=None)`.

No app exists at import time (the Flask tutorial's habit); each subsystem has an
`init_app(app, ...)` that this factory calls in order. Start-up checks everything it can:
settings, policies, database URL, keys, and provider settings, so a misconfigured gateway stops
with one line instead of failing at the first login.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Request
from werkzeug.datastructures import ImmutableMultiDict

from gateway import db
from gateway.policy import Policies, load_policies
from gateway.settings import Settings


class _Params(ImmutableMultiDict[str, str]):
    """Query, form and cookie values whose `get` answers a missing key with the default
    directly: werkzeug's raises and catches a BadRequestKeyError, an HTTPException built for
    every miss (a login asks for several absent keys on every request)."""

    def get(  # type: ignore[override]  # the same overloads, one implementation
        self, key: Any, default: Any = None, type: Any = None,
    ) -> Any:
        if key not in self:
            return default
        return super().get(key, default, type)


class GatewayRequest(Request):
    parameter_storage_class = _Params
    dict_storage_class = _Params


class GatewayFlask(Flask):
    """Flask, with `ensure_sync` remembered per function: Flask asks
    `inspect.iscoroutinefunction` again for the view and for every request hook on every
    request (eight times for a page here), and the answer for a function never changes.
    Requests are `GatewayRequest`s."""

    request_class = GatewayRequest
    _MAX_SYNC_CACHE = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            pass
        except TypeError:  # not hashable
            return super().ensure_sync(func)
        wrapped = super().ensure_sync(func)
        if len(self._sync) >= self._MAX_SYNC_CACHE:
            self._sync.clear()  # per-request callbacks (after_this_request) must not pile up
        self._sync[func] = wrapped
        return wrapped


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    policies = load_policies(settings.policies_dir)

    app = GatewayFlask(
        "gateway", instance_path=str(settings.instance_dir), instance_relative_config=False
    )
    app.config["GATEWAY_SETTINGS"] = settings
    app.config["GATEWAY_POLICIES"] = policies
    app.config["SECRET_KEY"] = settings.derive_key("flask-session")
    settings.instance_dir.mkdir(parents=True, exist_ok=True)

    _trust_proxies(app, settings)
    db.init_app(app, settings)

    from gateway import i18n, store, web

    store.init_app(app, settings)  # shared state: Redis when configured, else the database
    i18n.init_app(app, settings)
    web.init_app(app, settings)  # sessions, CSRF, headers, error pages, health, metrics

    from gateway import keys

    keys.init_app(app, settings)  # creates the signing keys on first start

    from gateway import mail

    mail.init_app(app, settings)

    from gateway.sms import dispatch as sms_dispatch
    from gateway.sms import views as sms_views

    sms_dispatch.init_app(app, settings)  # parses GATEWAY_KANNEL_* / GATEWAY_SMS_HTTP_* now

    from gateway.sms import service as sms_service

    sms_service.init_app(app, settings)  # codes + limits + dispatch: get_sms_service()
    sms_views.init_app(app)  # /sms/dlr delivery reports

    from gateway.desks import blueprint as desk_blueprints

    desk_blueprints.init_app(app)  # /desk staff pages and the /desk/api JSON API

    from gateway.desks import apply_views

    apply_views.init_app(app)  # /apply: the citizen's online application

    from gateway.flows import routes as identity_routes
    from gateway.flows import views as login_views

    # Identity routes enabled in policies/routes.yaml (entry points `gateway.routes`); each
    # registers its own blueprints. A bad routes.yaml stops start-up here.
    identity_routes.init_app(app, settings, policies)
    login_views.init_app(app)  # /login flow, /activate, /logout, /account

    from gateway.accounts import views as account_views

    account_views.init_app(app)  # /account/...: the citizen's "My account" pages

    from gateway.accounts import recovery_views
    from gateway.accounts import service as account_service

    recovery_views.init_app(app)  # /account/unblock, /account/recover: citizen self-help
    account_service.init_app(app)  # code deliveries start after the answer

    from gateway.desks import eidas_link_views

    eidas_link_views.init_app(app)  # /eidas/link: a link code for a European eID

    from gateway.idp import oidc

    oidc.init_app(app, settings)  # OpenID Connect provider: discovery, /oidc/*

    from gateway.idp.saml import views as saml_views

    saml_views.init_app(app)  # SAML 2.0 IdP: /saml/idp/*

    from gateway.portal import outbox as dev_outbox

    dev_outbox.init_app(app, settings)  # /dev/outbox, only under `gateway demo` in dev mode
    return app


#: Most reverse proxies in front of the gateway whose X-Forwarded-* headers are believed.
MAX_PROXY_HOPS = 5


def _trust_proxies(app: Flask, settings: Settings) -> None:
    """Behind N reverse proxies (GATEWAY_PROXY_HOPS=N), take the client address, scheme and
    host from the X-Forwarded-* headers they add, so per-IP limits count clients, not the
    proxy. Never more hops than configured: a client could otherwise forge its address.
    Only from a direct peer in GATEWAY_FORWARDED_ALLOW_IPS (gateway.forwarded): from others
    the headers are dropped."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    from gateway.forwarded import TrustedPeersOnly, allowed_peers
    from gateway.settings import SettingsError

    raw = settings.environ.get("GATEWAY_PROXY_HOPS", "0").strip() or "0"
    if not raw.isdigit() or int(raw) > MAX_PROXY_HOPS:
        raise SettingsError(
            f"GATEWAY_PROXY_HOPS: must be a whole number from 0 to {MAX_PROXY_HOPS}"
        )
    hops = int(raw)
    allowed = allowed_peers(settings.environ)  # checked even without proxies: fail at start
    if hops:
        fixed = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
        app.wsgi_app = (  # type: ignore[method-assign]
            fixed if allowed is None else TrustedPeersOnly(app.wsgi_app, fixed, allowed)
        )


def _current_app() -> Flask:
    """`current_app` without its LocalProxy (called on every request); outside an app
    context the proxy itself raises its RuntimeError, as before."""
    from flask.globals import _cv_app

    try:
        return _cv_app.get().app
    except LookupError:
        from flask import current_app

        return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def get_settings(app: Flask | None = None) -> Settings:
    s: Settings = (app or _current_app()).config["GATEWAY_SETTINGS"]
    return s


def get_policies(app: Flask | None = None) -> Policies:
    p: Policies = (app or _current_app()).config["GATEWAY_POLICIES"]
    return p
