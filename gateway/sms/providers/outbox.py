"""The development provider: every message becomes one JSON line in a file.

The line format is public (shared/INTERFACE.md, "Messages to a phone"): exactly
`{"to": "<E.164>", "channel": "sms" | "voice", "text": "...", "sent_at": "<RFC 3339>"}`.
Several gateway workers may append at once, so each line is written with one `write` under an
exclusive `flock`; the file is created with mode 0600 because the lines hold live codes.
Settings refuse this provider in production (GATEWAY_SMS_PROVIDER).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway import clock
from gateway.settings import Settings
from gateway.sms.providers.base import (
    CHANNELS,
    DlrUrls,
    OutgoingMessage,
    ProviderError,
    ProviderReceipt,
    Timeouts,
    check_message,
)

FILE_MODE = 0o600


def rfc3339(moment: Any) -> str:
    return str(moment.isoformat(timespec="seconds")).replace("+00:00", "Z")


class OutboxProvider:
    name = "outbox"
    channels = CHANNELS

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        #: The directory was made and the file's mode set (once per provider; again when
        #: the directory or the file went away).
        self._ready = False

    @classmethod
    def from_settings(
        cls, settings: Settings, _dlr: DlrUrls, _timeouts: Timeouts
    ) -> OutboxProvider:
        return cls(settings.sms_outbox)

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        check_message(self, msg)
        entry = {
            "to": msg.to,
            "channel": msg.channel,
            "text": msg.text,
            "sent_at": rfc3339(clock.now()),
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not self._ready:
                os.fchmod(fd, FILE_MODE)
                self._ready = True
            written = os.write(fd, line)
            if written != len(line):
                raise ProviderError("outbox write incomplete")
        except OSError:
            raise ProviderError("outbox not writable") from None
        finally:
            os.close(fd)  # also releases the lock
        return ProviderReceipt(provider_message_id=None)

    def _open(self) -> int:
        """The outbox, opened for appending: its directory made on the first send, and
        again (with the file's mode set again) when it has gone away since."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            if self._ready:
                try:
                    return os.open(self.path, flags, FILE_MODE)
                except FileNotFoundError:
                    self._ready = False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, FILE_MODE)
        except OSError:
            raise ProviderError("outbox not writable", retryable=False) from None


def read_outbox(path: Path) -> Iterator[dict[str, Any]]:
    """The outbox's entries, oldest first; lines that are not JSON objects are skipped."""
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry
    except FileNotFoundError:
        return
