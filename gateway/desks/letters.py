"""How an activation code reaches the citizen (issue 4 item 4): the SMS text, the spoken
text of a voice call (landlines), and the printable bilingual PDF activation letter for people
without a usable phone.

The texts live here rather than in the gettext catalog for the reason given in
gateway.sms.messages: a message goes out in the account's language, not the officer's, and an
SMS must stay within the GSM 03.38 alphabet. Both languages are pinned by tests.

The SMS ends with the WebOTP line `@<issuer host> #<code>` (INTERFACE.md, "Messages to a
phone"). A voice call spells the code with the spelling alphabet of the listener's language
(NATO/ICAO for English, the Dutch telephone alphabet for Dutch), twice, since B, D, P, T and V
sound alike on a telephone line.

The letter is drawn with reportlab. It is returned as bytes for printing and never stored:
the code in it exists nowhere else in clear. Its font is DejaVu Sans when the system has it
(Latin, Greek and Cyrillic addresses), else the PDF standard Helvetica (Windows-1252 only);
`printable` tells the service which addresses can be printed, so a letter never shows empty
boxes where a street name should be.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_datetime

from gateway.desks.codes import CodeKind, is_well_formed
from gateway.sms.messages import SERVICE_NAME, host_of, message_language

log = logging.getLogger(__name__)

#: Longest address line: what fits in the window of a DL/C5 envelope at 10 points.
MAX_ADDRESS_LINE = 60
#: Validity is shown in Dutch time: the gateway's time, one zone for every reader.
DISPLAY_ZONE = ZoneInfo("Europe/Amsterdam")

_FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
_fonts: tuple[str, str, str, frozenset[int] | None] | None = None

_NATO = {
    "A": "Alfa", "B": "Bravo", "C": "Charlie", "D": "Delta", "F": "Foxtrot", "G": "Golf",
    "H": "Hotel", "J": "Juliett", "K": "Kilo", "L": "Lima", "M": "Mike", "N": "November",
    "P": "Papa", "Q": "Quebec", "R": "Romeo", "S": "Sierra", "T": "Tango", "V": "Victor",
    "W": "Whiskey", "X": "X-ray", "Z": "Zulu",
}
#: The Dutch telephone spelling alphabet (as used by Dutch government call centres).
_DUTCH = {
    "A": "Anton", "B": "Bernard", "C": "Cornelis", "D": "Dirk", "F": "Ferdinand",
    "G": "Gerard", "H": "Hendrik", "J": "Johan", "K": "Karel", "L": "Lodewijk", "M": "Maria",
    "N": "Nico", "P": "Pieter", "Q": "Quirinus", "R": "Richard", "S": "Simon", "T": "Teunis",
    "V": "Victor", "W": "Willem", "X": "Xantippe", "Z": "Zaandam",
}

_SMS = {
    "en": (
        "{service}: your activation code is {code}. Valid until {until}. Activate your"
        " account at {issuer}. Never share this code: we will never ask you for it."
    ),
    "nl": (
        "{service}: uw activeringscode is {code}. Geldig tot {until}. Activeer uw account op"
        " {issuer}. Deel deze code nooit: wij vragen er nooit om."
    ),
}
_VOICE = {
    "en": (
        "This is {service}. Your activation code is: {code}. Once more: {code}. The code is"
        " valid until {until}. Never share this code; we will never ask you for it."
    ),
    "nl": (
        "Dit is {service}. Uw activeringscode is: {code}. Nogmaals: {code}. De code is geldig"
        " tot {until}. Deel deze code nooit; wij vragen er nooit om."
    ),
}
_ZONE_NAME = {"en": "Dutch time", "nl": "Nederlandse tijd"}


def valid_until(expires_at: datetime, language: str) -> str:
    """`21 May 2025, 14:00 (Dutch time)` / `21 mei 2025, 14:00 (Nederlandse tijd)`."""
    lang = message_language(language)
    when = format_datetime(expires_at, "d MMMM y, HH:mm", tzinfo=DISPLAY_ZONE, locale=lang)
    return f"{when} ({_ZONE_NAME[lang]})"


def grouped(code: str) -> str:
    """`A BCDF GHJK`: the kind letter, then two groups of four, easier to copy from paper."""
    return f"{code[0]} {code[1:5]} {code[5:]}"


def spelled(code: str, language: str) -> str:
    """The code for a speech engine: every character apart, letters with their spelling word."""
    words = _DUTCH if message_language(language) == "nl" else _NATO
    return ", ".join(f"{c} {words[c]}" if c in words else c for c in code)


def _check_code(code: str) -> None:
    # Arguments come from the service, never from a person: a wrong one is a bug.
    if not is_well_formed(code, CodeKind.ACTIVATION):
        raise ValueError("not an activation code")


def activation_message(
    *, code: str, language: str, channel: str, expires_at: datetime, issuer: str
) -> str:
    """The SMS (with the WebOTP line) or voice text that carries an activation code."""
    _check_code(code)
    lang = message_language(language)
    fields = {"service": SERVICE_NAME, "until": valid_until(expires_at, lang)}
    if channel == "voice":
        return _VOICE[lang].format(code=spelled(code, lang), **fields)
    body = _SMS[lang].format(code=code, issuer=issuer.rstrip("/"), **fields)
    return f"{body}\n\n@{host_of(issuer)} #{code}"


# --- the PDF letter -----------------------------------------------------------------------------


def _load_fonts() -> tuple[str, str, str, frozenset[int] | None]:
    """(regular, bold, monospace bold, code points the regular font has, or None for the
    standard fonts' Windows-1252)."""
    global _fonts
    if _fonts is not None:
        return _fonts
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    for folder in _FONT_DIRS:
        files = {
            "GwSans": folder / "DejaVuSans.ttf",
            "GwSans-Bold": folder / "DejaVuSans-Bold.ttf",
            "GwMono-Bold": folder / "DejaVuSansMono-Bold.ttf",
        }
        if all(path.is_file() for path in files.values()):
            try:
                fonts = {name: TTFont(name, str(path)) for name, path in files.items()}
            except Exception as exc:  # a broken font file: fall back to the standard fonts
                log.warning("letter font not usable (%s); trying the next", type(exc).__name__)
                continue
            for font in fonts.values():
                pdfmetrics.registerFont(font)
            cmap = frozenset(fonts["GwSans"].face.charToGlyph)
            _fonts = ("GwSans", "GwSans-Bold", "GwMono-Bold", cmap)
            return _fonts
    _fonts = ("Helvetica", "Helvetica-Bold", "Courier-Bold", None)
    return _fonts


def printable(text: str) -> bool:
    """True when the letter's font can print every character of `text`."""
    cmap = _load_fonts()[3]
    if cmap is None:
        try:
            text.encode("cp1252")
        except UnicodeEncodeError:
            return False
        return True
    return all(ord(c) in cmap or c == " " for c in text)


_LETTER: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Uw activeringscode voor {service}",
        "intro": (
            "Uw aanvraag is goedgekeurd bij de balie {desk}. Met de code hieronder activeert u"
            " uw account."
        ),
        "valid": "Geldig tot {until}. De code werkt één keer.",
        "warn": (
            "Deel deze code met niemand. Wij vragen er nooit om, ook niet per telefoon of"
            " e-mail. Is de code verlopen? Vraag dan een nieuwe aan bij een balie."
        ),
    },
    "en": {
        "title": "Your activation code for {service}",
        "intro": (
            "Your application was approved at the desk {desk}. Use the code below to activate"
            " your account."
        ),
        "valid": "Valid until {until}. The code works once.",
        "warn": (
            "Never share this code. We will never ask for it, not by phone and not by e-mail."
            " Has the code expired? Ask a desk for a new one."
        ),
    },
}

