"""Translations: the committed .mo matches the .po, and every message has its Dutch.

The second test extracts every msgid from gateway/**/*.py and gateway/templates (Babel's python
and Jinja2 extractors) and fails on any without a non-empty, non-fuzzy Dutch translation,
whoever's module it is in.
"""

from __future__ import annotations

import io
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient

from gateway.i18n import TRANSLATIONS_DIR, current_language, gettext

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
PO = TRANSLATIONS_DIR / "nl" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")

KEYWORDS = {**DEFAULT_KEYWORDS, "lazy_gettext": None, "lazy_ngettext": (1, 2)}
METHOD_MAP = [
    ("**/migrations/**", "ignore"),
    ("**.py", "python"),
    ("templates/**.html", "jinja2.ext:babel_extract"),
]


def catalog() -> Catalog:
    with PO.open("rb") as fh:
        return read_po(fh)


def translations(cat: Catalog) -> dict[object, object]:
    """msgid -> msgstr of the translated, non-fuzzy entries (the header aside: Babel stamps it
    with the time of reading, so bytes never match)."""
    def key(value: object) -> object:
        return value if isinstance(value, str) else tuple(value)  # type: ignore[call-overload]

    return {key(m.id): key(m.string) for m in cat if m.id and m.string and not m.fuzzy}


def test_compiled_catalog_matches_the_po_file() -> None:
    with MO.open("rb") as fh:
        committed = read_mo(fh)
    assert translations(committed) == translations(catalog()), (
        "messages.mo is stale: run `.venv/bin/python -m gateway.i18n compile`"
    )
    # The same check catches a .mo written from a different .po: prove it can fail.
    rebuilt = io.BytesIO()
    changed = catalog()
    entry = changed.get("Page not found")
    assert entry is not None
    entry.string = "Iets anders"
    write_mo(rebuilt, changed)
    rebuilt.seek(0)
    assert translations(read_mo(rebuilt)) != translations(catalog())


def extracted() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(PACKAGE), METHOD_MAP, keywords=KEYWORDS, options_map={"**.html": {}}
    ):
        ids = message if isinstance(message, tuple) else (message,)
        for msgid in ids[:1]:
            if msgid:
                found.setdefault(msgid, []).append(f"{filename}:{lineno}")
    return found


def test_every_message_in_code_and_templates_has_dutch() -> None:
    found = extracted()
    assert "Page not found" in found  # the extractor sees both Python and templates
    assert "Skip to main content" in found
    cat = catalog()
    missing = []
    for msgid, where in sorted(found.items()):
        entry = cat.get(msgid)
        strings = entry.string if entry is not None else None
        texts = list(strings) if isinstance(strings, tuple) else [strings]
        if entry is None or entry.fuzzy or not all(texts):
            missing.append(f"{where[0]}: {msgid!r}")
    assert not missing, "messages without Dutch:\n" + "\n".join(missing)


def test_placeholders_agree() -> None:
    problems = [
        f"{message.id!r}: {error}"
        for message, errors in catalog().check()
        for error in errors
    ]
    assert not problems, "\n".join(problems)


def test_dutch_by_default_and_english_on_request(app: Flask, client: FlaskClient) -> None:
    with app.test_request_context("/"):
        assert current_language() == "nl"
        assert gettext("Page not found") == "Pagina niet gevonden"
    with app.test_request_context("/?lang=en"):
        assert current_language() == "en"
        assert gettext("Page not found") == "Page not found"
    with app.test_request_context("/", headers={"Accept-Language": "en-US"}):
        assert current_language() == "en"
    body = client.get("/").get_data(as_text=True)
    assert "Inloggen vanuit het buitenland" in body and "Direct naar de inhoud" in body


def test_template_gettext_keeps_jinja_newstyle_semantics(app: Flask) -> None:
    """`_` in a page (bound per render) and in an imported macro (global) behaves as
    jinja2.ext's newstyle gettext: Markup, `%` always applied, variables escaped."""
    from flask import render_template_string

    source = """{% import "_forms.html" as forms %}{{ _("100%%") }}|{{ _("x %(v)s", v="<b>") }}|
{{- _("Log in") }}|{{ gettext("Log in") }}|{{ forms.input("n", "N", error="e") }}"""
    with app.test_request_context("/?lang=nl"):
        html = render_template_string(source)
    assert html.startswith("100%|x &lt;b&gt;|Inloggen|Inloggen|")
    assert '<span class="visually-hidden">Fout:</span> e' in html


def test_template_url_for_caches_per_script_root(app: Flask) -> None:
    from flask import render_template_string

    source = "{{ url_for('static', filename='gateway.css') }} {{ url_for('web.home') }}"
    for root in ("", "/gw", ""):
        with app.test_request_context("/", base_url=f"http://localhost{root}/"):
            assert render_template_string(source) == f"{root}/static/gateway.css {root}/"
