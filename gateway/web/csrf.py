"""Cross-site request forgery protection for every form (OWASP CSRF Prevention Cheat Sheet,
"synchronizer token pattern").

Each session has one random secret; `csrf_token()` hands out that secret XOR-masked with fresh
random bytes, so the token in a page changes on every render (no BREACH-style recovery through
compressed responses). Every POST, PUT, PATCH and DELETE must carry a valid token in the form
field `csrf_token` or the `X-CSRF-Token` header, unless its view (or its blueprint) is marked
`@csrf_exempt`: endpoints that authenticate their caller otherwise (the OIDC token endpoint,
SAML bindings, SMS delivery reports, the bearer-token desk API).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Request
from flask.globals import _cv_app, _cv_request
from werkzeug.exceptions import BadRequest

from gateway.i18n import lazy_gettext

F = TypeVar("F", bound=Callable[..., Any])

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_KEY = "_csrf"
_SECRET_BYTES = 32
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CSRFError(BadRequest):
    """The form's token is missing, wrong, or from a session that has expired."""

    description = lazy_gettext(
        "This form has expired. Please go back, reload the page and try again."
    )


def csrf_exempt(target: F) -> F:
    """Mark a view function, or a whole Blueprint, as not needing a CSRF token.

    Only for endpoints that authenticate the caller some other way; a person's browser form
    must never be exempt.
    """
    target._gateway_csrf_exempt = True  # type: ignore[attr-defined]
    return target


def _secret(create: bool) -> bytes | None:
    session = _cv_request.get().session  # what the `session` proxy looks up
    value = session.get(SESSION_KEY)
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) == _SECRET_BYTES:
            return raw
    if not create:
        return None
    value = new_secret()
    session[SESSION_KEY] = value
    return bytes.fromhex(value)


def new_secret() -> str:
    """A fresh session secret as stored under SESSION_KEY (gateway.web.sessions gives every
    new or regenerated session one at once, so its first form costs no extra write)."""
    return secrets.token_bytes(_SECRET_BYTES).hex()


def _xor(a: bytes, b: bytes) -> bytes:
    # As integers: a byte-by-byte generator cost more than the rest of a token. Neither
    # operand is secret on its own (the mask is fresh random); the comparison with the
    # secret is hmac.compare_digest.
    if len(a) != len(b):
        raise ValueError("different lengths")
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(len(a))


def csrf_token() -> str:
    """A token for the current session, for a hidden form field (`_forms.html` adds it)."""
    secret = _secret(create=True)
    assert secret is not None
    mask = secrets.token_bytes(_SECRET_BYTES)
    return base64.urlsafe_b64encode(mask + _xor(mask, secret)).decode().rstrip("=")


def validate_csrf_token(token: str | None) -> bool:
    if not token or len(token) > 200:
        return False
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return False
    if len(raw) != 2 * _SECRET_BYTES:
        return False
    secret = _secret(create=False)
    if secret is None:
        return False
    return hmac.compare_digest(_xor(raw[:_SECRET_BYTES], raw[_SECRET_BYTES:]), secret)


def _exempt(request: Request) -> bool:
    app = _cv_app.get().app
    view = app.view_functions.get(request.endpoint or "")
    if getattr(view, "_gateway_csrf_exempt", False):
        return True
    for name in request.blueprints:
        if getattr(app.blueprints.get(name), "_gateway_csrf_exempt", False):
            return True
    return False


def protect() -> None:
    request = _cv_request.get().request  # the context variable once, not a proxy per use
    if request.method not in UNSAFE_METHODS:
        return
    if request.routing_exception is not None:
        return  # no such page or method: the 404/405 answer says so
    if _exempt(request):
        return
    # Reading the form enforces MAX_CONTENT_LENGTH (413) before anything else looks at it.
    token = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not validate_csrf_token(token):
        raise CSRFError()


def init_app(app: Flask) -> None:
    app.before_request(protect)
    app.jinja_env.globals["csrf_token"] = csrf_token
