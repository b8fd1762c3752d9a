"""The development mail sender: one JSON object per line in GATEWAY_MAIL_OUTBOX.

Each line is `{"to", "subject", "text", "sent_at"}` (RFC 3339 UTC), plus `"html"` when the
message has an HTML part: the shape of the SMS outbox (shared/INTERFACE.md), so demos and flow
tests read a code from a file instead of a mailbox. The file is created with mode 0600 (it holds
codes), and writers take an exclusive `flock` so that lines from several processes never
interleave. Start-up refuses the outbox in production (gateway/settings.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from gateway import clock
from gateway.mail.interfaces import MailError, MailMessage, count

log = logging.getLogger(__name__)


def rfc3339_now() -> str:
    return clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OutboxMailSender:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OutboxMailSender({str(self.path)!r})"

    def send(self, msg: MailMessage) -> None:
        try:
            self._write(msg)
        except MailError as exc:
            count(msg.kind, "outbox", exc)
            raise
        count(msg.kind, "outbox")

    def _write(self, msg: MailMessage) -> None:
        record: dict[str, str] = {
            "to": msg.to,
            "subject": msg.subject,
            "text": msg.text,
            "sent_at": rfc3339_now(),
        }
        if msg.html is not None:
            record["html"] = msg.html
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # also when the file was made by someone else
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    view = memoryview(line)
                    while view:  # os.write may write less than asked
                        view = view[os.write(fd, view) :]
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("mail not written to the outbox: kind=%s %s", msg.kind, exc.strerror)
            raise MailError(
                f"cannot write the mail outbox ({exc.strerror})", retryable=True
            ) from None
        log.info("mail written to the outbox: kind=%s", msg.kind)
