"""A dev-only page in the gateway that shows the SMS and mail outboxes (issue 9, item 2).

Registered only in dev mode AND when `gateway demo` runs (it sets GATEWAY_DEMO=1 in the
settings' environment): a gateway started any other way has no such page (404), because the
outboxes hold one-time codes. Entries are shown escaped (Jinja autoescape; mail HTML parts as
text), newest first, at most `MAX_ENTRIES` of each.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any, Final

from flask import Blueprint, Flask, render_template

from gateway.settings import Settings
from gateway.web import no_store

DEMO_FLAG: Final = "GATEWAY_DEMO"
OUTBOX_PATH: Final = "/dev/outbox"
MAX_ENTRIES: Final = 50
#: A line longer than this is not an outbox entry; it is skipped unread.
MAX_LINE: Final = 64 * 1024


def enabled(settings: Settings) -> bool:
    return settings.dev and settings.environ.get(DEMO_FLAG, "") == "1"


def newest(path: Path, limit: int = MAX_ENTRIES) -> list[dict[str, Any]]:
    """The last `limit` JSON objects of a JSON-lines file, newest first."""
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if len(line) > MAX_LINE:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    kept.append({k: str(v) for k, v in entry.items()})
    except FileNotFoundError:
        return []
    return list(reversed(kept))


def init_app(app: Flask, settings: Settings) -> None:
    if not enabled(settings):
        return
    bp = Blueprint("dev_outbox", __name__, template_folder="templates")

    @bp.get(OUTBOX_PATH)
    @no_store
    def outbox() -> str:
        return render_template(
            "devoutbox/outbox.html", sms=newest(settings.sms_outbox),
            mail=newest(settings.mail_outbox), limit=MAX_ENTRIES,
        )

    app.register_blueprint(bp)
