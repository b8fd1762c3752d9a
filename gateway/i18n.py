"""Dutch and English for every page and message (Babel, through Flask-Babel).

Message ids are English; `gateway/translations/nl/LC_MESSAGES/messages.po` holds the Dutch.
The compiled `.mo` is committed beside it; `python -m gateway.i18n compile` rebuilds it, and a
test fails when the two disagree or when a message used in code or templates has no Dutch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask_babel import gettext, lazy_gettext, ngettext

TRANSLATIONS_DIR = Path(__file__).resolve().parent / "translations"
LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "nl"

__all__ = ["LANGUAGES", "gettext", "lazy_gettext", "ngettext"]


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
