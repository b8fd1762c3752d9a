"""The web base every page stands on (issue 2, "Web base").

`init_app` wires, in order: request ids and JSON request logs, server-side sessions in the
shared store, CSRF protection of every unsafe method, security headers and body limits,
error pages, the Jinja helpers, and the gateway's own pages (home, health, metrics).

What other modules use:

- `csrf_exempt` for views (or blueprints) that authenticate callers otherwise;
- `no_store` for authentication pages; `allow_form_action(url)` for pages that post to a
  relying party (SAML POST binding, OIDC form_post);
- `regenerate_session()` at every login; `request_id()` for the audit log;
- templates: extend `base.html`, import macros from `_forms.html`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from flask import Flask, request
from flask.globals import _cv_request

from gateway.i18n import LANGUAGE_PARAM, LANGUAGES
from gateway.settings import Settings
from gateway.web import csrf, errors, headers, logs, sessions
from gateway.web.csrf import csrf_exempt, csrf_token
from gateway.web.errors import error_response
from gateway.web.headers import MAX_CONTENT_LENGTH, allow_form_action, no_store
from gateway.web.logs import request_id
from gateway.web.sessions import IDLE_TIMEOUT, RENEW_AFTER, regenerate_session

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONTENT_LENGTH",
    "RENEW_AFTER",
    "allow_form_action",
    "csrf_exempt",
    "csrf_token",
    "error_response",
    "init_app",
    "no_store",
    "regenerate_session",
    "request_id",
]


def language_url(language: str) -> str:
    """The current page in another language: same path and query, `lang` replaced."""
    if language not in LANGUAGES:
        raise ValueError(language)
    req = request._get_current_object()  # type: ignore[attr-defined]
    args = [(k, v) for k, v in req.args.items(multi=True) if k != LANGUAGE_PARAM]
    args.append((LANGUAGE_PARAM, language))
    path: str = req.path
    return path + "?" + urlencode(args)


#: Bounds the template URL cache (it holds endpoints without values and static files).
_URL_CACHE_SIZE = 512


def template_url_for(app: Flask) -> Callable[..., str]:
    """`url_for` for templates that remembers the URLs every request builds alike: an
    endpoint without values, or a static file (no cache busting), per script root. Others
    (a flow's form action, `_external`, a blueprint-relative ".name") are built each time."""
    build = app.url_for
    # Without host or subdomain matching, a relative URL depends only on the endpoint, its
    # values and the script root (werkzeug's MapAdapter.build).
    cacheable = not app.url_map.host_matching and not app.subdomain_matching
    cache: dict[tuple[str, str | None, str], str] = {}

    def url_for(endpoint: str, /, **values: Any) -> str:
        if not cacheable or endpoint[:1] == "." or app.url_default_functions:
            return build(endpoint, **values)
        filename = None
        if values:
            filename = values.get("filename")
            if (
                len(values) != 1
                or not isinstance(filename, str)
                or not (endpoint == "static" or endpoint.endswith(".static"))
            ):
                return build(endpoint, **values)
        ctx = _cv_request.get(None)  # as has_request_context(), without the proxies
        if ctx is None:
            return build(endpoint, **values)
        key = (endpoint, filename, ctx.request.script_root)
        url = cache.get(key)
        if url is None:
            url = build(endpoint, **values)
            if url[:1] == "/" and url[:2] != "//" and len(cache) < _URL_CACHE_SIZE:
                cache[key] = url
        return url

    return url_for


def form_macros(app: Flask) -> Callable[[], Any]:
    """`{% set forms = form_macros() %}`: the macros of _forms.html as `{% import
    "_forms.html" as forms %}` gives them (the module Jinja keeps per template), without the
    import's comparison of every global name, which costs a login page as much as a tenth
    of its rendering."""
    return lambda: app.jinja_env.get_template("_forms.html").module


def init_app(app: Flask, settings: Settings) -> None:
    logs.init_app(app)  # first: its after_request runs last and sees the final status
    sessions.init_app(app, settings)
    csrf.init_app(app)
    headers.init_app(app, settings)
    errors.init_app(app)
    app.jinja_env.globals["url_for"] = template_url_for(app)
    app.jinja_env.globals["form_macros"] = form_macros(app)
    app.jinja_env.globals["language_url"] = language_url
    app.jinja_env.globals["request_id"] = request_id
    app.jinja_env.globals["languages"] = LANGUAGES

    from gateway.web.views import bp

    app.register_blueprint(bp)
