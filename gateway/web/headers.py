"""Security headers on every response, and caching rules for pages with personal data.

Content-Security-Policy follows CSP Level 3 without 'unsafe-inline' (OWASP Secure Headers
Project); HSTS (RFC 6797) only when the issuer is https. Pages of an authentication flow must
not be kept by browsers or proxies: `@no_store` marks them, and any HTML page that contains a
form gets `Cache-Control: no-store` by default.

Widening form-action: the SAML POST binding and OIDC form_post hand the browser a form that
posts to the relying party, so that page must allow the relying party's origin. Call
`allow_form_action(url)` in the view that renders such a page. The policy of the page that
holds the form is the one that counts, and browsers (Chromium) also apply form-action to the
redirects that follow a form submission: a login form whose POST ends in a redirect to a
relying party needs that origin allowed on the page with the form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, g
from flask.globals import _cv_app, _cv_request

from gateway.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

#: Largest request body accepted (forms, SAML POSTs, API JSON); larger bodies get a 413 page.
MAX_CONTENT_LENGTH = 256 * 1024

CSP_DIRECTIVES: tuple[tuple[str, str], ...] = (
    ("default-src", "'self'"),
    ("script-src", "'self'"),
    ("style-src", "'self'"),
    ("img-src", "'self' data:"),
    ("frame-ancestors", "'none'"),
    ("form-action", "'self'"),
    ("base-uri", "'none'"),
    ("object-src", "'none'"),
)
PERMISSIONS_POLICY = (
    "camera=(), microphone=(), geolocation=(), payment=(), usb=(), serial=(), bluetooth=(), "
    "hid=(), display-capture=(), browsing-topics=()"
)
HSTS = "max-age=63072000; includeSubDomains"
_ORIGIN = re.compile(r"\Ahttps?://[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z")
_FORM = re.compile(rb"<form[\s>]", re.IGNORECASE)


def no_store(view: F) -> F:
    """Mark a view's responses `Cache-Control: no-store` (authentication pages)."""
    view._gateway_no_store = True  # type: ignore[attr-defined]
    return view


def allow_form_action(url: str) -> None:
    """Let this response's page submit a form to (or be redirected to) the origin of `url`."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if parts.username or parts.password or not _ORIGIN.match(origin):
        # Anything else could smuggle a directive into the policy.
        raise ValueError("form-action target must be an http(s) URL")
    targets: list[str] = g.setdefault("gateway_form_action", [])
    if origin not in targets:
        targets.append(origin)


def _policy(extra: list[str]) -> str:
    parts = []
    for name, value in CSP_DIRECTIVES:
        if name == "form-action" and extra:
            value = " ".join([value, *extra])
        parts.append(f"{name} {value}")
    return "; ".join(parts)


#: The policy of a page that widens nothing (almost every response): built once.
_DEFAULT_POLICY = _policy([])


def content_security_policy() -> str:
    """This response's policy: the default, widened by `allow_form_action` when a page asked."""
    # The app context's `g` read once, not through its LocalProxy (every response).
    extra: list[str] | None = _cv_app.get().g.get("gateway_form_action")
    return _policy(extra) if extra else _DEFAULT_POLICY


#: The headers every response gets after Content-Security-Policy, in this order.
_FIXED_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),  # for browsers without frame-ancestors
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", PERMISSIONS_POLICY),
)
_HSTS_HEADER = ("Strict-Transport-Security", HSTS)
_NO_STORE_HEADERS = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
#: Every name the hook sets, lowercased: a response that already has one of them gets them
#: one by one (`Headers.set`: ours replace the view's, where the view put it).
_HOOK_NAMES = frozenset(
    name.lower()
    for name, _ in (("Content-Security-Policy", ""), *_FIXED_HEADERS, _HSTS_HEADER)
) | {name.lower() for name, _ in _NO_STORE_HEADERS}


def _has_form(response: Response) -> bool:
    if response.mimetype != "text/html" or response.direct_passthrough or response.is_streamed:
        return False
    return _FORM.search(response.get_data()) is not None


def init_app(app: Flask, settings: Settings) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_CONTENT_LENGTH
    https = settings.https

    @app.after_request
    def _security_headers(response: Response) -> Response:
        items = [("Content-Security-Policy", content_security_policy()), *_FIXED_HEADERS]
        if https:
            items.append(_HSTS_HEADER)
        view = app.view_functions.get(_cv_request.get().request.endpoint or "")
        if getattr(view, "_gateway_no_store", False) or _has_form(response):
            items.extend(_NO_STORE_HEADERS)
        h = response.headers
        for key, _ in h:
            if key.lower() in _HOOK_NAMES:
                for name, value in items:
                    h[name] = value
                return response
        # None of them yet: appended in one step, as `h[name] = value` would append each
        # (the values are constants, or origins checked by allow_form_action: no newlines).
        h._list.extend(items)
        return response
