"""Mails from templates: `gateway/templates/mail/<name>.<language>.txt`, one per language.

A template's first line is `Subject: ...`; the rest (after one optional blank line) is the plain
text body. Jinja renders both with `StrictUndefined`, so a missing variable is an error in the
tests rather than a gap in a citizen's mail. Context values are data, never template code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from gateway.i18n import LANGUAGES
from gateway.mail.interfaces import MailMessage

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "mail"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SUBJECT = "Subject: "


class TemplateNotFound(LookupError):
    """No template of that name and language: a programming error, not a delivery failure."""


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        # Plain text: HTML escaping would garble names such as "O'Brien & Zn".
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=64)
def _load(name: str, language: str) -> tuple[jinja2.Template, jinja2.Template]:
    """The subject and body templates. They are split before rendering, so that a line break
    in a context value ends up in the subject (and is refused) instead of silently moving the
    rest of the subject into the body."""
    env = _environment()
    filename = f"{name}.{language}.txt"
    try:
        source, _, _ = env.loader.get_source(env, filename)  # type: ignore[union-attr]
    except jinja2.TemplateNotFound:
        raise TemplateNotFound(f"no mail template {filename}") from None
    first, _, body = source.replace("\r\n", "\n").partition("\n")
    if not first.startswith(_SUBJECT):
        raise TemplateNotFound(f"mail template {filename} does not start with 'Subject: '")
    if body.startswith("\n"):
        body = body[1:]
    return env.from_string(first[len(_SUBJECT) :]), env.from_string(body)


def render_template(to: str, name: str, language: str, /, **context: Any) -> MailMessage:
    """The message `send_template` would send (for tests and previews)."""
    if not _NAME.match(name):
        raise TemplateNotFound(f"mail template name {name!r} is not a plain name")
    if language not in LANGUAGES:
        raise TemplateNotFound(f"no mail templates in language {language!r}")
    subject, body = _load(name, language)
    return MailMessage(
        to=to,
        subject=subject.render(**context).strip(" \t"),
        text=body.render(**context),
        kind=name,
    )


def send_template(to: str, name: str, language: str, /, **context: Any) -> None:
    """Render `<name>.<language>.txt` and send it through the app's mail sender.

    Needs an application context. Raises `MailError` (retryable or not) when it cannot be
    sent, `InvalidMessage` when the rendered subject or the recipient is unacceptable.

    Example::

        send_template(account.email, "phone_changed", account.language, last_digits="42")
    """
    from gateway.mail import get_mail

    get_mail().send(render_template(to, name, language, **context))
