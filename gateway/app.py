"""The application factory: `create_app(settings=None)`.

No app exists at import time (the Flask tutorial's habit); each subsystem has an
`init_app(app, ...)` that this factory calls in order. Start-up checks everything it can:
settings, policies, database URL, keys, and provider settings, so a misconfigured gateway stops
with one line instead of failing at the first login.
"""

from __future__ import annotations

from flask import Flask

from gateway import db
from gateway.policy import Policies, load_policies
from gateway.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    policies = load_policies(settings.policies_dir)

    app = Flask("gateway", instance_path=str(settings.instance_dir), instance_relative_config=False)
    app.config["GATEWAY_SETTINGS"] = settings
    app.config["GATEWAY_POLICIES"] = policies
    app.config["SECRET_KEY"] = settings.derive_key("flask-session")
    settings.instance_dir.mkdir(parents=True, exist_ok=True)

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
    return app


def get_settings(app: Flask | None = None) -> Settings:
    from flask import current_app

    s: Settings = (app or current_app).config["GATEWAY_SETTINGS"]
    return s


def get_policies(app: Flask | None = None) -> Policies:
    from flask import current_app

    p: Policies = (app or current_app).config["GATEWAY_POLICIES"]
    return p