_STEPS: dict[str, tuple[str, ...]] = {
    "nl": (
        "1. Ga naar {issuer}.",
        "2. Log in met de gebruikersnaam en het wachtwoord die u bij uw aanvraag koos.",
        "3. Typ de activeringscode. Spaties mag u weglaten.",
    ),
    "en": (
        "1. Go to {issuer}.",
        "2. Log in with the username and password you chose when you applied.",
        "3. Type the activation code. You may leave out the spaces.",
    ),
}


def letter_text(
    *, code: str, language: str, expires_at: datetime, issuer: str, desk: str
) -> list[str]:
    """The paragraphs of one language's half of the letter (also what tests read)."""
    lang = message_language(language)
    t = _LETTER[lang]
    fields = {
        "service": SERVICE_NAME, "desk": desk, "issuer": issuer.rstrip("/"),
        "until": valid_until(expires_at, lang),
    }
    return [
        t["title"].format(**fields),
        t["intro"].format(**fields),
        grouped(code),
        t["valid"].format(**fields),
        *(step.format(**fields) for step in _STEPS[lang]),
        t["warn"].format(**fields),
    ]


def activation_letter(
    *, code: str, address: list[str], expires_at: datetime, issuer: str, desk: str
) -> bytes:
    """The bilingual (Dutch first, then English) A4 activation letter as PDF bytes.

    The address goes where the window of a DL or C5 envelope with a left window shows it
    (20 mm from the left, about 45 mm from the top). The PDF carries no personal data in its
    metadata, and the code is printed nowhere but in the body.
    """
    _check_code(code)
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen.canvas import Canvas

    regular, bold, mono, _cmap = _load_fonts()
    buffer = io.BytesIO()
    pdf = Canvas(buffer, pagesize=A4, invariant=True)
    pdf.setTitle(f"{SERVICE_NAME} - activation letter")
    pdf.setAuthor(SERVICE_NAME)
    pdf.setSubject("")
    width, height = A4
    left, right = 20 * mm, width - 20 * mm

    pdf.setFont(bold, 14)
    pdf.drawString(left, height - 20 * mm, SERVICE_NAME)
    pdf.setFont(regular, 10)
    y = height - 45 * mm
    for line in address:
        pdf.drawString(left, y, line)
        y -= 5 * mm

    y = height - 95 * mm
    for language in ("nl", "en"):
        title, intro, code_line, valid, *rest = letter_text(
            code=code, language=language, expires_at=expires_at, issuer=issuer, desk=desk
        )
        *steps, warn = rest
        pdf.setFont(bold, 12)
        pdf.drawString(left, y, title)
        y -= 7 * mm
        pdf.setFont(regular, 10)
        for part in simpleSplit(intro, regular, 10, right - left):
            pdf.drawString(left, y, part)
            y -= 5 * mm
        y -= 3 * mm
        pdf.setFont(mono, 22)
        pdf.drawString(left + 10 * mm, y - 4 * mm, code_line)
        y -= 14 * mm
        pdf.setFont(regular, 10)
        for paragraph in (valid, *steps, warn):
            for part in simpleSplit(paragraph, regular, 10, right - left):
                pdf.drawString(left, y, part)
                y -= 5 * mm
        y -= 10 * mm
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()
