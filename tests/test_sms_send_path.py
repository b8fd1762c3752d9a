"""The send-code path's shortcuts (issue 5, "Performance") give what the long way gave.

- the dispatcher's queued row: the values it INSERTs are the row it returns, every column;
- the billed size of a code message, worked out before a code exists (cached: no personal
  data in its arguments), is the size of the message with any code;
- the outbox makes its directory and sets its file's mode once, and again when they went away.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway.app import get_settings
from gateway.db import get_db
from gateway.sms.dispatch import Dispatcher
from gateway.sms.messages import code_message, code_message_segments, segments
from gateway.sms.models import SmsMessage
from gateway.sms.phone import Channel
from gateway.sms.providers.base import OutgoingMessage, ProviderError
from gateway.sms.providers.outbox import OutboxProvider, read_outbox
from gateway.sms.purposes import Purpose

NUMBER = "+31612345678"


# --- dispatcher ------------------------------------------------------------------------------


class _Accepts:
    name = "accepts"
    channels = frozenset({"sms", "voice"})

    def send(self, msg: OutgoingMessage) -> object:
        from gateway.sms.providers.base import ProviderReceipt

        return ProviderReceipt(provider_message_id="p-1")


def test_queued_row_is_what_was_inserted(app: Flask) -> None:
    dispatcher = Dispatcher([_Accepts()], settings=get_settings(app))  # type: ignore[list-item]
    with get_db(app).begin() as s:
        queued = dispatcher.queue(s, to=NUMBER, channel="sms", text="code 123456",
                                  purpose="login", idempotency_key="otp:v1", country="NL")
    columns = [c.key for c in SmsMessage.__table__.columns]
    with get_db(app).engine.connect() as conn:
        stored = conn.execute(
            sa.select(SmsMessage.__table__).where(SmsMessage.__table__.c.id == queued.row.id)
        ).one()
    assert {k: getattr(queued.row, k) for k in columns} == dict(stored._mapping)
    assert queued.row.status == "queued" and queued.row.country == "NL"
    sent = dispatcher.deliver(get_db(app).engine, queued, "code 123456")
    assert (sent.status, sent.attempts, sent.provider) == ("sent", 1, "accepts")


def test_send_claims_and_returns_a_full_row(app: Flask) -> None:
    dispatcher = Dispatcher([_Accepts()], settings=get_settings(app))  # type: ignore[list-item]
    with get_db(app).begin() as s:
        first = dispatcher.send(s, to=NUMBER, channel="sms", text="hello", purpose="test",
                                idempotency_key="k:1")
        again = dispatcher.send(s, to=NUMBER, channel="sms", text="hello", purpose="test",
                                idempotency_key="k:1")
    assert first.id == again.id and first.status == again.status == "sent"
    assert first.to_last2 == "78" and first.country == "NL" and first.segments == 1


# --- messages --------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "nl"])
@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("host", ["a.nl", "login.example.org", "x" * 60 + ".example.org"])
def test_placeholder_segments_are_those_of_the_real_message(
    language: str, purpose: Purpose, host: str
) -> None:
    args = {"purpose": purpose, "language": language, "issuer_host": host,
            "channel": Channel.SMS, "ttl_minutes": 5}
    expected = code_message_segments(digits=6, **args)  # type: ignore[arg-type]
    for code in ("000000", "999999", "482913"):
        assert segments(code_message(code=code, **args)).count == expected  # type: ignore[arg-type]


def test_real_message_still_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        code_message(code="12ab56", purpose=Purpose.LOGIN, language="en",
                     issuer_host="a.nl", channel=Channel.SMS, ttl_minutes=5)
    with pytest.raises(ValueError):
        code_message(code="123456", purpose=Purpose.LOGIN, language="en",
                     issuer_host="A.nl:443", channel=Channel.SMS, ttl_minutes=5)


# --- outbox ----------------------------------------------------------------------------------


def _msg(text: str) -> OutgoingMessage:
    return OutgoingMessage(message_id="m-1", to=NUMBER, channel="sms", text=text,
                           idempotency_key="otp:1", purpose="login")


def test_outbox_recreates_a_removed_directory_and_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "sms.jsonl"
    provider = OutboxProvider(path)
    provider.send(_msg("one"))
    path.unlink()
    path.parent.rmdir()
    provider.send(_msg("two"))  # the directory went away: made again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()
    provider.send(_msg("three"))  # the file went away: created again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [e["text"] for e in read_outbox(path)] == ["three"]


def test_outbox_sets_the_mode_of_a_file_it_did_not_create(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    path.write_text("")
    path.chmod(0o644)
    OutboxProvider(path).send(_msg("one"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_outbox_makes_its_directory_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        made.append(self)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    provider = OutboxProvider(tmp_path / "out" / "sms.jsonl")
    for i in range(3):
        provider.send(_msg(f"m{i}"))
    assert made == [tmp_path / "out"]


def test_outbox_unwritable_after_first_send_is_a_provider_error(tmp_path: Path) -> None:
    path = tmp_path / "out" / "sms.jsonl"
    provider = OutboxProvider(path)
    provider.send(_msg("one"))
    path.unlink()
    path.parent.rmdir()
    path.parent.write_text("")  # a file where the directory was: cannot be made again
    with pytest.raises(ProviderError):
        provider.send(_msg("two"))
