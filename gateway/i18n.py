"""Dutch and English for every page and message (Babel, through Flask-Babel).

Message ids are English; `gateway/translations/nl/LC_MESSAGES/messages.po` holds the Dutch.
The compiled `.mo` is committed beside it; `python -m gateway.i18n compile` rebuilds it, and a
test fails when the two disagree or when a message used in code or templates has no Dutch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask
from flask.globals import _cv_app, _cv_request
from flask_babel import Babel, get_translations, gettext, lazy_gettext, ngettext
from jinja2 import pass_eval_context
from markupsafe import Markup

if TYPE_CHECKING:
    from flask import Response
    from jinja2.nodes import EvalContext

    from gateway.settings import Settings

TRANSLATIONS_DIR = Path(__file__).resolve().parent / "translations"
LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "nl"
#: Remembers an explicit ?lang= choice; not a tracking cookie (no identifier, only "nl"/"en").
LANGUAGE_COOKIE = "gw_lang"
LANGUAGE_COOKIE_MAX_AGE = 365 * 24 * 3600
#: The query parameter that switches the language on any page (shared/INTERFACE.md, "Forms").
LANGUAGE_PARAM = "lang"

__all__ = [
    "LANGUAGES",
    "current_language",
    "gettext",
    "init_app",
    "lazy_gettext",
    "ngettext",
]


def select_language() -> str:
    """?lang=nl|en, else the remembered choice, else Accept-Language, else Dutch."""
    # The context variables once, not a LocalProxy lookup per attribute.
    ctx = _cv_request.get(None)  # as has_request_context()
    if ctx is None:
        return DEFAULT_LANGUAGE
    g = _cv_app.get().g
    cached: str | None = g.get("gateway_language")
    if cached is not None:
        return cached
    request = ctx.request
    # `in` first: a missing key makes MultiDict.get raise and catch a BadRequestKeyError.
    args = request.args
    choice = args.get(LANGUAGE_PARAM, "") if LANGUAGE_PARAM in args else ""
    if choice in LANGUAGES:
        g.gateway_language_chosen = choice
        language = choice
    else:
        cookies = request.cookies
        remembered = cookies.get(LANGUAGE_COOKIE, "") if LANGUAGE_COOKIE in cookies else ""
        if remembered in LANGUAGES:
            language = remembered
        else:
            language = request.accept_languages.best_match(LANGUAGES) or DEFAULT_LANGUAGE
    g.gateway_language = language
    return language


def _translations() -> Any:
    """Flask-Babel's translations for this request (`get_translations`), kept in `g` for
    the locale Flask-Babel chose (a `force_locale` block has its own); outside a request or
    app context, Flask-Babel's answer as it is."""
    try:
        g = _cv_app.get().g  # what the `g` proxy looks up
    except LookupError:  # no app context
        return get_translations()
    state = g.get("_flask_babel")
    cached = g.get("_gateway_translations")
    locale = getattr(state, "babel_locale", None)
    if cached is not None and locale is not None and cached[0] is locale:
        return cached[1]
    translations = get_translations()
    g._gateway_translations = (getattr(g.get("_flask_babel"), "babel_locale", None), translations)
    return translations


def _template_gettext(translate: Callable[[str], str]) -> Callable[..., str]:
    """Jinja's newstyle `gettext` (jinja2.ext._make_new_gettext) over `translate`: Markup
    when autoescaping, and always formatted with `%` (so "%%" is "%" with or without
    variables, and variables are escaped); a string without "%" comes back as it is."""

    @pass_eval_context
    def gettext(eval_ctx: EvalContext, string: str, /, **variables: Any) -> str:
        rv = translate(string)
        if eval_ctx.autoescape:
            rv = Markup(rv)  # noqa: S704 - catalog text, trusted as jinja2.ext trusts it
        if not variables and "%" not in rv:
            return rv  # what `rv % {}` gives, without formatting
        return rv % variables

    return gettext


def current_language() -> str:
    """The language of the current request ("nl" or "en"); Dutch outside a request."""
    return select_language()


def init_app(app: Flask, settings: Settings) -> Babel:
    """Wire Flask-Babel: catalogs from gateway/translations, language chosen per request."""
    babel = Babel()
    babel.init_app(
        app,
        default_locale=DEFAULT_LANGUAGE,
        default_translation_directories=str(TRANSLATIONS_DIR),
        locale_selector=select_language,
    )
    secure = settings.https
    # Templates translate through the request's translations looked up once (Flask-Babel's
    # own template callables resolve the domain, the locale and its cache key for every
    # string, and a page has about fifteen); the same catalogs, so the same text.
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s: _translations().ugettext(s),
        ngettext=lambda s, p, n: _translations().ungettext(s, p, n),
        newstyle=True,
        pgettext=lambda c, s: _translations().upgettext(c, s),
        npgettext=lambda c, s, p, n: _translations().unpgettext(c, s, p, n),
    )
    # `_` and `gettext` in one call instead of jinja2.ext's alias -> newstyle wrapper ->
    # callable chain (three Context.call each). A rendered page gets them bound to the
    # request's catalog (context processor); macros of an imported template, which see
    # only the globals, look it up per string.
    app.jinja_env.globals["_"] = app.jinja_env.globals["gettext"] = _template_gettext(
        lambda s: _translations().ugettext(s)
    )

    @app.context_processor
    def _bound_gettext() -> dict[str, Any]:
        gettext = _template_gettext(_translations().ugettext)
        return {"_": gettext, "gettext": gettext}

    @app.after_request
    def _remember_language(response: Response) -> Response:
        chosen: str | None = _cv_app.get().g.get("gateway_language_chosen")
        if chosen is not None and _cv_request.get().request.cookies.get(LANGUAGE_COOKIE) != chosen:
            response.set_cookie(
                LANGUAGE_COOKIE,
                chosen,
                max_age=LANGUAGE_COOKIE_MAX_AGE,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )
        if response.mimetype == "text/html":
            # The same URL answers in another language for another browser or cookie.
            # As `"Vary" in response.headers`, without the BadRequestKeyError that Headers
            # raises and catches for a missing name.
            if any(key.lower() == "vary" for key, _ in response.headers):
                response.vary.update(("Accept-Language", "Cookie"))
            else:
                response.headers["Vary"] = "Accept-Language, Cookie"
        return response

    app.jinja_env.globals["current_language"] = current_language
    return babel


def compile_catalogs() -> list[Path]:
    """Compile every messages.po into its messages.mo; returns the files written."""
    written = []
    for po_path in sorted(TRANSLATIONS_DIR.glob("*/LC_MESSAGES/messages.po")):
        with po_path.open("rb") as fh:
            catalog = read_po(fh)
        mo_path = po_path.with_suffix(".mo")
        with mo_path.open("wb") as fh:
            write_mo(fh, catalog, use_fuzzy=False)
        written.append(mo_path)
    return written


if __name__ == "__main__":  # python -m gateway.i18n compile
    if sys.argv[1:] != ["compile"]:
        sys.exit("usage: python -m gateway.i18n compile")
    for path in compile_catalogs():
        print(f"wrote {path}")
